"""Where the benchmarks find the services and put their results; every bench
module reads these, so one environment variable moves them all."""

from __future__ import annotations

import os
from pathlib import Path

PG_ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1/postgres")
RABBIT = os.environ.get("BENCH_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
RESULTS = Path(__file__).parent / "results"
