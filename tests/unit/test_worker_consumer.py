"""The worker's RabbitMQ consumer (workers/broker.py) on Dramatiq's own
consumer, with pika's connection and channel replaced by recorders: acks are
queued on the channel underneath, not flushed; an undecodable body is handed
to PoisonMessages before Dramatiq's nack goes out. The same against RabbitMQ:
tests/integration/test_worker_broker.py."""

from __future__ import annotations

from types import SimpleNamespace

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import _RabbitmqConsumer

from workers.broker import WorkerConsumer
from workers.poison import PoisonMessages

GOOD = dramatiq.Message(
    queue_name="add_to_group", actor_name="add_to_group", args=(1, 2), kwargs={}, options={}
)
UNDECODABLE = b'{"actor_name": "add_to_group", "args": [1, 3], "schema": 2}'


class Recorder:
    """pika's BlockingConnection and BlockingChannel, as far as a consumer uses them."""

    def __init__(self, deliveries) -> None:
        self.deliveries = deliveries
        self.callbacks: list = []
        self.frames: list[tuple] = []
        self._impl = SimpleNamespace(basic_ack=lambda tag: self.frames.append(("queued ack", tag)))

    def add_callback_threadsafe(self, callback) -> None:
        self.callbacks.append(callback)

    def turn(self) -> None:
        """The connection thread's next I/O turn: run what was handed to it."""
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()

    def basic_ack(self, tag, multiple=False) -> None:
        self.frames.append(("flushed ack", tag))

    def basic_nack(self, tag, multiple=False, requeue=True) -> None:
        self.frames.append(("nack", tag, requeue))


@pytest.fixture
def consumer(monkeypatch):
    """A WorkerConsumer whose Dramatiq constructor gets the recorder for a connection."""
    method = SimpleNamespace  # pika's Basic.Deliver, as far as Dramatiq reads it
    pika_io = Recorder(
        [
            (method(delivery_tag=1, redelivered=False), None, GOOD.encode()),
            (None, None, None),  # the idle tick
            (method(delivery_tag=2, redelivered=False), None, UNDECODABLE),
        ]
    )

    def connect(self, broker, queue_name, prefetch, timeout):
        self.broker, self.queue_name = broker, queue_name
        self.logger = SimpleNamespace(exception=lambda *a, **k: None, warning=lambda *a, **k: None)
        self.connection = self.channel = pika_io
        self.iterator = iter(pika_io.deliveries)
        self.known_tags = set()

    monkeypatch.setattr(_RabbitmqConsumer, "__init__", connect)
    broker = SimpleNamespace(middleware=[PoisonMessages(items=None)])
    return WorkerConsumer(broker, "add_to_group", 1, 100), pika_io


def test_acks_are_queued_for_the_next_io_turn_instead_of_flushed(consumer):
    consumer, pika_io = consumer
    message = next(consumer)
    assert message.message_id == GOOD.message_id
    consumer.ack(message)
    assert pika_io.frames == []  # handed to the connection thread
    pika_io.turn()
    assert pika_io.frames == [("queued ack", 1)]


def test_an_undecodable_body_reaches_poison_messages_before_it_is_nacked(consumer, monkeypatch):
    consumer, pika_io = consumer
    seen = []

    def malformed(self, broker, queue_name, body):
        seen.append((queue_name, body, list(pika_io.frames)))

    monkeypatch.setattr(PoisonMessages, "malformed", malformed)
    assert next(consumer) is not None
    assert next(consumer) is None  # the idle tick: nothing undecodable
    assert seen == []
    assert next(consumer) is None
    assert seen == [("add_to_group", UNDECODABLE, [])]  # nothing nacked yet
    pika_io.turn()
    assert pika_io.frames == [("nack", 2, False)]  # Dramatiq's dead-lettering
