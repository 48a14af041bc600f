"""`batchctl worker` with extra modules loaded into every worker process
(comma-separated in FAULTS_WORKER_MODULES): how a scenario puts test-only
behaviour into workers that otherwise run exactly as in production."""

from __future__ import annotations

import os
import sys

from batchctl.cli import dramatiq_command, worker_metrics_env


def main() -> None:
    os.environ.update(worker_metrics_env())
    modules = [m for m in os.environ.get("FAULTS_WORKER_MODULES", "").split(",") if m]
    os.execv(sys.executable, dramatiq_command(*modules, *sys.argv[1:]))


if __name__ == "__main__":
    main()
