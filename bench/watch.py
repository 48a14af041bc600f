"""What the bench watches while it runs: queue depths, the phase's progress
and the producer's memory every half second, Prometheus' latency histogram,
the services' CPU, and py-spy when asked."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import pika
from prometheus_client.parser import text_string_to_metric_families

SAMPLE_EVERY = 0.5


class QueueWatch:
    """Ready messages of a queue, read with a passive declare (real time), and
    ready + unacknowledged from RabbitMQ's Prometheus endpoint (refreshed by
    RabbitMQ every few seconds)."""

    def __init__(self, url: str, vhost: str) -> None:
        self.url = url
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.vhost = vhost

    def ready(self, queue: str) -> int:
        try:
            return self.channel.queue_declare(queue, passive=True).method.message_count
        except Exception:
            # The queue is not there yet (the broker closes the channel), or
            # the connection itself dropped: a new channel, or a new connection.
            if self.connection.is_closed:
                self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
            self.channel = self.connection.channel()
            return 0

    def detailed(self) -> dict[str, tuple[int, int]]:
        """queue -> (ready, unacked) from the Prometheus plugin, {} if it is not there."""
        url = (
            "http://127.0.0.1:15692/metrics/detailed?vhost="
            + urllib.request.quote(self.vhost, safe="")
            + "&family=queue_coarse_metrics"
        )
        found: dict[str, list[int]] = {}
        try:
            body = urllib.request.urlopen(url, timeout=2).read().decode()
        except Exception:
            return {}
        for line in body.splitlines():
            for name, slot in (
                ("rabbitmq_detailed_queue_messages_ready{", 0),
                ("rabbitmq_detailed_queue_messages_unacked{", 1),
            ):
                if line.startswith(name):
                    queue = line.split('queue="', 1)[1].split('"', 1)[0]
                    found.setdefault(queue, [0, 0])[slot] = int(float(line.rsplit(" ", 1)[1]))
        return {q: (r, u) for q, (r, u) in found.items()}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()


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
            try:
                self.sample()
            except Exception as exc:  # a missed sample, never a dead sampler
                print(f"[bench] sample failed: {exc!r}", file=sys.stderr, flush=True)

    def sample(self) -> None:
        rss = self.producer_rss()
        self.peak_rss = max(self.peak_rss, rss)
        with self.lock:
            phase = self.phase
        if phase is None:
            return
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


def start_profilers(logs: Path, label: str, targets) -> list[subprocess.Popen]:
    """py-spy on each of `targets` ((name, process, extra py-spy options)):
    collapsed stacks of the threads holding the GIL (Python's CPU time), one
    line per stack with its sample count, in the logs directory."""
    spy = Path(sys.executable).parent / "py-spy"
    profilers = []
    for name, proc, extra in targets:
        out = logs / f"profile-{label}-{name}.txt"
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


def stop_profilers(profilers: list[subprocess.Popen]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(60)


SERVICES = {"postgres": "postgresql", "beam.smp": "rabbitmq", "redis-server": "redis"}


def service_cpu() -> dict[str, dict[int, float]]:
    """CPU seconds of each live PostgreSQL, RabbitMQ and Redis process, by pid."""
    import psutil

    found: dict[str, dict[int, float]] = {}
    for proc in psutil.process_iter(["name"]):
        name = SERVICES.get(proc.info["name"] or "")
        if name:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                found.setdefault(name, {})[proc.pid] = times.user + times.system
    return found


def service_cpu_since(before: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds each service used since `before`, over the processes alive
    now (a PostgreSQL backend that exited meanwhile takes its CPU with it:
    summing totals would subtract its whole life, so only the live ones count)."""
    return {
        name: sum(cpu - before.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
        for name, pids in service_cpu().items()
    }


def producer_published(base_url: str, action: str) -> float | None:
    """The producer's batch_messages_published_total for `action`."""
    try:
        body = httpx.get(f"{base_url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(body):
        if family.name == "batch_messages_published":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("action") == action:
                    return sample.value
    return None
