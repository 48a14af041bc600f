"""Dramatiq's command line, logging the project's way (shared/logs.py).

`batchctl worker` runs `python -m workers.dramatiq_cli` instead of
`python -m dramatiq`: the root logger gets its handler before Dramatiq's
`main` runs, so Dramatiq's own `logging.basicConfig` (in the main process
and in every worker and fork process, which inherit the handler) changes
nothing, and every line, Dramatiq's own included, has LOG_FORMAT and
LOG_LEVEL. `--verbose` no longer changes the level: LOG_LEVEL does.
"""

from __future__ import annotations

import sys

from dramatiq.cli import main

from shared import logs

if __name__ == "__main__":
    logs.configure()
    sys.exit(main())
