"""Worker middleware: retry policy, crash loops, and the bookkeeping around
each message. Dramatiq runs after-hooks in reverse order of the list, which
`install` accounts for."""

from __future__ import annotations

import logging

import dramatiq
import redis
from dramatiq.middleware import Middleware, Retries, SkipMessage

from shared.contract import FINALIZE_DELETION_QUEUE, Action
from shared.progress import get_redis
from shared.settings import get_settings
from workers.errors import describe, is_transient

log = logging.getLogger(__name__)

ITEM_ACTORS = {a.value for a in Action}
DELIVERY_KEY_TTL_SECONDS = 24 * 3600


def should_retry(retries: int, exception: BaseException) -> bool:
    """Transient failures retry with exponential backoff (RETRY_MIN_BACKOFF_MS
    doubling to RETRY_MAX_BACKOFF_MS) up to RETRY_MAX times; permanent ones
    never reach this policy (the actor raises PermanentFailure, a `throws`)."""
    return retries < get_settings().retry_max and is_transient(exception)


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


class CrashLoopGuard(Middleware):
    """A message that kills its worker process is never acked, so RabbitMQ
    redelivers it forever (dramatiq#213). Redeliveries are counted in Redis
    when they start; at MAX_DELIVERIES the item ends `failed` and the message
    is dead-lettered instead of run again. First deliveries cost nothing here."""

    def before_process_message(self, broker, message):
        if not getattr(message, "redelivered", False):
            return
        if message.actor_name not in ITEM_ACTORS | {FINALIZE_DELETION_QUEUE}:
            return
        client = get_redis()
        if client is None:
            return
        key = f"batch-actions:deliveries:{message.message_id}"
        try:
            pipe = client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, DELIVERY_KEY_TTL_SECONDS)
            redeliveries = int(pipe.execute()[0])
        except redis.RedisError:
            return
        if redeliveries < get_settings().max_deliveries:
            return
        log.error(
            "message %s of %s was redelivered %d times; giving up",
            message.message_id,
            message.actor_name,
            redeliveries,
        )
        if message.actor_name in ITEM_ACTORS:
            from workers.items import record_failure

            batch_id, learner_id = message.args[:2]
            record_failure(batch_id, learner_id, f"crashed its worker {redeliveries} times")
        message.fail()
        raise SkipMessage("crash loop")


def install(broker: dramatiq.Broker) -> None:
    """Add the worker-side middleware. FailExhaustedItems goes *before*
    Retries in the list, so its after-hook runs after Retries has set the
    message's failed flag."""
    settings = get_settings()
    broker.add_middleware(CrashLoopGuard())
    broker.add_middleware(FailExhaustedItems())
    broker.add_middleware(
        Retries(
            max_retries=settings.retry_max,
            min_backoff=settings.retry_min_backoff_ms,
            max_backoff=settings.retry_max_backoff_ms,
        )
    )
    broker.add_middleware(ScrubTraceback())
