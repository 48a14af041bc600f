"""The private parts of prometheus-client and Dramatiq we rely on, checked on
the installed versions (pyproject.toml pins both below the next version that
could change them). pika's `BlockingChannel._impl` needs a connection:
tests/integration/test_worker_broker.py checks it."""

from __future__ import annotations

import math

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.signing import signature
from workers.broker import WorkerBroker, WorkerConsumer


def test_metric_children_expose_the_values_the_tally_writes():
    """workers.metrics.Tally: a counter's or gauge's `_value`, a histogram's
    `_buckets` (one value per upper bound), `_sum` and `_upper_bounds`."""
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["a"], registry=registry).labels("x")
    gauge = Gauge("g", "g", ["a"], registry=registry).labels("x")
    histogram = Histogram("h", "h", ["a"], buckets=(1, 5), registry=registry).labels("x")
    for value in (counter._value, gauge._value, histogram._sum, *histogram._buckets):
        value.inc(2)
        assert value.get() == 2
    assert histogram._upper_bounds == [1, 5, math.inf]
    assert len(histogram._buckets) == len(histogram._upper_bounds)


def test_the_rabbitmq_broker_builds_its_consumers_from_consumer_class():
    """workers.broker: Dramatiq's hook for its consumer, and the consumer's
    parts `WorkerConsumer` builds on."""
    assert isinstance(RabbitmqBroker.__dict__["consumer_class"], property)
    assert RabbitmqBroker.consumer_class.fget(None) is _RabbitmqConsumer
    assert WorkerBroker.consumer_class.fget(None) is WorkerConsumer
    assert issubclass(WorkerConsumer, _RabbitmqConsumer)
    for method in ("__init__", "__next__", "ack", "nack", "_nack", "close"):
        assert callable(getattr(_RabbitmqConsumer, method))


def test_a_message_proxy_wraps_the_message_it_forwards_to():
    """shared.signing reads the message under a worker's proxy (`_message`):
    through the proxy's __getattr__ each of the five reads costs more."""
    message = dramatiq.Message(
        queue_name="add_to_group", actor_name="add_to_group", args=(1, 2), kwargs={}, options={}
    )
    proxy = MessageProxy(message)
    assert proxy._message is message
    assert signature("key", proxy) == signature("key", message)
