"""Worker metrics: Dramatiq's own Prometheus middleware plus ours.

Both write to prometheus-client's multiprocess directory; Dramatiq's forked
exposition server serves every worker process's series on METRICS_PORT.
"""

from __future__ import annotations

import os
import threading
import time

import dramatiq
from dramatiq.middleware import Middleware
from dramatiq.middleware.prometheus import Prometheus

from shared.contract import FINALIZE_DELETION_QUEUE, Action
from shared.metrics import learner_latency, learners_processed

COUNTED_ACTORS = {a.value for a in Action} | {FINALIZE_DELETION_QUEUE}
_current = threading.local()


def note_outcome(outcome: str | None) -> None:
    """Called by an actor with the outcome it committed (None: nothing to do).
    The actor and the middleware hooks run on the same worker thread."""
    _current.outcome = outcome


class LearnerMetrics(Middleware):
    """Counts each learner outcome once, and times it from publish to outcome."""

    def after_process_boot(self, broker):
        # Zero series from the start, so rates and ratios are defined before
        # the first learner of an action is processed.
        for action in COUNTED_ACTORS:
            learner_latency().labels(action)
            for outcome in ("applied", "skipped", "failed"):
                learners_processed().labels(action, outcome)

    def before_process_message(self, broker, message):
        _current.outcome = None

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if message.actor_name not in COUNTED_ACTORS:
            return
        outcome = getattr(_current, "outcome", None)
        if exception is not None:
            # Only a failure recorded on the item is an outcome; a retry is not.
            outcome = "failed" if message.failed else None
        if not outcome:
            return
        learners_processed().labels(message.actor_name, outcome).inc()
        published = message.message_timestamp / 1000
        learner_latency().labels(message.actor_name).observe(max(0.0, time.time() - published))


def install(broker: dramatiq.Broker) -> None:
    """Only under the `dramatiq` CLI (started by `batchctl worker`), which boots
    the multiprocess directory and forks the exposition server. Install before
    `workers.middleware`: after-hooks run in reverse order, and these must see
    the failed flag that Retries sets."""
    if os.environ.get("dramatiq_prom_db"):  # noqa: SIM112 (Dramatiq's own name)
        broker.add_middleware(Prometheus())
        broker.add_middleware(LearnerMetrics())
