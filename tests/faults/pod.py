"""`batchctl worker` with extra modules loaded into every worker process
(comma-separated in FAULTS_WORKER_MODULES): how a scenario puts test-only
behaviour into workers that otherwise run exactly as in production."""

from __future__ import annotations

import os
import sys

from batchctl.cli import worker_metrics_env


def main() -> None:
    os.environ.update(worker_metrics_env())
    modules = [m for m in os.environ.get("FAULTS_WORKER_MODULES", "").split(",") if m]
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        "workers.runtime:start_worker",
        *modules,
        *sys.argv[1:],
    ]
    os.execv(sys.executable, [*argv, "--worker-shutdown-timeout", "60000"])


if __name__ == "__main__":
    main()
