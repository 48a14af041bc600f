"""The Dramatiq broker, chosen once from settings.

`BROKER_URL=amqp://...` gives RabbitMQ (durable queues, publisher confirms);
an empty `BROKER_URL` gives Dramatiq's in-process StubBroker, the embedded
mode used by `batchctl demo` and fast unit tests.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, TimeLimit

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


def build_broker(
    settings: Settings, rabbitmq_class: type[RabbitmqBroker] = RabbitmqBroker
) -> dramatiq.Broker:
    """A broker with our middleware stack. Retries and the item bookkeeping are
    added by `workers.middleware`, and worker processes pass their RabbitMQ
    class (`workers.broker.WorkerBroker`), so the producer does not import
    worker code.
    Dramatiq's other default middleware (age limits, callbacks, pipelines,
    shutdown notifications, current message) serve options no actor of ours
    uses, so they are left out: Dramatiq calls every middleware's hooks for
    every message."""
    middleware: list[Middleware] = [TimeLimit(time_limit=LEARNER_TIME_LIMIT_MS)]
    if settings.signing_key:
        # First in the list: its before_process_message runs before any other.
        signer = SignMessages(
            settings.signing_key, settings.signing_key_previous, settings.message_max_age_seconds
        )
        middleware.insert(0, signer)
    if settings.broker_url.startswith("amqp"):
        return rabbitmq_class(
            url=settings.broker_url,
            confirm_delivery=True,
            max_priority=SMALL_BATCH_PRIORITY,
            middleware=middleware,
        )
    return StubBroker(middleware=middleware)
