"""Memory of a batch's results as CSV: the producer streams them flat.

    flock /tmp/batch-actions-machine.lock .venv/bin/python -m bench.items_csv --items 100000 1000000

In its own PostgreSQL database (removed at the end) it seeds, with SQL, a
school of `max(--items)` learners (email and `external_id` each) and, for
each size, one finished batch of that many items (applied, a tenth skipped,
a few failed). For each size it starts a fresh producer (`batchctl serve`,
embedded broker: no message is involved), asks one JSON page (warm-up),
then downloads `GET /v1/batches/{id}/items?format=csv` over HTTP, reading
it as it comes. It samples the producer's resident memory from /proc every
20 ms and reports the RSS before the download, the peak during it (sampled,
and VmHWM: the kernel's own high-water mark), the download's time, bytes
and lines. Memory is flat when the peak during a million-item download is
the peak of a 100,000-item one. Writes bench/results/items-csv-<stamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg

from bench.environment import PG_ADMIN_DSN, RESULTS
from bench.report import log
from tests.support.services import (
    Process,
    create_database,
    drop_database,
    free_port,
    http_ok,
    wait_until,
)

MB = 1024 * 1024

LEARNERS = """
INSERT INTO learners (school_id, email, name, external_id, status, is_admin, activated_at)
SELECT %(school)s, 'learner' || n || '@school.example.com', 'Learner ' || n, 'sis-' || n,
       'active', false, now()
FROM generate_series(1, %(n)s) AS s(n)
"""
BATCH = """
INSERT INTO batches (school_id, actor_id, action, params, selection, status, total, counts,
                     dispatch_cursor, created_at, started_at, finished_at)
VALUES (%(school)s, %(admin)s, 'add_to_group', '{"group_ids": [1]}', '{"filter": {}}',
        'completed', %(n)s, '{}', 0, now(), now(), now())
RETURNING id
"""
# Learners of the school in id order, the first `n`: nine in ten applied,
# one in ten skipped, one in a thousand failed.
ITEMS = """
INSERT INTO batch_items (batch_id, learner_id, outcome, reason, error, attempts, finished_at)
SELECT %(batch)s, id,
       CASE WHEN id %% 1000 = 7 THEN 'failed' WHEN id %% 10 = 3 THEN 'skipped' ELSE 'applied' END,
       CASE WHEN id %% 10 = 3 AND id %% 1000 <> 7 THEN 'already_member' END,
       CASE WHEN id %% 1000 = 7 THEN 'OperationalError' END,
       1, now()
FROM (SELECT id FROM learners WHERE school_id = %(school)s AND NOT is_admin ORDER BY id
      LIMIT %(n)s) AS chosen
"""


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of /proc/<pid>/status, in kB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


class RssSampler(threading.Thread):
    """The highest VmRSS seen since the last `reset`, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, 0, threading.Event()

    def reset(self) -> None:
        self.peak = rss_kb(self.pid)

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            self.peak = max(self.peak, rss_kb(self.pid))


class ItemsCsvBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.logs = Path(f"/tmp/batch-actions-bench-items-csv-{self.stamp}")
        self.logs.mkdir(parents=True, exist_ok=True)
        self.db_name = f"batch_actions_bench_{uuid.uuid4().hex[:8]}"
        self.result: dict = {
            "started_at": datetime.now(UTC).isoformat(),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "config": vars(args),
            "runs": [],
        }

    def setup(self) -> None:
        from batchctl.migrate import upgrade
        from batchctl.seed import seed_school
        from tests.support.environment import sessions_for

        self.database_url = create_database(self.db_name, PG_ADMIN_DSN)
        upgrade(self.database_url)
        with sessions_for(self.database_url)() as session:
            school = seed_school(session, learners=0, groups=1, courses=1, name="CSV bench")
            session.commit()
        self.school, self.token = school.school_id, school.token
        dsn = self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as pg:
            pg.execute(LEARNERS, {"school": self.school, "n": max(self.args.items)})
            self.batches = {}
            for n in self.args.items:
                params = {"school": self.school, "admin": school.admin_id, "n": n}
                batch = pg.execute(BATCH, params).fetchone()[0]
                pg.execute(ITEMS, {**params, "batch": batch})
                self.batches[n] = batch
            pg.execute("VACUUM ANALYZE learners")
            pg.execute("VACUUM ANALYZE batch_items")
        self.result["seed_seconds"] = round(time.perf_counter() - started, 1)
        log(f"seeded {max(self.args.items):,} learners and batches {self.batches}")

    def measure(self, n: int) -> dict:
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "BROKER_URL": "",
            "REDIS_URL": "",
            "PRODUCER_METRICS_PORT": str(free_port()),
        }
        producer = Process.batchctl(
            ["serve", "--port", str(port)], env, self.logs / f"producer-{n}.log"
        )
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {self.token}"}
        url = f"{base}/v1/batches/{self.batches[n]}/items"
        try:
            wait_until(lambda: http_ok(f"{base}/healthz"), 60, "the producer", producer)
            pid = producer.popen.pid
            sampler = RssSampler(pid)
            sampler.start()
            with httpx.Client(headers=headers, timeout=600) as http:
                assert http.get(url, params={"limit": 500}).status_code == 200
                time.sleep(1)
                before_kb, hwm_before_kb = rss_kb(pid), rss_kb(pid, "VmHWM")
                sampler.reset()
                size = lines = 0
                started = time.perf_counter()
                with http.stream("GET", url, params={"format": "csv"}) as answer:
                    answer.raise_for_status()
                    for chunk in answer.iter_bytes():
                        size += len(chunk)
                        lines += chunk.count(b"\n")
                seconds = time.perf_counter() - started
            peak_kb, hwm_after_kb = sampler.peak, rss_kb(pid, "VmHWM")
            sampler.stopped.set()
        finally:
            producer.stop()
        if lines != n + 1:
            raise RuntimeError(f"{lines:,} lines for {n:,} items and a header")
        run = {
            "items": n,
            "rss_before_mb": round(before_kb / 1024, 1),
            "rss_peak_during_mb": round(peak_kb / 1024, 1),
            "rss_growth_mb": round((peak_kb - before_kb) / 1024, 1),
            "vmhwm_before_mb": round(hwm_before_kb / 1024, 1),
            "vmhwm_after_mb": round(hwm_after_kb / 1024, 1),
            "seconds": round(seconds, 2),
            "bytes": size,
            "mb_per_second": round(size / MB / seconds, 2),
            "items_per_second": round(n / seconds),
            "load_average": os.getloadavg(),
        }
        log(json.dumps(run))
        return run

    def run(self) -> dict:
        try:
            self.setup()
            for n in sorted(self.args.items):
                self.result["runs"].append(self.measure(n))
        finally:
            with contextlib.suppress(Exception):
                drop_database(self.db_name, PG_ADMIN_DSN)
        self.result["load_average_at_end"] = os.getloadavg()
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"items-csv-{self.stamp}.json"
        out.write_text(json.dumps(self.result, indent=2))
        log(f"wrote {out}")
        return self.result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ItemsCsvBench(parser.parse_args(argv)).run()


if __name__ == "__main__":
    main()
