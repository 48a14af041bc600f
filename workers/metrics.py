"""Worker metrics: Dramatiq's own Prometheus metrics plus ours.

Both live in prometheus-client's multiprocess directory; Dramatiq's forked
exposition server serves every worker process's series on METRICS_PORT. The
per-message updates are summed in memory (`Tally`) and written every
FLUSH_SECONDS, so a scrape sees them at most that late.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from typing import Any

import dramatiq
from dramatiq.common import current_millis
from dramatiq.middleware import Middleware
from dramatiq.middleware.prometheus import Prometheus

from shared.contract import LEARNER_ACTORS
from shared.metrics import learner_latency, learners_processed

FLUSH_SECONDS = 0.5


class Tally:
    """Metric updates of the hot path, summed in memory and written in bulk.

    In multiprocess mode every `inc()` and `observe()` takes a process-wide
    lock, checks the pid and writes a memory-mapped file; the eight updates
    per learner were 12% of a worker's Python time (docs/PERFORMANCE.md).
    Here an update adds to a dict, and `flush` writes each series' sum once.

    This reads prometheus-client's child internals (a counter's or gauge's
    `_value`; a histogram's `_buckets`, `_sum`, `_upper_bounds`), here and
    nowhere else: pyproject.toml pins prometheus-client below the next minor
    version, tests/unit/test_dependency_internals.py checks the attributes,
    tests/unit/test_metric_tally.py and tests/integration/test_metrics.py the
    exported values.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: defaultdict[Any, float] = defaultdict(float)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def inc(self, metric: Any, labels: tuple[str, ...], amount: float = 1.0) -> None:
        value = self._child(metric, labels)._value
        with self._lock:
            self._pending[value] += amount

    def observe(self, histogram: Any, labels: tuple[str, ...], amount: float) -> None:
        child = self._child(histogram, labels)
        # The first bucket whose upper bound is >= amount, as Histogram.observe picks.
        bucket = child._buckets[bisect_left(child._upper_bounds, amount)]
        with self._lock:
            self._pending[child._sum] += amount
            self._pending[bucket] += 1

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
        for value, amount in pending.items():
            if amount:  # an in-progress +1 and its -1 cancel out
                value.inc(amount)

    def run_flusher(self, interval: float = FLUSH_SECONDS) -> None:
        def flush_forever() -> None:
            while True:
                time.sleep(interval)
                self.flush()

        threading.Thread(target=flush_forever, name="metrics-flush", daemon=True).start()


TALLY = Tally()


class DramatiqMetrics(Prometheus):
    """Dramatiq's Prometheus middleware (same series, same exposition server)
    with its two per-message hooks counting into the tally."""

    def after_process_boot(self, broker):
        super().after_process_boot(broker)
        TALLY.run_flusher()

    def after_worker_shutdown(self, broker, worker):
        TALLY.flush()  # before the process's live gauges are marked dead
        super().after_worker_shutdown(broker, worker)

    def before_process_message(self, broker, message):
        labels = (message.queue_name, message.actor_name)
        if message.message_id in self.delayed_messages:
            self.delayed_messages.remove(message.message_id)
            self.inprogress_delayed_messages.labels(*labels).dec()
        TALLY.inc(self.inprogress_messages, labels)
        self.message_start_times[message.message_id] = current_millis()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        labels = (message.queue_name, message.actor_name)
        now = current_millis()
        started = self.message_start_times.pop(message.message_id, now)
        TALLY.observe(self.message_durations, labels, now - started)
        TALLY.inc(self.inprogress_messages, labels, -1)
        TALLY.inc(self.total_messages, labels)
        if exception is not None:
            TALLY.inc(self.total_errored_messages, labels)

    after_skip_message = after_process_message


class LearnerMetrics(Middleware):
    """Counts each learner outcome once, and times it from publish to outcome.
    The outcome is the actor's result: its label, or None for nothing to do."""

    def after_process_boot(self, broker):
        # Zero series from the start, so rates and ratios are defined before
        # the first learner of an action is processed.
        for action in LEARNER_ACTORS:
            learner_latency().labels(action)
            for outcome in ("applied", "skipped", "failed"):
                learners_processed().labels(action, outcome)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if message.actor_name not in LEARNER_ACTORS:
            return
        outcome = result
        if exception is not None:
            # Only a failure recorded on the item is an outcome; a retry is not.
            outcome = "failed" if message.failed else None
        if not outcome:
            return
        TALLY.inc(learners_processed(), (message.actor_name, outcome))
        published = message.message_timestamp / 1000
        TALLY.observe(learner_latency(), (message.actor_name,), max(0.0, time.time() - published))


class _DiscardedResultWarning(logging.Filter):
    """Dramatiq's worker warns, for every message, that an actor's result is
    discarded unless the Results middleware (a result store) is installed.
    Ours return their outcome for `LearnerMetrics` only, so that one warning
    is dropped; every other log line of the worker threads stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned a value that is not None" not in str(record.msg)


def install(broker: dramatiq.Broker) -> None:
    """The middleware only under the `dramatiq` CLI (started by `batchctl
    worker`), which boots the multiprocess directory and forks the exposition
    server. Install before `workers.middleware`: after-hooks run in reverse
    order, and these must see the failed flag that Retries sets."""
    worker_threads = logging.getLogger("dramatiq.worker.WorkerThread")
    if not any(isinstance(f, _DiscardedResultWarning) for f in worker_threads.filters):
        worker_threads.addFilter(_DiscardedResultWarning())
    if os.environ.get("dramatiq_prom_db"):  # noqa: SIM112 (Dramatiq's own name)
        broker.add_middleware(DramatiqMetrics())
        broker.add_middleware(LearnerMetrics())
