"""Acks queued for the consumer's next I/O turn instead of flushed one by one.

Dramatiq acks a message by handing `BlockingChannel.basic_ack` to the
consumer's connection thread (`add_callback_threadsafe`). The blocking
adapter's `basic_ack` then runs the event loop until its output buffer is
empty: a poll and a loop turn for every single ack, the largest single item
of a worker's Python time (and of the bench's floor's). The channel
underneath (`BlockingChannel._impl`, pika's asynchronous channel) only
queues the frame; the same connection thread writes it on the loop turn it
is already in, or the next, which follows at once because the consumer
drives the loop continuously. Same thread, same frames, same order; acks
can only be delayed by one loop turn, and RabbitMQ redelivers an unacked
message anyway if the connection drops before it is written.
"""

from __future__ import annotations

from dramatiq.brokers.rabbitmq import RabbitmqBroker


def queue_acks(broker: RabbitmqBroker) -> None:
    """Make every consumer the broker opens from now on ack without a flush."""
    consume = broker.consume

    def consume_queuing_acks(queue_name: str, prefetch: int = 1, timeout: int = 5000):
        consumer = consume(queue_name, prefetch=prefetch, timeout=timeout)
        channel = getattr(consumer, "channel", None)
        if channel is not None and hasattr(channel, "_impl"):
            # Dramatiq's `_RabbitmqConsumer.ack` looks up `channel.basic_ack` per ack.
            channel.basic_ack = channel._impl.basic_ack
        return consumer

    broker.consume = consume_queuing_acks
