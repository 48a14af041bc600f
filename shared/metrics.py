"""Prometheus metrics named in docs/CONTRACT.md, shared by producer, reconciler and workers.

Labels are bounded sets (action, outcome, HTTP status code): never a learner,
school or batch id, an email or a name.

Metrics are created lazily, after the process knows whether it runs in
prometheus-client's multiprocess mode (Dramatiq worker processes set
`PROMETHEUS_MULTIPROC_DIR` at boot; a metric created before that would write
to the wrong place).
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

# Seconds from dispatch (message created) to the outcome being committed.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@cache
def learners_processed() -> Counter:
    return Counter(
        "batch_learners_processed",
        "Learners that reached an outcome, by action and outcome.",
        ["action", "outcome"],
    )


@cache
def learner_latency() -> Histogram:
    return Histogram(
        "batch_learner_latency_seconds",
        "Time from a learner's message being published to its outcome being committed.",
        ["action"],
        buckets=LATENCY_BUCKETS,
    )


@cache
def messages_published() -> Counter:
    return Counter(
        "batch_messages_published",
        "Per-learner messages published and confirmed by the broker.",
        ["action"],
    )


@cache
def messages_rejected() -> Counter:
    return Counter(
        "batch_messages_rejected",
        "Messages refused before any actor code ran (unsigned, bad_signature), dead-lettered.",
        ["reason"],
    )


@cache
def requests() -> Counter:
    return Counter(
        "batch_requests",
        "HTTP API requests, by batch action (or route for other endpoints) and status code.",
        ["action", "code"],
    )


class DatabaseCollector:
    """Gauges read from PostgreSQL at scrape time: the database is the truth,
    and a gauge kept in process memory would be wrong in every replica but one."""

    def __init__(self, session_factory) -> None:
        self.sessions = session_factory

    def describe(self):
        return []

    def collect(self):
        from shared.models import Batch, BatchStatus, Learner, LearnerStatus

        active = GaugeMetricFamily(
            "batches_active", "Batches running or cancelling, by action.", labels=["action"]
        )
        pending = GaugeMetricFamily("deletions_pending", "Learners deleted but not yet purged.")
        lag = GaugeMetricFamily(
            "deletion_finalize_lag_seconds",
            "How far past due the oldest unfinished deletion is (0 when none is late).",
        )
        try:
            with self.sessions() as session:
                by_action = dict(
                    session.execute(
                        select(Batch.action, func.count())
                        .where(Batch.status.in_((BatchStatus.RUNNING, BatchStatus.CANCELLING)))
                        .group_by(Batch.action)
                    ).all()
                )
                count, oldest_due = session.execute(
                    select(func.count(), func.min(Learner.deletion_due_at)).where(
                        Learner.status == LearnerStatus.DELETING
                    )
                ).one()
        except Exception:  # a scrape must not fail because the database is down
            return
        from shared.contract import Action

        for action in Action:
            active.add_metric([action.value], by_action.get(action.value, 0))
        pending.add_metric([], count)
        late = 0.0
        if oldest_due is not None:
            if oldest_due.tzinfo is None:
                oldest_due = oldest_due.replace(tzinfo=UTC)
            late = max(0.0, (datetime.now(UTC) - oldest_due).total_seconds())
        lag.add_metric([], late)
        yield from (active, pending, lag)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(extra_collectors=()) -> bytes:
    """This process's metrics (every process's in multiprocess mode) plus extras."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        for collector in extra_collectors:
            registry.register(collector)
        return generate_latest(registry)
    output = generate_latest(REGISTRY)
    for collector in extra_collectors:
        alone = CollectorRegistry()
        alone.register(collector)
        output += generate_latest(alone)
    return output


def serve_metrics(host: str, port: int, extra_collectors=()) -> ThreadingHTTPServer:
    """Expose metrics on host:port from a daemon thread (the reconciler's endpoint)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = exposition(extra_collectors)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
