"""The Dramatiq broker, chosen once from settings.

`BROKER_URL=amqp://...` gives RabbitMQ (durable queues, publisher confirms);
an empty `BROKER_URL` gives Dramatiq's in-process StubBroker, the embedded
mode used by `batchctl demo` and fast unit tests.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from shared.settings import Settings, get_settings
from shared.signing import SignMessages

# A learner takes milliseconds; a minute means something is stuck, and the
# worker's graceful-shutdown period in deploy/ is sized to match.
LEARNER_TIME_LIMIT_MS = 60_000


def build_broker(settings: Settings | None = None) -> dramatiq.Broker:
    """A broker with our middleware stack. Retries and the item bookkeeping are
    added by `workers.middleware` so the producer does not import worker code."""
    settings = settings or get_settings()
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=LEARNER_TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
    ]
    if settings.signing_key:
        # First in the list: its before_process_message runs before any other.
        middleware.insert(0, SignMessages(settings.signing_key, settings.signing_key_previous))
    if settings.broker_url.startswith("amqp"):
        return RabbitmqBroker(url=settings.broker_url, confirm_delivery=True, middleware=middleware)
    return StubBroker(middleware=middleware)


_broker: dramatiq.Broker | None = None


def get_broker() -> dramatiq.Broker:
    """The process-wide broker, also installed as Dramatiq's global broker."""
    global _broker
    if _broker is None:
        _broker = build_broker()
        dramatiq.set_broker(_broker)
    return _broker


def reset_broker() -> None:
    """Forget the broker (tests and the demo switch settings within one process)."""
    global _broker
    if _broker is not None:
        _broker.close()
    _broker = None
