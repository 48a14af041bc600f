"""The workers' RabbitMQ broker: Dramatiq's, with a consumer that queues its
acks and notices undecodable bodies.

Extended through Dramatiq 2.x's own hook: `RabbitmqBroker.consume` builds
each consumer from the broker's `consumer_class` property, so `WorkerBroker`
overrides that property to return `WorkerConsumer`, a subclass of Dramatiq's
`_RabbitmqConsumer`. Worker processes build it (`workers.runtime.WorkerRuntime`
takes the class); the producer and the reconciler keep a plain
`RabbitmqBroker`. The Dramatiq and pika internals this relies on are checked
by tests/unit/test_dependency_internals.py and
tests/integration/test_worker_broker.py; pyproject.toml pins both below
their next major version.

Acks queued for the consumer's next I/O turn instead of flushed one by one.
Dramatiq acks a message by handing `BlockingChannel.basic_ack` to the
consumer's connection thread (`add_callback_threadsafe`). The blocking
adapter's `basic_ack` then runs the event loop until its output buffer is
empty: a poll and a loop turn for every single ack, the largest single item
of a worker's Python time (and of the bench's floor's). The channel
underneath (pika's asynchronous channel, `shared.publish.underlying_channel`)
only queues the frame; the same connection thread writes it on the loop turn
it is already in, or the next, which follows at once because the consumer
drives the loop continuously. Same thread, same frames, same order; acks can
only be delayed by one loop turn, and RabbitMQ redelivers an unacked message
anyway if the connection drops before it is written. Handing a callback to
the connection thread wakes its loop (a write to a pipe, a loop turn); acks
that come while one hand-over is still pending join it, so the eight worker
threads' acks cost one wake-up per turn instead of one each.

Delivery counts. On quorum queues RabbitMQ tells how often a message was
delivered before (`x-delivery-count`); the consumer hands it to the crash
loop guard as the message proxy's `delivery_count`.

Undecodable bodies. Dramatiq's consumer logs a body it cannot decode, nacks
it (to the dead letters) and yields nothing, so no middleware hook sees it.
The consumer notes each delivery's body on its way to Dramatiq and hands an
undecodable one to `PoisonMessages.malformed`, which fails the item it
names. That happens before the nack is written: Dramatiq queues the nack for
the connection thread, which is this consumer's thread, on its next turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import pika.exceptions
from dramatiq.brokers.rabbitmq import _RabbitmqConsumer
from dramatiq.errors import ConnectionClosed

from shared.broker import TypedQueuesBroker
from shared.publish import underlying_channel
from workers.poison import PoisonMessages


class WorkerConsumer(_RabbitmqConsumer):
    def __init__(self, broker, queue_name, prefetch, timeout):
        super().__init__(broker, queue_name, prefetch, timeout)
        self._queue_ack = underlying_channel(self.channel).basic_ack
        self._acks: deque[int] = deque()
        self._acks_handed_over = False  # a `_write_acks` is queued for the connection thread
        self._body: bytes | None = None
        self._delivery_count: int | None = None
        self.iterator = self._noting_bodies(self.iterator)

    def _noting_bodies(self, deliveries: Iterator) -> Iterator:
        for delivery in deliveries:
            method, properties, body = delivery
            self._body = None if method is None else body  # None: the idle tick
            # Quorum queues count earlier deliveries (absent on the first one).
            headers = getattr(properties, "headers", None) or {}
            self._delivery_count = headers.get("x-delivery-count")
            yield delivery

    def __next__(self):
        message = super().__next__()
        if message is not None:
            # Read by `workers.crash_loop.CrashLoopGuard`; None on classic queues.
            message.delivery_count = self._delivery_count
        # Dramatiq returns None for a delivery only when it could not decode it.
        if message is None and self._body is not None:
            body, self._body = self._body, None
            for poison in self.broker.middleware:
                if isinstance(poison, PoisonMessages):
                    poison.malformed(self.broker, self.queue_name, body)
        return message

    def ack(self, message):
        """Dramatiq's `ack`, with the frame queued instead of flushed, and
        handed to the connection thread with the other acks pending."""
        try:
            self.known_tags.remove(message._tag)
            self._acks.append(message._tag)
            # After the append: a pending hand-over clears the flag before it
            # takes the acks, so it takes this one, or this thread hands over.
            if not self._acks_handed_over:
                self._acks_handed_over = True
                self.connection.add_callback_threadsafe(self._write_acks)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            self._acks_handed_over = False
            raise ConnectionClosed(e) from None
        except KeyError:
            self.logger.warning("Failed to ack message: not in known tags.")
        except Exception:
            self.logger.warning("Failed to ack message.", exc_info=True)

    def _write_acks(self) -> None:
        """On the connection thread: queue the frame of every pending ack."""
        self._acks_handed_over = False
        acks = self._acks
        while acks:
            self._queue_ack(acks.popleft())


class WorkerBroker(TypedQueuesBroker):
    """The RabbitMQ broker of worker processes: consumers are `WorkerConsumer`s."""

    @property
    def consumer_class(self):
        return WorkerConsumer
