"""Publishing per-learner messages, confirmed by the broker.

Dramatiq's RabbitmqBroker with `confirm_delivery` waits for one confirm per
message: a full round trip each, which caps dispatch at a few hundred
messages a second. `ConfirmedPublisher` pipelines instead: it publishes a
whole window, then waits until RabbitMQ has confirmed every message of it
(or raises, so the caller does not move its dispatch cursor). A broker crash
therefore delays learners but cannot drop one silently.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import dramatiq
import pika
import pika.channel
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Middleware
from pika import spec
from pika.adapters.blocking_connection import BlockingChannel

log = logging.getLogger(__name__)
CONFIRM_TIMEOUT_SECONDS = 30.0


def underlying_channel(blocking_channel: BlockingChannel) -> pika.channel.Channel:
    """pika's asynchronous channel under a blocking one. Its methods only queue
    frames for the connection's I/O loop, where the blocking channel's run the
    loop until each is written (or confirmed). pika 1.x keeps it in the private
    `_impl`, read here and nowhere else: pyproject.toml pins pika below 2, and
    tests/integration/test_worker_broker.py checks it."""
    return blocking_channel._impl


class PublishError(Exception):
    """Some message of the call is not known to be safely in the broker."""


class Publisher(Protocol):
    def publish(self, messages: Sequence[dramatiq.Message]) -> None: ...

    def close(self) -> None: ...


class BrokerPublisher:
    """Any Dramatiq broker, one `enqueue` per message (the embedded StubBroker)."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker

    def publish(self, messages: Sequence[dramatiq.Message]) -> None:
        for message in messages:
            self.broker.enqueue(message)

    def close(self) -> None:
        pass


class ConfirmedPublisher:
    """RabbitMQ publisher with pipelined publisher confirms. One per thread."""

    def __init__(self, broker: RabbitmqBroker, max_unconfirmed: int = 2000) -> None:
        self.broker = broker
        self.max_unconfirmed = max_unconfirmed
        self._connection: pika.BlockingConnection | None = None
        self._channel = None
        self._next_tag = 0
        self._confirmed_through = 0
        self._unconfirmed: set[int] = set()
        self._rejected = 0
        self._declared: set[str] = set()

    def _connect(self):
        if self._connection is not None and self._connection.is_open:
            return self._channel
        parameters = self.broker.parameters
        self._connection = pika.BlockingConnection(parameters)
        # The blocking adapter confirms one message per round trip; its
        # underlying channel lets us keep many confirms in flight.
        channel = underlying_channel(self._connection.channel())
        selected: list[bool] = []
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: selected.append(True))
        channel.add_on_return_callback(self._on_return)
        deadline = time.monotonic() + CONFIRM_TIMEOUT_SECONDS
        while not selected:
            if time.monotonic() > deadline:
                raise PublishError("RabbitMQ did not enable publisher confirms")
            self._connection.process_data_events(time_limit=0.1)
        self._channel = channel
        self._next_tag = 0
        self._confirmed_through = 0
        self._unconfirmed.clear()
        self._rejected = 0
        return channel

    def _on_confirm(self, frame) -> None:
        method = frame.method
        tag = method.delivery_tag
        if method.multiple:
            # Tags are consecutive: walk up from the last multiple confirm
            # rather than scan every unconfirmed tag (quadratic in the window).
            confirmed: Iterable[int] = range(self._confirmed_through + 1, tag + 1)
            self._confirmed_through = max(self._confirmed_through, tag)
        else:
            confirmed = (tag,)
        nack = isinstance(method, spec.Basic.Nack)
        for each in confirmed:
            if each in self._unconfirmed:
                self._unconfirmed.discard(each)
                self._rejected += nack

    def _on_return(self, _channel, _method, _properties, _body) -> None:
        # Unroutable (mandatory): the queue vanished. RabbitMQ still acks it.
        self._rejected += 1

    def publish(self, messages: Sequence[dramatiq.Message]) -> None:
        if not messages:
            return
        try:
            self._publish(messages)
        # Dramatiq's BrokerConnectionError: declaring a queue (the first publish to
        # it) with the broker down.
        except (pika.exceptions.AMQPError, OSError, dramatiq.BrokerConnectionError) as exc:
            self.close()
            raise PublishError(f"publish failed: {type(exc).__name__}") from exc

    def _publish(self, messages: Sequence[dramatiq.Message]) -> None:
        for queue in {m.queue_name for m in messages} - self._declared:
            self.broker.declare_queue(queue, ensure=True)
            self._declared.add(queue)
        channel = self._connect()
        connection = self._connection
        assert connection is not None  # _connect() has just opened it
        rejected_before = self._rejected
        properties = {None: pika.BasicProperties(delivery_mode=2)}
        before, after = (
            _hooked(self.broker, "before_enqueue"),
            _hooked(self.broker, "after_enqueue"),
        )
        for message in messages:
            if before:
                self.broker.emit_before("enqueue", message, None)
            priority = message.options.get("broker_priority")
            if priority not in properties:
                properties[priority] = pika.BasicProperties(delivery_mode=2, priority=priority)
            channel.basic_publish(
                exchange="",
                routing_key=message.queue_name,
                body=message.encode(),
                properties=properties[priority],
                mandatory=True,
            )
            self._next_tag += 1
            self._unconfirmed.add(self._next_tag)
            if len(self._unconfirmed) >= self.max_unconfirmed:
                connection.process_data_events(time_limit=0)
        deadline = time.monotonic() + CONFIRM_TIMEOUT_SECONDS
        while self._unconfirmed:
            if time.monotonic() > deadline:
                raise PublishError(f"{len(self._unconfirmed)} messages not confirmed in time")
            connection.process_data_events(time_limit=0.05)
        if self._rejected != rejected_before:
            raise PublishError(f"RabbitMQ rejected {self._rejected - rejected_before} messages")
        if after:
            for message in messages:
                self.broker.emit_after("enqueue", message, None)

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self._connection.close()
        self._connection = None
        self._channel = None


def _hooked(broker: dramatiq.Broker, hook: str) -> bool:
    """Whether any middleware of the broker does something on `hook`: when
    none does, emitting it per message only calls no-ops."""
    return any(getattr(type(m), hook) is not getattr(Middleware, hook) for m in broker.middleware)


def publisher_for(broker: dramatiq.Broker) -> Publisher:
    if isinstance(broker, RabbitmqBroker):
        return ConfirmedPublisher(broker)
    return BrokerPublisher(broker)
