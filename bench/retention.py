"""Retention under load: removing a million expired items while a batch runs.

    flock /tmp/batch-actions-machine.lock .venv/bin/python -m bench.retention --items 1000000

In its own PostgreSQL database and RabbitMQ vhost (removed at the end), it
seeds a school (`--learners`) and one finished batch of `--items` items that
finished 100 days ago (SQL, `generate_series`), then starts the real
processes (`batchctl serve`, `worker`, `reconcile`) and runs three
`add_to_group` batches over the whole school:

1. without retention (the deployed reconciler runs with retention off);
2. while retention removes the expired batch: `workers.retention.remove_expired`,
   the reconciler's own pass, called every `RECONCILE_INTERVAL_SECONDS` from
   this process so that every pass is timed;
3. without retention again, after a plain `VACUUM` (what autovacuum does):
   whether its new items fit in the space the removed ones left.

It prints and writes bench/results/retention-<timestamp>.json: time to
remove and rows per second, the longest single chunk transaction, the
batch's rate with and without retention, sessions seen waiting on a lock,
and the table's and its indexes' sizes along the way.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import redis
from sqlalchemy.orm import sessionmaker

from bench.environment import PG_ADMIN_DSN, RABBIT, REDIS_URL, RESULTS
from bench.report import log
from tests.support.services import (
    Process,
    RabbitVhost,
    create_database,
    drop_database,
    free_port,
    http_ok,
    wait_until,
)

INTERVAL = 5.0  # RECONCILE_INTERVAL_SECONDS' default

SIZES = """
SELECT pg_relation_size('batch_items'), pg_indexes_size('batch_items'),
       pg_total_relation_size('batch_items'), (SELECT count(*) FROM batch_items), n_dead_tup,
       last_autovacuum IS NOT NULL
FROM pg_stat_user_tables WHERE relname = 'batch_items'
"""


class RetentionBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.logs = Path(f"/tmp/batch-actions-bench-retention-{self.stamp}")
        self.logs.mkdir(parents=True, exist_ok=True)
        self.db_name = f"batch_actions_bench_{uuid.uuid4().hex[:8]}"
        self.result: dict = {
            "started_at": datetime.now(UTC).isoformat(),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "config": vars(args),
            "sizes": {},
            "batches": {},
        }

    # -- set up -----------------------------------------------------------

    def setup(self) -> None:
        from shared.db import make_engine
        from shared.settings import Settings

        self.database_url = create_database(self.db_name, PG_ADMIN_DSN)
        self.dsn = self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.vhost = RabbitVhost("batch_bench", RABBIT)
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "BROKER_URL": self.vhost.url,
            "REDIS_URL": REDIS_URL,
            "MAILBOX_PATH": str(self.logs / "mailbox.txt"),
            "METRICS_PORT": str(free_port()),
            "PRODUCER_METRICS_PORT": str(free_port()),
            "PROMETHEUS_MULTIPROC_DIR": str(self.logs / "prom"),
            "SIGNING_KEY": secrets.token_hex(32),
            # The deployed reconciler does everything but retention, which
            # this process runs (the same function) to time every pass.
            "BATCH_RETENTION_DAYS": "0",
            "AUDIT_RETENTION_DAYS": "0",
        }
        self.pg = psycopg.connect(self.dsn, autocommit=True)
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.namespace = hashlib.sha256(
            Settings(_env_file=None, database_url=self.database_url).database_url.encode()
        ).hexdigest()[:8]
        self.retention_settings = Settings(
            _env_file=None,
            database_url=self.database_url,
            batch_retention_days=90,
            audit_retention_days=365,
        )
        self.sessions = sessionmaker(make_engine(self.retention_settings.database_url))
        self._batchctl(["migrate"])
        out = self._batchctl(
            ["seed", "--learners", str(self.args.learners), "--groups", "3", "--courses", "1"]
            + ["--json"]
        )
        seeded = json.loads(out.strip().splitlines()[-1])
        self.school, self.token = seeded["school_id"], seeded["token"]
        self.groups = [
            r[0]
            for r in self.pg.execute(
                "SELECT id FROM groups WHERE school_id = %s ORDER BY id", (self.school,)
            )
        ]
        started = time.perf_counter()
        self.expired = self.pg.execute(
            "INSERT INTO batches (school_id, action, params, selection, status, total, counts,"
            " dispatch_cursor, created_at, started_at, finished_at)"
            " VALUES (%s, 'add_to_group', '{}', '{}', 'completed', %s, '{}', 0,"
            " now() - interval '101 days', now() - interval '101 days',"
            " now() - interval '100 days') RETURNING id",
            (self.school, self.args.items),
        ).fetchone()[0]
        self.pg.execute(
            "INSERT INTO batch_items (batch_id, learner_id, outcome, attempts, finished_at)"
            " SELECT %s, g, 'applied', 1, now() - interval '100 days'"
            " FROM generate_series(1, %s) g",
            (self.expired, self.args.items),
        )
        # An old table: vacuumed and analyzed long ago, as autovacuum leaves it.
        self.pg.execute("VACUUM ANALYZE batch_items")
        self.pg.execute("ANALYZE")
        self.result["seed_expired_seconds"] = round(time.perf_counter() - started, 1)
        log(f"seeded {self.args.items:,} expired items in {self.result['seed_expired_seconds']} s")
        self.sizes("seeded")

    def _batchctl(self, args: list[str]) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "batchctl", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode:
            raise RuntimeError(f"batchctl {args[0]} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def sizes(self, when: str) -> dict:
        row = self.pg.execute(SIZES).fetchone()
        sizes = {
            "table_mb": round(row[0] / 2**20, 1),
            "indexes_mb": round(row[1] / 2**20, 1),
            "total_mb": round(row[2] / 2**20, 1),
            "live_rows": row[3],
            "dead_rows_estimate": row[4],
            "autovacuumed": row[5],
        }
        self.result["sizes"][when] = sizes
        log(f"batch_items {when}: {sizes}")
        return sizes

    def start_stack(self) -> None:
        port = free_port()
        self.api = f"http://127.0.0.1:{port}"
        self.processes = [
            Process.batchctl(["serve", "--port", str(port)], self.env, self.logs / "producer.log"),
            Process.batchctl(
                ["worker", "--processes", str(self.args.processes)]
                + ["--threads", str(self.args.threads)],
                self.env,
                self.logs / "workers.log",
            ),
            Process.batchctl(
                ["reconcile"], {**self.env, "METRICS_PORT": str(free_port())}, self.logs / "rec.log"
            ),
        ]
        producer, workers = self.processes[:2]
        wait_until(lambda: http_ok(f"{self.api}/healthz"), 90, "producer", producer)
        wait_until(lambda: self.vhost.queues.consumers("add_to_group"), 120, "workers", workers)
        time.sleep(2)

    # -- batches ----------------------------------------------------------

    def submit(self, group_id: int) -> tuple[int, float]:
        import httpx

        body = {
            "action": "add_to_group",
            "selection": {"filter": {"status": ["active", "invited"]}},
            "params": {"group_ids": [group_id]},
        }
        started = time.time()
        answer = httpx.post(
            f"{self.api}/v1/batches",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=300,
        )
        if answer.status_code != 202:
            raise RuntimeError(f"submit refused: {answer.status_code} {answer.text}")
        return answer.json()["id"], started

    def done(self, batch_id: int) -> int:
        key = f"batch-actions:{self.namespace}:batch:{batch_id}:progress"
        return int(self.redis.hget(key, "done") or 0)

    def wait(self, name: str, batch_id: int, started: float) -> dict:
        status, finished, total = wait_until(
            lambda: (
                (
                    r := self.pg.execute(
                        "SELECT status, finished_at, total FROM batches WHERE id = %s", (batch_id,)
                    ).fetchone()
                )
                and r[0] == "completed"
                and r
            ),
            3600,
            f"batch {name}",
            self.processes[1],
            every=0.2,
        )
        seconds = finished.timestamp() - started
        result = {
            "batch_id": batch_id,
            "learners": total,
            "seconds": round(seconds, 1),
            "per_second": round(total / seconds, 1),
            "load_average": os.getloadavg(),
        }
        self.result["batches"][name] = result
        log(f"batch {name}: {total:,} learners in {seconds:.1f} s = {total / seconds:,.0f}/s")
        return result

    # -- retention --------------------------------------------------------

    def retention(self, batch_id: int) -> dict:
        """The reconciler's retention pass, every INTERVAL seconds, until the
        expired batch is gone; the running batch's progress sampled at both ends."""
        from workers.retention import CHUNK_ROWS, CHUNKS_PER_PASS, SECONDS_PER_PASS, remove_expired

        waiting = Waiting(self.dsn)
        waiting.start()
        passes, longest, removed_items = [], 0.0, 0
        started, done0 = time.time(), self.done(batch_id)
        while True:
            began = time.perf_counter()
            removed = remove_expired(self.sessions, self.retention_settings)
            work = time.perf_counter() - began
            passes.append(
                {
                    "seconds": round(work, 3),
                    "items": removed.items,
                    "batches": removed.batches,
                    "longest_chunk_seconds": removed.longest_chunk_seconds,
                }
            )
            longest = max(longest, removed.longest_chunk_seconds)
            removed_items += removed.items
            if removed.batches:
                break
            time.sleep(INTERVAL)
        ended, done1 = time.time(), self.done(batch_id)
        waiting.stop()
        seconds = ended - started
        work = sum(p["seconds"] for p in passes)
        result = {
            "chunk_rows": CHUNK_ROWS,
            "chunks_per_pass": CHUNKS_PER_PASS,
            "seconds_per_pass": SECONDS_PER_PASS,
            "pass_interval_seconds": INTERVAL,
            "items_removed": removed_items,
            "passes": len(passes),
            "seconds": round(seconds, 1),
            "rows_per_second": round(removed_items / seconds, 1),
            "work_seconds": round(work, 1),
            "rows_per_work_second": round(removed_items / work, 1),
            "longest_chunk_seconds": longest,
            "batch_rate_during": round((done1 - done0) / seconds, 1),
            "batch_done_during": done1 - done0,
            "max_sessions_waiting_on_a_lock": waiting.most,
            "lock_waits_seen": sorted(waiting.seen),
            "load_average": os.getloadavg(),
            "per_pass": passes,
        }
        log(
            f"retention: {removed_items:,} items in {seconds:.1f} s ({len(passes)} passes, "
            f"{work:.1f} s of work), longest chunk {longest:.3f} s, "
            f"batch meanwhile {result['batch_rate_during']:,.0f}/s"
        )
        return result

    # -- the whole run ----------------------------------------------------

    def run(self) -> dict:
        try:
            self.setup()
            self.start_stack()
            first, started = self.submit(self.groups[0])
            self.wait("without", first, started)

            second, started = self.submit(self.groups[1])
            wait_until(lambda: self.done(second) > 0, 300, "the second batch to start")
            self.result["retention"] = self.retention(second)
            self.wait("with", second, started)
            during = self.result["retention"]["seconds"]
            self.result["batches"]["with"]["overlap_seconds"] = round(during, 1)
            self.sizes("after_removal")

            self.pg.execute("VACUUM batch_items")  # plain: what autovacuum does, no rewrite
            self.sizes("after_vacuum")
            third, started = self.submit(self.groups[2])
            self.wait("after_vacuum", third, started)
            self.sizes("after_next_batch")
        finally:
            for process in getattr(self, "processes", []):
                process.stop(timeout=60)
            if hasattr(self, "pg"):
                self.pg.close()
            if hasattr(self, "vhost"):
                with contextlib.suppress(Exception):
                    self.vhost.delete()
            if not self.args.keep_db:
                drop_database(self.db_name, PG_ADMIN_DSN)
        self.result["finished_at"] = datetime.now(UTC).isoformat()
        self.result["load_average_at_end"] = os.getloadavg()
        return self.result


class Waiting(threading.Thread):
    """The most sessions of the bench's database seen waiting on a lock at
    once (sampled every 0.2 s), and what they waited on and for."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.most, self.stopped = dsn, 0, threading.Event()
        self.seen: set[tuple[str, str]] = set()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as pg:
            while not self.stopped.wait(0.2):
                waiting = pg.execute(
                    "SELECT wait_event, left(query, 60) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchall()
                self.most = max(self.most, len(waiting))
                self.seen.update(waiting)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000, help="expired items to remove")
    parser.add_argument("--learners", type=int, default=30_000, help="the running batch's")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args(argv)
    result = RetentionBench(args).run()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"retention-{result['started_at'][:19].replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    summary = {k: v for k, v in result.get("retention", {}).items() if k != "per_pass"}
    print(json.dumps({**summary, "batches": result["batches"], "sizes": result["sizes"]}, indent=1))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
