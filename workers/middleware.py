"""Worker middleware: retry policy and the bookkeeping around each message."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.middleware import Middleware, Retries

from shared.contract import Action
from workers.errors import describe, is_transient

log = logging.getLogger(__name__)

# Transient failures retry with exponential backoff: 0.5 s doubling up to
# 5 minutes, 10 times (about 15 minutes in all, enough to ride out a database
# failover). Permanent failures never reach the retry policy: the actor marks
# the item failed at once.
MAX_RETRIES = 10
MIN_BACKOFF_MS = 500
MAX_BACKOFF_MS = 300_000
ITEM_ACTORS = {a.value for a in Action}


def should_retry(retries: int, exception: BaseException) -> bool:
    return retries < MAX_RETRIES and is_transient(exception)


class ScrubTraceback(Middleware):
    """Retries stores the traceback in the message it republishes; driver
    errors can quote row values (an email), and messages carry ids only."""

    def before_enqueue(self, broker, message, delay):
        message.options.pop("traceback", None)


class FailExhaustedItems(Middleware):
    """When a batch item's message is given up on (retries exhausted, or a
    failure not worth retrying), its item ends `failed` with the reason,
    and the message goes on to the dead-letter queue."""

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None or not message.failed or message.actor_name not in ITEM_ACTORS:
            return
        from workers.items import record_failure

        batch_id, learner_id = message.args[:2]
        try:
            record_failure(batch_id, learner_id, f"gave up: {describe(exception)}")
        except Exception as exc:  # the reconciler will republish the item
            log.warning("could not record failure of batch %s: %s", batch_id, describe(exc))


def install(broker: dramatiq.Broker) -> None:
    """Add the worker-side middleware. Dramatiq runs after-hooks in reverse
    order, so FailExhaustedItems goes *before* Retries in the list: its hook
    then runs after Retries has set the message's failed flag."""
    broker.add_middleware(FailExhaustedItems())
    broker.add_middleware(
        Retries(max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS)
    )
    broker.add_middleware(ScrubTraceback())
