"""Worker metrics: Dramatiq's own Prometheus metrics plus ours.

Both live in prometheus-client's multiprocess directory; Dramatiq's forked
exposition server serves every worker process's series on METRICS_PORT. The
per-message updates are summed in memory (`Tally`) and written every
FLUSH_SECONDS, so a scrape sees them at most that late.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import dramatiq
from dramatiq.common import current_millis
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

    def add(self, updates: Iterable[tuple[Any, float]]) -> None:
        """Add each amount to its value (a child's `_value`, `_sum` or bucket)."""
        with self._lock:
            pending = self._pending
            for value, amount in updates:
                pending[value] += amount

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


class _Outcome(threading.local):
    label: str | None = None


class WorkerMetrics(Prometheus):
    """Dramatiq's Prometheus middleware (same series, same exposition server)
    and ours: each learner outcome counted once, and timed from publish to
    outcome. Every per-message update goes to the tally, under one lock per
    hook, with the series of each (queue, actor) looked up once.

    The outcome is the actor's result: its label, or None for nothing to do.
    Dramatiq's worker builds (and our filter drops) a warning log record for
    every result without a result store, so each actor declared on the broker
    keeps its result on the worker thread for this middleware and returns
    None to Dramatiq. Its after-hook must run after Retries' (which sets the
    failed flag): `install` puts it before Retries."""

    def __init__(self) -> None:
        super().__init__()
        self._series: dict[tuple[str, str], _Series] = {}
        self._outcome = _Outcome()

    def after_process_boot(self, broker):
        super().after_process_boot(broker)
        # Zero series from the start, so rates and ratios are defined before
        # the first learner of an action is processed.
        for action in LEARNER_ACTORS:
            learner_latency().labels(action)
            for outcome in ("applied", "skipped", "failed"):
                learners_processed().labels(action, outcome)
        TALLY.run_flusher()

    def after_worker_shutdown(self, broker, worker):
        TALLY.flush()  # before the process's live gauges are marked dead
        super().after_worker_shutdown(broker, worker)

    def after_declare_actor(self, broker, actor):
        fn, outcome = actor.fn, self._outcome

        @functools.wraps(fn)
        def keeping_result(*args, **kwargs):
            outcome.label = fn(*args, **kwargs)

        actor.fn = keeping_result

    def series(self, queue_name: str, actor_name: str) -> _Series:
        series = self._series.get((queue_name, actor_name))
        if series is None:
            series = self._series[(queue_name, actor_name)] = _Series(self, queue_name, actor_name)
        return series

    def before_process_message(self, broker, message):
        message_id = message.message_id
        series = self.series(message.queue_name, message.actor_name)
        if message_id in self.delayed_messages:
            self.delayed_messages.remove(message_id)
            self.inprogress_delayed_messages.labels(message.queue_name, message.actor_name).dec()
        self._outcome.label = None
        TALLY.add(((series.inprogress, 1.0),))
        self.message_start_times[message_id] = current_millis()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        series = self.series(message.queue_name, message.actor_name)
        now = time.time()
        updates = self._finished(series, message, now)
        if series.processed is not None:
            outcome = self._outcome.label
            if exception is not None:
                # Only a failure recorded on the item is an outcome; a retry is not.
                outcome = "failed" if message.failed else None
            if outcome:
                latency = max(0.0, now - message.message_timestamp / 1000)
                processed = series.processed.get(outcome) or series.outcome(outcome)
                updates += ((processed, 1.0), *series.latency.observe(latency))
        if exception is not None:
            updates += ((series.errored, 1.0),)
        TALLY.add(updates)

    def after_skip_message(self, broker, message):
        series = self.series(message.queue_name, message.actor_name)
        TALLY.add(self._finished(series, message, time.time()))

    def _finished(self, series: _Series, message, now: float) -> tuple:
        now_ms = int(now * 1000)
        started = self.message_start_times.pop(message.message_id, None)
        finished = (
            (series.total, 1.0),
            *series.duration.observe(0 if started is None else now_ms - started),
        )
        # A message refused before this middleware's before-hook (a forged
        # one) was never counted in progress.
        return finished if started is None else ((series.inprogress, -1.0), *finished)


class _Series:
    """The values one message of a (queue, actor) updates."""

    def __init__(self, metrics: WorkerMetrics, queue_name: str, actor_name: str) -> None:
        labels = (queue_name, actor_name)
        self.inprogress = metrics.inprogress_messages.labels(*labels)._value
        self.total = metrics.total_messages.labels(*labels)._value
        self.errored = metrics.total_errored_messages.labels(*labels)._value
        self.duration = _Buckets(metrics.message_durations.labels(*labels))
        self.actor_name = actor_name
        self.processed: dict[str, Any] | None = None
        if actor_name in LEARNER_ACTORS:
            self.processed = {}
            self.latency = _Buckets(learner_latency().labels(actor_name))

    def outcome(self, outcome: str) -> Any:
        assert self.processed is not None  # a learner actor's
        value = self.processed[outcome] = (
            learners_processed().labels(self.actor_name, outcome)._value
        )
        return value


class _Buckets:
    """A histogram child's values: an observation adds to its sum and to the
    first bucket whose upper bound is >= the amount, as Histogram.observe picks."""

    def __init__(self, child: Any) -> None:
        self.sum, self.buckets, self.bounds = child._sum, child._buckets, child._upper_bounds

    def observe(self, amount: float) -> tuple:
        return (self.sum, amount), (self.buckets[bisect_left(self.bounds, amount)], 1.0)


class _DiscardedResultWarning(logging.Filter):
    """Dramatiq's worker warns, for every message, that an actor's result is
    discarded unless the Results middleware (a result store) is installed.
    Ours return their outcome for `WorkerMetrics` only (which, where it is
    installed, hands Dramatiq None instead), so that one warning is dropped;
    every other log line of the worker threads stays."""

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
        broker.add_middleware(WorkerMetrics())
