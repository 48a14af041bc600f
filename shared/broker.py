"""The Dramatiq broker, chosen once from settings.

`BROKER_URL=amqp://...` gives RabbitMQ (durable queues, publisher confirms);
an empty `BROKER_URL` gives Dramatiq's in-process StubBroker, the embedded
mode used by `batchctl demo` and fast unit tests. Several RabbitMQ nodes are
separated by `;` (`amqp://a:5672/v;amqp://b:5672/v`): Dramatiq hands pika the
list, and every new connection tries the nodes in order until one answers.

`QUEUE_TYPE` says how every queue is declared, the delay (`.DQ`) and dead
letter (`.XQ`) queues included: `classic` priority queues on one node, or
`quorum` queues replicated over a cluster (docs/OPERATIONS.md, "Running on a
RabbitMQ cluster").
"""

from __future__ import annotations

from typing import Any

import dramatiq
import pika.exceptions
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name, xq_name
from dramatiq.middleware import Middleware, MiddlewareError, TimeLimit

from shared.settings import Settings
from shared.signing import SignMessages

# A learner takes milliseconds; a minute means something is stuck, and the
# worker's graceful-shutdown period in deploy/ is sized to match.
LEARNER_TIME_LIMIT_MS = 60_000
# Every queue is a RabbitMQ priority queue with two levels: batches that fit in
# one dispatch window are published at 1, ahead of big ones (see
# `shared.dispatch.priority_for`). `x-max-priority` is fixed when a queue is
# declared: queues declared without it must be drained and deleted once
# (docs/OPERATIONS.md, "Upgrading to priority queues").
SMALL_BATCH_PRIORITY = 1
# Quorum queues (RabbitMQ 3.x) have no priorities: small batches wait their
# turn behind big ones (docs/OPERATIONS.md states the trade-off).
QUORUM = "quorum"


class QueueArgumentsMismatch(RuntimeError):
    """A queue exists with other arguments than this process declares it with."""


class DefinedHooksOnly(dramatiq.Broker):
    """Dramatiq calls every middleware's hook for every signal: four signals
    a message, ten middleware in a worker, most of them the base class's
    no-op. Here a signal calls only the middleware that define its hook, in
    Dramatiq's order (before-hooks in list order, after-hooks reversed) and
    with its error handling; the lists are rebuilt whenever a middleware is
    added."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._hooks: dict[str, list[tuple[Middleware, Any]]] = {}
        super().__init__(*args, **kwargs)

    def add_middleware(self, middleware, *, before=None, after=None):
        super().add_middleware(middleware, before=before, after=after)
        self._hooks = {}

    def _hooked(self, hook: str) -> list[tuple[Middleware, Any]]:
        hooked = self._hooks.get(hook)
        if hooked is None:
            noop = getattr(Middleware, hook, None)
            ordered = self.middleware if hook.startswith("before_") else self.middleware[::-1]
            hooked = self._hooks[hook] = [
                (m, getattr(m, hook)) for m in ordered if getattr(type(m), hook, noop) is not noop
            ]
        return hooked

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        hook = "before_" + signal
        for middleware, call in self._hooked(hook):
            try:
                call(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", hook, middleware, exc_info=True
                )

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        hook = "after_" + signal
        for middleware, call in self._hooked(hook):
            try:
                call(self, *args, **kwargs)
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", hook, middleware, exc_info=True
                )


class EmbeddedBroker(DefinedHooksOnly, StubBroker):
    """Dramatiq's in-process StubBroker (the embedded mode, unit tests)."""


class TypedQueuesBroker(DefinedHooksOnly, RabbitmqBroker):
    """Dramatiq's RabbitMQ broker, declaring its queues as `queue_type`.

    On quorum queues, RabbitMQ itself counts the deliveries of each message
    (`x-delivery-count`) and dead-letters one delivered `delivery_limit` + 1
    times (`x-delivery-limit`): a message that keeps killing its worker ends
    in `<queue>.XQ` even when no worker lives long enough to count it
    (`workers.crash_loop.CrashLoopGuard` fails its item on the last delivery).
    The delay queue gets no limit: its messages are only held until their ETA
    and moved on, never run, yet each worker restart counts as a delivery."""

    def __init__(
        self, *, queue_type: str = "classic", delivery_limit: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.queue_type = queue_type
        self.delivery_limit = delivery_limit

    def _build_queue_arguments(self, queue_name):
        arguments = super()._build_queue_arguments(queue_name)
        if self.queue_type == QUORUM:
            arguments["x-queue-type"] = QUORUM
        return arguments

    def _declare_queue(self, queue_name):
        arguments = self._build_queue_arguments(queue_name)
        if self.queue_type == QUORUM and self.delivery_limit is not None:
            arguments["x-delivery-limit"] = self.delivery_limit
        return self._declare(queue_name, arguments)

    def _declare_dq_queue(self, queue_name):
        return self._declare(dq_name(queue_name), self._build_queue_arguments(queue_name))

    def _declare_xq_queue(self, queue_name):
        arguments: dict[str, object] = {"x-message-ttl": DEAD_MESSAGE_TTL}
        if self.queue_type == QUORUM:
            arguments["x-queue-type"] = QUORUM
        return self._declare(xq_name(queue_name), arguments)

    def _declare(self, name: str, arguments: dict):
        try:
            return self.channel.queue_declare(queue=name, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != 406:  # PRECONDITION_FAILED: arguments differ
                raise
            del self.connection  # the broker closed the channel; start afresh next time
            raise QueueArgumentsMismatch(
                f"RabbitMQ refused to declare queue {name!r} as QUEUE_TYPE={self.queue_type} "
                f"(MAX_DELIVERIES sets its x-delivery-limit): {error.reply_text}. A queue keeps "
                "the type and arguments it was first declared with: give every process the "
                "settings the queues were declared with, or drain and delete the queues first "
                "(docs/OPERATIONS.md, 'Moving to quorum queues')"
            ) from None


def build_broker(
    settings: Settings, rabbitmq_class: type[RabbitmqBroker] = TypedQueuesBroker
) -> dramatiq.Broker:
    """A broker with our middleware stack. Retries and the item bookkeeping are
    added by `workers.middleware`, and worker processes pass their RabbitMQ
    class (`workers.broker.WorkerBroker`), so the producer does not import
    worker code.
    Dramatiq's other default middleware (age limits, callbacks, pipelines,
    shutdown notifications, current message) serve options no actor of ours
    uses, so they are left out: Dramatiq calls every middleware's hooks for
    every message.
    A plain `RabbitmqBroker` class (the producer's and the reconciler's
    runtime pass it) means `TypedQueuesBroker`, so that every process declares
    the queues alike; the workers' `WorkerBroker` is one already."""
    middleware: list[Middleware] = [TimeLimit(time_limit=LEARNER_TIME_LIMIT_MS)]
    if settings.signing_key:
        # First in the list: its before_process_message runs before any other.
        signer = SignMessages(
            settings.signing_key, settings.signing_key_previous, settings.message_max_age_seconds
        )
        middleware.insert(0, signer)
    if settings.broker_url.startswith("amqp"):
        if not issubclass(rabbitmq_class, TypedQueuesBroker):
            rabbitmq_class = TypedQueuesBroker
        quorum = settings.queue_type == QUORUM
        return rabbitmq_class(
            url=settings.broker_url,
            confirm_delivery=True,
            max_priority=None if quorum else SMALL_BATCH_PRIORITY,
            queue_type=settings.queue_type,
            delivery_limit=settings.max_deliveries if quorum else None,
            middleware=middleware,
        )
    return EmbeddedBroker(middleware=middleware)
