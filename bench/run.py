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
  learner, same processes and threads, fed by a raw publisher;
- each action end to end through the real producer and workers (HTTP submit
  until the batch is `completed`), with worker CPU, producer memory, queue
  depth, publish-to-outcome latency, and the fairness case during the first;
- set-based: the one SQL statement that adds everyone to a group.

It prints a table, writes bench/results/<timestamp>.json and a PNG beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pika
import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench import floor
from bench.services import (
    REDIS_URL,
    Proc,
    QueueWatch,
    SmtpSink,
    Vhost,
    consumers,
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
RESULTS = Path(__file__).parent / "results"
SAMPLE_EVERY = 0.5


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (p95 of 5 values is the largest)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            width = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / width if width else 0)
        lower_le, lower_count = le, count
    return lower_le


def latency_buckets(metrics_url: str, action: str) -> dict[float, float]:
    body = httpx.get(metrics_url, timeout=5).text
    found: dict[float, float] = {}
    for family in text_string_to_metric_families(body):
        if family.name != "batch_learner_latency_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("action") == action:
                found[float(sample.labels["le"])] = sample.value
    return found


class Sampler(threading.Thread):
    """Every half second: finished learners of the current phase, producer
    RSS, and the depth of the phase's queue."""

    def __init__(self, watch: QueueWatch, producer_rss) -> None:
        super().__init__(name="sampler", daemon=True)
        self.watch = watch
        self.producer_rss = producer_rss
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.phase: dict | None = None
        self.peak_rss = 0

    def start_phase(self, name: str, done, queue: str | None) -> dict:
        phase = {
            "name": name,
            "t0": time.time(),
            "done_fn": done,
            "queue": queue,
            "samples": [],
            "peak_ready": 0,
            "peak_depth": 0,
            "peak_rss": 0,
        }
        with self.lock:
            self.phase = phase
        return phase

    def end_phase(self) -> dict | None:
        with self.lock:
            phase, self.phase = self.phase, None
        if phase is not None:
            phase.pop("done_fn", None)
        return phase

    def run(self) -> None:
        while not self.stopping.wait(SAMPLE_EVERY):
            rss = self.producer_rss()
            self.peak_rss = max(self.peak_rss, rss)
            with self.lock:
                phase = self.phase
            if phase is None:
                continue
            done = 0
            with contextlib.suppress(Exception):
                done = phase["done_fn"]()
            ready = self.watch.ready(phase["queue"]) if phase["queue"] else 0
            if phase["queue"]:
                # Ready and unacknowledged from one RabbitMQ stats snapshot.
                ready_unacked = self.watch.detailed().get(phase["queue"])
                if ready_unacked:
                    phase["peak_depth"] = max(phase["peak_depth"], sum(ready_unacked))
            phase["peak_ready"] = max(phase["peak_ready"], ready)
            phase["peak_rss"] = max(phase["peak_rss"], rss)
            phase["samples"].append((round(time.time() - phase["t0"], 3), done, ready, rss))

    def stop(self) -> None:
        self.stopping.set()


class Bench:
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
            },
            "baselines": {},
            "actions": {},
        }

    # -- set up -----------------------------------------------------------

    def setup(self) -> None:
        self.dsn = create_database(self.db_name)
        self.database_url = self.dsn.replace("postgresql://", "postgresql+psycopg://", 1)
        self.vhost = Vhost(f"batch_bench_{uuid.uuid4().hex[:8]}")
        self.smtp = SmtpSink()
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
            "PROMETHEUS_MULTIPROC_DIR": str(self.logs / "prom"),
            # Signed messages, as deployed (deploy/ requires SIGNING_KEY).
            "SIGNING_KEY": os.environ.get("SIGNING_KEY") or secrets.token_hex(32),
        }
        if self.args.window:
            self.env["DISPATCH_WINDOW"] = str(self.args.window)
        self.pg = psycopg.connect(self.dsn, autocommit=True)
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.watch = QueueWatch(self.vhost.url, self.vhost.name)
        self.producer: Proc | None = None
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

    def messages(self, queue: str):
        from shared.dispatch import item_message

        for learner_id in self.learner_ids:
            yield item_message(queue, 0, learner_id)

    def raw_publish(self, queue: str, declare: bool = True) -> float:
        """pika, no confirms, the same Dramatiq-encoded messages; seconds taken
        until the broker has answered a round trip after the last one."""
        connection = pika.BlockingConnection(pika.URLParameters(self.vhost.url))
        channel = connection.channel()
        if declare:
            channel.queue_declare(queue, durable=True)
        properties = pika.BasicProperties(delivery_mode=2)
        started = time.perf_counter()
        for message in self.messages(queue):
            channel.basic_publish("", queue, message.encode(), properties)
        channel.queue_declare(queue, passive=True)
        elapsed = time.perf_counter() - started
        connection.close()
        return elapsed

    def baseline_publish(self) -> None:
        n = len(self.learner_ids)
        seconds = self.raw_publish("bench_raw")
        self.watch.channel.queue_delete("bench_raw")
        self.result["baselines"]["raw_publish"] = {
            "messages": n,
            "seconds": round(seconds, 3),
            "per_second": round(n / seconds, 1),
        }
        log(f"raw publish: {n / seconds:,.0f} msg/s")

        # The dispatch path: keyset query for the next window, then
        # ConfirmedPublisher (every message confirmed) - as dispatch_step does.
        from shared.broker import build_broker
        from shared.dispatch import item_message
        from shared.publish import ConfirmedPublisher
        from shared.settings import Settings

        # The product's broker: priority queues, messages signed.
        broker = build_broker(
            Settings(
                broker_url=self.vhost.url,
                database_url=self.database_url,
                signing_key=self.env["SIGNING_KEY"],
            )
        )
        publisher = ConfirmedPublisher(broker)
        window = self.args.window or 2000
        school = self.school["school_id"]
        cursor, published = 0, 0
        started = time.perf_counter()
        while True:
            ids = [
                r[0]
                for r in self.pg.execute(
                    "SELECT id FROM learners WHERE school_id = %s AND id > %s AND NOT is_admin "
                    "ORDER BY id LIMIT %s",
                    (school, cursor, window),
                )
            ]
            if not ids:
                break
            publisher.publish([item_message("bench_dispatch", 0, lid) for lid in ids])
            published += len(ids)
            cursor = ids[-1]
        seconds = time.perf_counter() - started
        publisher.close()
        broker.close()
        for queue in ("bench_dispatch", "bench_dispatch.DQ", "bench_dispatch.XQ"):
            with contextlib.suppress(Exception):
                self.watch.channel.queue_delete(queue)
        self.result["baselines"]["dispatch_confirmed"] = {
            "messages": published,
            "seconds": round(seconds, 3),
            "per_second": round(published / seconds, 1),
            "window": window,
        }
        log(f"dispatch with confirms: {published / seconds:,.0f} msg/s")

    def baseline_floor(self) -> None:
        self.pg.execute(floor.TABLE_DDL)
        self.pg.execute("TRUNCATE bench_floor RESTART IDENTITY")
        env = {**self.env, "BENCH_FLOOR_DSN": self.dsn}
        for name in ("PROMETHEUS_MULTIPROC_DIR",):
            env.pop(name, None)
        workers = Proc(
            [
                sys.executable,
                "-m",
                "dramatiq",
                "bench.floor",
                "--processes",
                str(self.args.processes),
                "--threads",
                str(self.args.threads),
            ],
            env,
            self.logs / "floor-workers.log",
        )
        try:
            wait_until(lambda: consumers(self.vhost, floor.QUEUE) > 0, 90, "floor workers", workers)
            time.sleep(2)  # every process consuming
            n = len(self.learner_ids)
            cpu0, services0 = workers.cpu_seconds(), service_cpu()
            phase = self.sampler.start_phase(
                "floor",
                lambda: self.pg.execute(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM bench_floor_id_seq"
                ).fetchone()[0],
                floor.QUEUE,
            )
            profilers = (
                self.start_profilers("floor", [("workers", workers, ["--subprocesses"])])
                if self.args.profile
                else []
            )
            started = time.time()
            publish_seconds = self.raw_publish(floor.QUEUE, declare=False)
            wait_until(
                lambda: phase["done_fn"]() >= n,
                max(900, n / 50),
                "floor to finish",
                workers,
                every=0.05,
            )
            stop_profilers(profilers)
            finished = self.pg.execute("SELECT max(created_at) FROM bench_floor").fetchone()[0]
            seconds = finished.timestamp() - started
            cpu = workers.cpu_seconds() - cpu0
            services = {k: v - services0.get(k, 0.0) for k, v in service_cpu().items()}
            rows = self.pg.execute("SELECT count(*) FROM bench_floor").fetchone()[0]
            phase = self.sampler.end_phase()
        finally:
            workers.stop()
        self.result["baselines"]["floor"] = {
            "learners": rows,
            "seconds": round(seconds, 3),
            "per_second": round(rows / seconds, 1),
            "worker_cpu_seconds": round(cpu, 2),
            "worker_cpu_ms_per_learner": round(1000 * cpu / rows, 4),
            "service_cpu_ms_per_learner": {
                k: round(1000 * v / rows, 4) for k, v in sorted(services.items())
            },
            "publish_seconds": round(publish_seconds, 3),
            "peak_queue_ready": phase["peak_ready"],
            "samples": phase["samples"],
        }
        log(f"floor: {rows / seconds:,.0f} learners/s, {1000 * cpu / rows:.3f} ms CPU/learner")

    def baseline_set_based(self) -> None:
        school = self.school["school_id"]
        group = self.pg.execute(
            "INSERT INTO groups (school_id, name) VALUES (%s, 'bench set-based') RETURNING id",
            (school,),
        ).fetchone()[0]
        started = time.perf_counter()
        with self.pg.transaction():
            inserted = self.pg.execute(
                "INSERT INTO group_memberships (learner_id, group_id) "
                "SELECT id, %s FROM learners WHERE school_id = %s "
                "AND status NOT IN ('deleting', 'deleted') ON CONFLICT DO NOTHING",
                (group, school),
            ).rowcount
        seconds = time.perf_counter() - started
        self.result["baselines"]["set_based"] = {
            "statement": "INSERT INTO group_memberships ... SELECT ... ON CONFLICT DO NOTHING",
            "learners": inserted,
            "seconds": round(seconds, 3),
            "per_second": round(inserted / seconds, 1) if seconds else None,
        }
        log(f"set-based: {inserted:,} rows in {seconds:.2f}s")

    # -- the product ------------------------------------------------------

    def start_stack(self) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.producer = Proc.batchctl(
            ["serve", "--port", str(port)], self.env, self.logs / "producer.log"
        )
        self.workers = Proc.batchctl(
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
        self.reconciler = Proc.batchctl(
            ["reconcile"],
            {**self.env, "METRICS_PORT": str(free_port())},
            self.logs / "reconciler.log",
        )
        wait_until(lambda: http_ok(f"{self.base_url}/healthz"), 60, "producer", self.producer)
        for queue in ACTIONS:
            wait_until(lambda q=queue: consumers(self.vhost, q) > 0, 90, "workers", self.workers)
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
                proc.stop()

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
                "params": {"group_ids": [self.first_id("groups")]},
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
            return {"action": action, "selection": everyone, "params": {}}
        return {
            "action": action,
            "selection": {"filter": {"status": ["deactivated", "active", "invited"]}},
            "params": {},
        }

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
        smtp0 = self.smtp.received
        holder: dict = {}
        phase = self.sampler.start_phase(
            action, lambda: self.redis_done(holder["id"]) if "id" in holder else 0, action
        )
        profilers = self.start_profilers(action) if self.args.profile else []
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
        services = {k: v - services0.get(k, 0.0) for k, v in service_cpu().items()}
        services["reconciler"] = self.reconciler.cpu_seconds() - rcpu0
        phase = self.sampler.end_phase()
        after = latency_buckets(self.metrics_url, action)
        buckets = sorted((le, after.get(le, 0) - before_buckets.get(le, 0)) for le in after)
        published = self.producer_published(action)
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
            result["emails_received"] = self.smtp.received - smtp0
        if action == "delete_learner":
            result["finalize"] = self.finalize_lag(batch_id)
        log(
            f"{action}: {total:,} learners in {seconds:.1f}s = {total / seconds:,.0f}/s, "
            f"{1000 * cpu / total:.3f} ms worker CPU/learner"
        )
        return result

    def start_profilers(self, action: str, targets=None) -> list[subprocess.Popen]:
        """py-spy on the worker processes and the producer: collapsed stacks of
        the threads holding the GIL (Python's CPU time), one line per stack
        with its sample count, in the logs directory."""
        spy = Path(sys.executable).parent / "py-spy"
        profilers = []
        targets = targets or (
            ("workers", self.workers, ["--subprocesses"]),
            ("producer", self.producer, []),
        )
        for name, proc, extra in targets:
            out = self.logs / f"profile-{action}-{name}.txt"
            profilers.append(
                subprocess.Popen(
                    [
                        str(spy),
                        "record",
                        "--pid",
                        str(proc.popen.pid),
                        *extra,
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--nonblocking",
                        "--gil",
                        "-o",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1)
        return profilers

    def producer_published(self, action: str) -> float | None:
        try:
            body = httpx.get(f"{self.base_url}/metrics", timeout=5).text
        except httpx.HTTPError:
            return None
        for family in text_string_to_metric_families(body):
            if family.name == "batch_messages_published":
                for sample in family.samples:
                    if sample.name.endswith("_total") and sample.labels.get("action") == action:
                        return sample.value
        return None

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
                self.baseline_set_based()
                self.baseline_publish()
                self.baseline_floor()
            self.start_stack()
            for action in self.args.actions:
                self.result["actions"][action] = self.run_action(action)
            self.stop_stack()
            self.result["producer_peak_rss_mb"] = round(self.sampler.peak_rss / 2**20, 1)
        finally:
            self.sampler.stop()
            self.stop_stack()
            self.smtp.stop() if hasattr(self, "smtp") else None
            if hasattr(self, "watch"):
                self.watch.close()
            if hasattr(self, "pg"):
                self.pg.close()
            if hasattr(self, "vhost"):
                self.vhost.delete()
            if not self.args.keep_db:
                drop_database(self.db_name)
        self.result["finished_at"] = datetime.now(UTC).isoformat()
        self.result["targets"] = targets(self.result)
        return self.result


def stop_profilers(profilers: list[subprocess.Popen]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(60)


SERVICES = {"postgres": "postgresql", "beam.smp": "rabbitmq", "redis-server": "redis"}


def service_cpu() -> dict[str, float]:
    """CPU seconds of PostgreSQL, RabbitMQ and Redis processes (live ones)."""
    import psutil

    found: dict[str, float] = {}
    for proc in psutil.process_iter(["name"]):
        name = SERVICES.get(proc.info["name"] or "")
        if name:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                found[name] = found.get(name, 0.0) + times.user + times.system
    return found


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def targets(result: dict) -> list[dict]:
    """The issue's targets, each with the measured value; `met` is None when
    this run did not measure it (e.g. the 1M-only targets in a 100k run)."""
    base, actions = result["baselines"], result["actions"]
    learners = result["config"]["learners"]
    out = []

    def add(name, value, limit, better, note=""):
        met = None
        if value is not None:
            met = value >= limit if better == "higher" else value <= limit
        out.append({"target": name, "value": value, "limit": limit, "met": met, "note": note})

    group = actions.get("add_to_group", {})
    floor_run = base.get("floor", {})
    add(
        "add_to_group end-to-end / floor (learners/s)",
        ratio(group.get("per_second"), floor_run.get("per_second")),
        0.75,
        "higher",
    )
    add(
        "dispatch with confirms / raw publish (msg/s)",
        ratio(
            base.get("dispatch_confirmed", {}).get("per_second"),
            base.get("raw_publish", {}).get("per_second"),
        ),
        0.6,
        "higher",
    )
    add(
        "worker CPU per learner / floor's (add_to_group)",
        ratio(group.get("worker_cpu_ms_per_learner"), floor_run.get("worker_cpu_ms_per_learner")),
        1.3,
        "lower",
    )
    window = result["config"]["dispatch_window"] or 2000
    peak_depth = max((a.get("peak_queue_depth", 0) for a in actions.values()), default=None)
    note = "" if learners >= 1_000_000 else "target is for 1,000,000 learners"
    add("producer peak memory (MB)", result.get("producer_peak_rss_mb"), 150, "lower", note)
    depth = ratio(peak_depth, window)
    add("peak RabbitMQ depth (ready + unacked) / window", depth, 1.0, "lower", note)
    fair = group.get("fairness", {})
    add("10-learner batch during the big one, p95 (s)", fair.get("p95_seconds"), 2.0, "lower")
    finalize = actions.get("delete_learner", {}).get("finalize", {})
    add("finalize_deletion lag p99 (s)", finalize.get("lag_p99_seconds"), 60, "lower")
    return out


def log(text: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)


def fmt(value, digits=1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(result: dict) -> str:
    base, actions = result["baselines"], result["actions"]
    floor_run = base.get("floor", {})
    lines = [
        f"Batch Actions bench: {result['config']['learners']:,} learners, "
        f"{result['config']['processes']} processes x {result['config']['threads']} threads, "
        f"window {result['config']['dispatch_window'] or 2000}, {result['machine']['cpus']} CPUs",
        "",
        f"{'run':<22}{'learners':>10}{'seconds':>10}{'per s':>10}{'x floor':>9}"
        f"{'CPU ms/l':>10}{'x floor':>9}{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}"
        f"{'depth':>7}{'RSS MB':>8}",
    ]
    if floor_run:
        lines.append(
            f"{'floor (bare actor)':<22}{fmt(floor_run['learners']):>10}"
            f"{fmt(floor_run['seconds']):>10}{fmt(floor_run['per_second'], 0):>10}{'1.00':>9}"
            f"{fmt(floor_run['worker_cpu_ms_per_learner'], 3):>10}{'1.00':>9}"
        )
    floor_cpu = floor_run.get("worker_cpu_ms_per_learner")
    for name, run in actions.items():
        lat = run["latency_seconds"]
        lines.append(
            f"{name:<22}{fmt(run['learners']):>10}{fmt(run['seconds']):>10}"
            f"{fmt(run['per_second'], 0):>10}"
            f"{fmt(ratio(run['per_second'], floor_run.get('per_second')), 2):>9}"
            f"{fmt(run['worker_cpu_ms_per_learner'], 3):>10}"
            f"{fmt(ratio(run['worker_cpu_ms_per_learner'], floor_cpu), 2):>9}"
            f"{fmt(lat['p50'], 2):>8}{fmt(lat['p95'], 2):>8}{fmt(lat['p99'], 2):>8}"
            f"{fmt(run['peak_queue_depth']):>7}"
            f"{fmt(run['producer_peak_rss_mb']):>8}"
        )
    lines.append("")
    for name in ("raw_publish", "dispatch_confirmed"):
        if name in base:
            lines.append(f"{name:<22}{fmt(base[name]['per_second'], 0):>10} msg/s")
    if "set_based" in base:
        sb = base["set_based"]
        lines.append(
            f"{'set_based':<22}{fmt(sb['per_second'], 0):>10} learners/s "
            f"({fmt(sb['learners'])} in {sb['seconds']} s)"
        )
    fair = actions.get("add_to_group", {}).get("fairness")
    if fair:
        lines.append(f"fairness (10 learners): {fair['seconds']} s, p95 {fair['p95_seconds']} s")
    finalize = actions.get("delete_learner", {}).get("finalize")
    if finalize:
        lines.append(
            f"finalize_deletion lag: p50 {finalize['lag_p50_seconds']} s, "
            f"p99 {finalize['lag_p99_seconds']} s, max {finalize['lag_max_seconds']} s"
        )
    lines.append("")
    lines.append("targets:")
    for t in result["targets"]:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        note = f"  ({t['note']})" if t["note"] else ""
        value = fmt(t["value"], 3)
        lines.append(f"  {t['target']:<52}{value:>10}  limit {t['limit']}: {verdict}{note}")
    return "\n".join(lines)


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
