"""The retry policy, given once: transient failures retry with exponential
backoff, permanent ones fail their item at once.

Dramatiq's `Retries` middleware carries the whole policy (`retry_when`, the
backoff); an actor only says which of its exceptions are permanent (its
`throws` option, `workers.errors.PermanentFailure`).
"""

from __future__ import annotations

from dramatiq.middleware import Middleware, Retries

from shared.contract import ITEM_ACTORS
from shared.settings import Settings
from workers.errors import describe, is_transient
from workers.give_up import give_up
from workers.items import Items


def retries(settings: Settings) -> Retries:
    """Dramatiq's Retries with our policy: transient failures retry with
    exponential backoff (RETRY_MIN_BACKOFF_MS doubling to RETRY_MAX_BACKOFF_MS)
    up to RETRY_MAX times; permanent ones never reach it (the actor raises
    PermanentFailure, a `throws`). `retry_when` takes precedence over
    Retries' own `max_retries`, so RETRY_MAX is applied here."""

    def should_retry(retries: int, exception: BaseException) -> bool:
        return retries < settings.retry_max and is_transient(exception)

    return Retries(
        retry_when=should_retry,
        min_backoff=settings.retry_min_backoff_ms,
        max_backoff=settings.retry_max_backoff_ms,
    )


class FailExhaustedItems(Middleware):
    """When a batch item's message is given up on (retries exhausted, or a
    failure not worth retrying), its item ends `failed` with the reason,
    and the message goes on to the dead-letter queue. Its after-hook must
    run after Retries' (which sets the failed flag): see `workers.middleware`."""

    def __init__(self, items: Items) -> None:
        self.items = items

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None or not message.failed or message.actor_name not in ITEM_ACTORS:
            return
        give_up(
            self.items,
            message.queue_name,
            message.args,
            message.message_id,
            f"gave up: {describe(exception)}",
        )


class ScrubTraceback(Middleware):
    """Retries stores the traceback in the message it republishes; driver
    errors can quote row values (an email), and messages carry ids only."""

    def before_enqueue(self, broker, message, delay):
        message.options.pop("traceback", None)
