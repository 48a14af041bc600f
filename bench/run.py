"""`make bench`: how fast each action runs end to end, against baselines
measured in the same run on the same services.

Run it under the machine lock (other engineers share the 2 cores):

    flock /tmp/batch-actions-machine.lock make bench
    flock /tmp/batch-actions-machine.lock make bench BENCH_ARGS="--learners 1000000"

It creates its own PostgreSQL database and RabbitMQ vhost (both removed at the
end), seeds a school with the fast seeder, then measures:

- raw publish: pika publishing the messages without confirms;
- dispatch: the producer's ConfirmedPublisher publishing the same messages a
  window at a time with the same keyset query, every message confirmed;
- floor: a bare Dramatiq actor (bench/floor.py), one INSERT and commit per
  learner, same processes and threads: the strict floor drains messages
  published before it starts (the targets use it), the other is fed by a raw
  publisher while it runs (as earlier benches measured it);
- each action end to end through the real producer and workers (HTTP submit
  until the batch is `completed`), with worker CPU, producer memory, queue
  depth, publish-to-outcome latency, and the fairness case during the first;
- set-based: the one SQL statement that adds everyone to a group.

It prints a table, writes bench/results/<timestamp>.json and a PNG beside it.
This module runs the product and the order of things; the baselines are in
bench/baselines.py, what is sampled meanwhile in bench/watch.py, the targets
and the table in bench/report.py, the services in tests/support/services.py.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import secrets
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import redis

from bench.baselines import measure_floor, measure_publish, measure_set_based
from bench.environment import PG_ADMIN_DSN, RABBIT, REDIS_URL, RESULTS
from bench.report import histogram_quantile, log, percentile, table, targets
from bench.watch import (
    QueueWatch,
    Sampler,
    latency_buckets,
    producer_published,
    service_cpu,
    service_cpu_since,
    start_profilers,
    stop_profilers,
)
from tests.support.services import (
    Process,
    RabbitVhost,
    SmtpServer,
    create_database,
    drop_database,
    free_port,
    http_ok,
    wait_until,
)

ACTIONS = [
    "add_to_group",
    "add_to_course",
    "resend_invitation",
    "deactivate_learner",
    "delete_learner",
]


class EmailCount:
    """The bench's SMTP handler: counts what arrives and keeps nothing (a
    million parsed invitations would cost the machine being measured)."""

    def __init__(self) -> None:
        self.received = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook)
        with self.lock:
            self.received += 1
        return "250 OK"


class Bench:
    """One run: its database, vhost, SMTP server and processes, and the result
    every phase adds to."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.logs = Path(args.logs or f"/tmp/batch-actions-bench-{self.stamp}")
        self.logs.mkdir(parents=True, exist_ok=True)
        self.db_name = f"batch_actions_bench_{uuid.uuid4().hex[:8]}"
        self.result: dict = {
            "started_at": datetime.now(UTC).isoformat(),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "config": {
                "learners": args.learners,
                "processes": args.processes,
                "threads": args.threads,
                "dispatch_window": args.window,
                "deletion_grace_seconds": args.grace,
                "smtp_rate_per_second": args.smtp_rate,
                "actions": args.actions,
                "label": args.label,
                "queue_type": os.environ.get("QUEUE_TYPE", ""),
            },
            "baselines": {},
            "actions": {},
        }
        # The group add_to_group adds to (the school's first unless set).
        self.group_id: int | None = None

    # -- set up -----------------------------------------------------------

    def setup(self) -> None:
        self.database_url = create_database(self.db_name, PG_ADMIN_DSN)
        self.dsn = self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.vhost = RabbitVhost("batch_bench", RABBIT)
        self.emails = EmailCount()
        self.smtp = SmtpServer(self.emails)
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "BROKER_URL": self.vhost.url,
            "REDIS_URL": REDIS_URL,
            "SMTP_URL": self.smtp.url,
            "SMTP_RATE_PER_SECOND": str(self.args.smtp_rate),
            "DELETION_GRACE_SECONDS": str(self.args.grace),
            "METRICS_PORT": str(self.metrics_port),
            "PRODUCER_METRICS_PORT": str(free_port()),
            "PROMETHEUS_MULTIPROC_DIR": str(self.logs / "prom"),
            # Signed messages, as deployed (deploy/ requires SIGNING_KEY).
            "SIGNING_KEY": os.environ.get("SIGNING_KEY") or secrets.token_hex(32),
        }
        if self.args.window:
            self.env["DISPATCH_WINDOW"] = str(self.args.window)
        self.pg = psycopg.connect(self.dsn, autocommit=True)
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.watch = QueueWatch(self.vhost.url, self.vhost.name)
        self.producer: Process | None = None
        self.sampler = Sampler(self.watch, lambda: self.producer.rss() if self.producer else 0)
        self.sampler.start()
        self._run(["migrate"], "migrate")
        started = time.perf_counter()
        out = self._run(
            [
                "seed",
                "--learners",
                str(self.args.learners),
                "--groups",
                "5",
                "--courses",
                "10",
                "--json",
            ],
            "seed",
        )
        self.school = json.loads(out.strip().splitlines()[-1])
        self.result["seed"] = {"seconds": round(time.perf_counter() - started, 1), **self.school}
        self.school.pop("token", None)
        self.result["seed"].pop("token", None)
        self.token = json.loads(out.strip().splitlines()[-1])["token"]
        self.pg.execute("ANALYZE")
        self.learner_ids = [
            r[0]
            for r in self.pg.execute(
                "SELECT id FROM learners WHERE school_id = %s AND NOT is_admin ORDER BY id",
                (self.school["school_id"],),
            )
        ]
        log(f"seeded {len(self.learner_ids):,} learners in {self.result['seed']['seconds']}s")

    def _run(self, args: list[str], name: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "batchctl", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode:
            raise RuntimeError(f"batchctl {name} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def namespace(self) -> str:
        from shared.settings import Settings

        url = Settings(database_url=self.database_url).database_url
        return hashlib.sha256(url.encode()).hexdigest()[:8]

    def redis_done(self, batch_id: int) -> int:
        key = f"batch-actions:{self.namespace()}:batch:{batch_id}:progress"
        return int(self.redis.hget(key, "done") or 0)

    # -- baselines --------------------------------------------------------

    def start_stack(self) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.producer = Process.batchctl(
            ["serve", "--port", str(port)], self.env, self.logs / "producer.log"
        )
        self.workers = Process.batchctl(
            [
                "worker",
                "--processes",
                str(self.args.processes),
                "--threads",
                str(self.args.threads),
            ],
            self.env,
            self.logs / "workers.log",
        )
        # The reconciler, as deployed (it also ticks dispatch), on its own metrics port.
        self.reconciler = Process.batchctl(
            ["reconcile"],
            {**self.env, "METRICS_PORT": str(free_port())},
            self.logs / "reconciler.log",
        )
        wait_until(lambda: http_ok(f"{self.base_url}/healthz"), 60, "producer", self.producer)
        for queue in ACTIONS:
            wait_until(lambda q=queue: self.vhost.queues.consumers(q), 90, "workers", self.workers)
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        wait_until(lambda: http_ok(self.metrics_url), 60, "worker metrics", self.workers)
        time.sleep(2)
        self.http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120
        )

    def stop_stack(self) -> None:
        for name in ("producer", "workers", "reconciler"):
            proc = getattr(self, name, None)
            if proc is not None:
                proc.stop(timeout=60)

    def first_id(self, table: str, offset: int = 0) -> int:
        return self.pg.execute(
            f"SELECT id FROM {table} WHERE school_id = %s ORDER BY id OFFSET %s LIMIT 1",
            (self.school["school_id"], offset),
        ).fetchone()[0]

    def request_for(self, action: str) -> dict:
        everyone = {"filter": {"status": ["active", "invited"]}}
        if action == "add_to_group":
            return {
                "action": action,
                "selection": everyone,
                "params": {"group_ids": [self.group_id or self.first_id("groups")]},
            }
        if action == "add_to_course":
            return {
                "action": action,
                "selection": everyone,
                "params": {"course_ids": [self.first_id("courses")]},
            }
        if action == "resend_invitation":
            return {"action": action, "selection": {"all_not_activated": True}, "params": {}}
        if action == "deactivate_learner":
            return self.confirmed({"action": action, "selection": everyone, "params": {}})
        return self.confirmed(
            {
                "action": action,
                "selection": {"filter": {"status": ["deactivated", "active", "invited"]}},
                "params": {},
            }
        )

    def confirmed(self, body: dict) -> dict:
        """Deactivate and delete over a filter carry the dry run's count
        (`expected_total`), as an admin confirms it; counted before the timing."""
        response = self.http.post("/v1/batches", json={**body, "dry_run": True})
        if response.status_code != 200:
            raise RuntimeError(f"dry run refused: {response.status_code} {response.text}")
        return {**body, "expected_total": response.json()["total"]}

    def submit(self, body: dict) -> int:
        response = self.http.post("/v1/batches", json=body)
        if response.status_code != 202:
            raise RuntimeError(f"submit refused: {response.status_code} {response.text}")
        return response.json()["id"]

    def batch_row(self, batch_id: int):
        return self.pg.execute(
            "SELECT status, finished_at, total, counts FROM batches WHERE id = %s", (batch_id,)
        ).fetchone()

    def fairness(self, big_id: int, tries: int) -> dict:
        """10-learner batches on the same queue while the big batch runs."""
        times, still_running = [], []
        group = self.first_id("groups", 1)
        for attempt in range(tries):
            chosen = self.learner_ids[-10 * (attempt + 1) :][:10]
            started = time.time()
            small = self.submit(
                {
                    "action": "add_to_group",
                    "selection": {"learner_ids": chosen},
                    "params": {"group_ids": [group]},
                }
            )
            row = wait_until(
                lambda b=small: (r := self.batch_row(b)) and r[0] == "completed" and r,
                120,
                "small batch",
                every=0.02,
            )
            times.append(row[1].timestamp() - started)
            still_running.append(self.batch_row(big_id)[0] == "running")
            time.sleep(0.5)
        return {
            "tries": tries,
            "seconds": [round(t, 3) for t in times],
            "p95_seconds": round(percentile(times, 95), 3),
            "big_batch_running_throughout": all(still_running),
        }

    def run_action(self, action: str) -> dict:
        body = self.request_for(action)
        before_buckets = latency_buckets(self.metrics_url, action)
        cpu0, pcpu0 = self.workers.cpu_seconds(), self.producer.cpu_seconds()
        services0, rcpu0 = service_cpu(), self.reconciler.cpu_seconds()
        smtp0 = self.emails.received
        holder: dict = {}
        phase = self.sampler.start_phase(
            action, lambda: self.redis_done(holder["id"]) if "id" in holder else 0, action
        )
        profilers = (
            start_profilers(
                self.logs,
                action,
                [("workers", self.workers, ["--subprocesses"]), ("producer", self.producer, [])],
            )
            if self.args.profile
            else []
        )
        started = time.time()
        batch_id = self.submit(body)
        holder["id"] = batch_id
        submitted = time.time() - started
        fairness = None
        if action == "add_to_group" and self.args.fairness_tries:
            wait_until(lambda: self.redis_done(batch_id) > 0, 120, "big batch to start")
            time.sleep(2)
            fairness = self.fairness(batch_id, self.args.fairness_tries)
        total = self.batch_row(batch_id)[2]
        row = wait_until(
            lambda: (r := self.batch_row(batch_id)) and r[0] not in ("running", "pending") and r,
            max(1200, total / 30),
            f"{action} batch",
            self.workers,
            every=0.1,
        )
        seconds = row[1].timestamp() - started
        stop_profilers(profilers)
        cpu = self.workers.cpu_seconds() - cpu0
        pcpu = self.producer.cpu_seconds() - pcpu0
        services = service_cpu_since(services0)
        services["reconciler"] = self.reconciler.cpu_seconds() - rcpu0
        phase = self.sampler.end_phase()
        after = latency_buckets(self.metrics_url, action)
        buckets = sorted((le, after.get(le, 0) - before_buckets.get(le, 0)) for le in after)
        producer_metrics = f"http://127.0.0.1:{self.env['PRODUCER_METRICS_PORT']}"
        published = producer_published(producer_metrics, action)
        counts = row[3] or {}
        result = {
            "batch_id": batch_id,
            "status": row[0],
            "learners": total,
            "counts": {k: v for k, v in counts.items() if v},
            "submit_seconds": round(submitted, 3),
            "seconds": round(seconds, 3),
            "per_second": round(total / seconds, 1),
            "worker_cpu_seconds": round(cpu, 2),
            "worker_cpu_ms_per_learner": round(1000 * cpu / total, 4),
            "producer_cpu_seconds": round(pcpu, 2),
            "producer_cpu_ms_per_learner": round(1000 * pcpu / total, 4),
            "service_cpu_ms_per_learner": {
                k: round(1000 * v / total, 4) for k, v in sorted(services.items())
            },
            "producer_peak_rss_mb": round(phase["peak_rss"] / 2**20, 1),
            "peak_queue_ready": phase["peak_ready"],
            "peak_queue_depth": max(phase["peak_depth"], phase["peak_ready"]),
            "latency_seconds": {
                f"p{q}": (
                    round(v, 3) if (v := histogram_quantile(buckets, q / 100)) is not None else None
                )
                for q in (50, 95, 99)
            },
            "messages_published_total": published,
            "samples": phase["samples"],
        }
        if fairness:
            result["fairness"] = fairness
        if action == "resend_invitation":
            wait_until(
                lambda: self.pg.execute(
                    "SELECT count(*) = 0 FROM invitations WHERE batch_id = %s AND sent_at IS NULL",
                    (batch_id,),
                ).fetchone()[0],
                300,
                "invitations sent",
            )
            result["emails_received"] = self.emails.received - smtp0
        if action == "delete_learner":
            result["finalize"] = self.finalize_lag(batch_id)
        log(
            f"{action}: {total:,} learners in {seconds:.1f}s = {total / seconds:,.0f}/s, "
            f"{1000 * cpu / total:.3f} ms worker CPU/learner"
        )
        return result

    def finalize_lag(self, batch_id: int) -> dict:
        """Per deleted learner: purged at - (deleted at + grace)."""
        school = self.school["school_id"]
        wait_until(
            lambda: self.pg.execute(
                "SELECT count(*) = 0 FROM learners WHERE school_id = %s AND status = 'deleting'",
                (school,),
            ).fetchone()[0],
            max(900, len(self.learner_ids) / 50),
            "deletions finalized",
            self.workers,
            every=0.5,
        )
        lags = [
            float(r[0])
            for r in self.pg.execute(
                "SELECT extract(epoch FROM deleted_at - deactivated_at) - %s FROM learners "
                "WHERE school_id = %s AND status = 'deleted' AND deleted_at IS NOT NULL",
                (self.args.grace, school),
            )
        ]
        last = self.pg.execute(
            "SELECT max(deleted_at) FROM learners WHERE school_id = %s", (school,)
        ).fetchone()[0]
        finished = self.batch_row(batch_id)[1]
        return {
            "finalized": len(lags),
            "grace_seconds": self.args.grace,
            "lag_p50_seconds": round(percentile(lags, 50), 3) if lags else None,
            "lag_p95_seconds": round(percentile(lags, 95), 3) if lags else None,
            "lag_p99_seconds": round(percentile(lags, 99), 3) if lags else None,
            "lag_max_seconds": round(max(lags), 3) if lags else None,
            "last_purge_after_batch_seconds": round((last - finished).total_seconds(), 1)
            if last and finished
            else None,
        }

    # -- the whole run ----------------------------------------------------

    def run(self) -> dict:
        try:
            self.setup()
            if not self.args.skip_baselines:
                measure_set_based(self)
                measure_publish(self)
                measure_floor(self)
            self.start_stack()
            for action in self.args.actions:
                self.result["actions"][action] = self.run_action(action)
            self.stop_stack()
            self.result["producer_peak_rss_mb"] = round(self.sampler.peak_rss / 2**20, 1)
        finally:
            self.sampler.stop()
            self.stop_stack()
            if hasattr(self, "smtp"):
                with contextlib.suppress(Exception):
                    self.smtp.stop()
            if hasattr(self, "watch"):
                self.watch.close()
            if hasattr(self, "pg"):
                self.pg.close()
            if hasattr(self, "vhost"):
                with contextlib.suppress(Exception):
                    self.vhost.delete()
            if not self.args.keep_db:
                drop_database(self.db_name, PG_ADMIN_DSN)
        self.result["finished_at"] = datetime.now(UTC).isoformat()
        reference = (
            json.loads(Path(self.args.reference).read_text()) if self.args.reference else None
        )
        self.result["targets"] = targets(self.result, reference)
        return self.result


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--learners", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--actions", default=",".join(ACTIONS), help="comma-separated, in this order"
    )
    parser.add_argument(
        "--window", type=int, default=None, help="DISPATCH_WINDOW (default: the product's)"
    )
    parser.add_argument("--grace", type=int, default=10, help="DELETION_GRACE_SECONDS")
    parser.add_argument("--smtp-rate", type=int, default=100_000, help="SMTP_RATE_PER_SECOND")
    parser.add_argument("--fairness-tries", type=int, default=5)
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument(
        "--strict-floor-only",
        action="store_true",
        help="measure only the strict floor (not the one fed by the publisher)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="a 100,000-learner run's JSON: per-learner time of this run against it",
    )
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--label", default="", help="a note stored in the JSON")
    parser.add_argument("--logs", default=None, help="directory for the processes' logs")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the workers and producer per action"
    )
    args = parser.parse_args(argv)
    args.actions = [a for a in args.actions.split(",") if a]
    unknown = set(args.actions) - set(ACTIONS)
    if unknown:
        parser.error(f"unknown actions {sorted(unknown)}")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    bench = Bench(args)
    log(f"logs in {bench.logs}")
    result = bench.run()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{bench.stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(table(result))
    print(f"\nresults: {path}")
    if not args.no_plot:
        from bench.plot import plot

        png = plot(result, path.with_suffix(".png"))
        print(f"chart: {png}")
    if any(a.get("counts", {}).get("failed") for a in result["actions"].values()):
        print("warning: some learners failed; see the logs", file=sys.stderr)
