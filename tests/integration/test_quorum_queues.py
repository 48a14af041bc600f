"""QUEUE_TYPE=quorum against the machine's single RabbitMQ node (a quorum
queue works on one node): every queue, the delay and dead-letter queues
included, is declared as a quorum queue; messages are delivered; a message
that is never acked is dead-lettered by the broker after MAX_DELIVERIES
redeliveries, and the crash loop guard fails its item on the last one, without
Redis; a process whose QUEUE_TYPE differs from the queues' is told how to fix
it. Each test has a vhost of its own. The three-node cluster scenarios are in
tests/faults/test_cluster.py."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from dramatiq.middleware import SkipMessage

from shared.broker import QueueArgumentsMismatch, build_broker
from shared.dispatch import item_message
from shared.publish import ConfirmedPublisher
from shared.settings import Settings
from tests.support.services import RabbitVhost, rabbitmqctl
from workers import crash_loop
from workers.broker import WorkerBroker

QUEUE = "add_to_group"
KEY = "k" * 32


@pytest.fixture
def vhost():
    vhost = RabbitVhost(prefix="quorum_test")
    yield vhost
    vhost.delete()


def broker_for(vhost: RabbitVhost, queue_type: str = "quorum", max_deliveries: int = 5):
    settings = Settings(
        broker_url=vhost.url,
        signing_key=KEY,
        queue_type=queue_type,
        max_deliveries=max_deliveries,
    )
    return build_broker(settings, rabbitmq_class=WorkerBroker)


def declared(vhost: RabbitVhost) -> dict[str, tuple[str, str]]:
    out = rabbitmqctl(
        "list_queues", "-p", vhost.name, "name", "type", "arguments", "--no-table-headers"
    )
    rows = (line.split(None, 2) for line in out.splitlines() if line.strip())
    return {name: (kind, arguments) for name, kind, arguments in rows}


def test_every_queue_is_declared_as_a_quorum_queue(vhost):
    broker = broker_for(vhost, max_deliveries=4)
    try:
        broker.declare_queue(QUEUE, ensure=True)
    finally:
        broker.close()
    queues = declared(vhost)
    assert {name: kind for name, (kind, _) in queues.items()} == {
        QUEUE: "quorum",
        f"{QUEUE}.DQ": "quorum",
        f"{QUEUE}.XQ": "quorum",
    }
    assert '{"x-delivery-limit",4}' in queues[QUEUE][1]
    assert "x-max-priority" not in queues[QUEUE][1]
    assert "x-delivery-limit" not in queues[f"{QUEUE}.DQ"][1]


def test_confirmed_messages_are_delivered_with_their_delivery_count(vhost):
    broker = broker_for(vhost)
    publisher = ConfirmedPublisher(broker)
    try:
        # Priority 1 (a small batch): quorum queues ignore it, nothing refuses it.
        publisher.publish([item_message(QUEUE, 1, lid, priority=1) for lid in (2, 3, 4)])
        consumer = broker.consume(QUEUE, prefetch=10, timeout=100)
        received = receive(consumer, 3)
        for message in received:
            consumer.ack(message)
        consumer.close()
    finally:
        publisher.close()
        broker.close()
    assert sorted(m.args[1] for m in received) == [2, 3, 4]
    # RabbitMQ 3.10 adds x-delivery-count from the first redelivery on.
    assert [m.delivery_count for m in received] == [None, None, None]
    assert vhost.queues.stats([QUEUE])[QUEUE][0] == 0


def receive(consumer, n: int, timeout: float = 15) -> list:
    received, deadline = [], time.monotonic() + timeout
    while len(received) < n and time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            received.append(message)
    return received


def test_a_message_never_acked_is_dead_lettered_by_the_broker_and_its_item_failed(
    vhost, monkeypatch
):
    """Each consumer that closes without acking stands for a worker killed by
    the message. The guard runs without Redis: only the broker's count."""
    max_deliveries = 3
    given_up: list[tuple] = []
    monkeypatch.setattr(
        crash_loop, "give_up", lambda items, queue, args, *rest: given_up.append((queue, args))
    )
    runtime = SimpleNamespace(
        redis=None,
        settings=SimpleNamespace(max_deliveries=max_deliveries),
        items=None,
        key=lambda *parts: ":".join(map(str, parts)),
    )
    guard = crash_loop.CrashLoopGuard(runtime)  # type: ignore[arg-type]
    broker = broker_for(vhost, max_deliveries=max_deliveries)
    publisher = ConfirmedPublisher(broker)
    counts, skipped = [], []
    try:
        publisher.publish([item_message(QUEUE, 7, 70)])
        while True:
            consumer = broker.consume(QUEUE, prefetch=1, timeout=100)
            received = receive(consumer, 1, timeout=3)
            if received:
                message = received[0]
                counts.append(message.delivery_count)
                try:
                    guard.before_process_message(broker, message)
                    guard.after_process_message(broker, message)
                except SkipMessage:
                    skipped.append(message.delivery_count)
            consumer.close()  # unacked: back to the queue, one more delivery counted
            if not received:
                break
        depths = vhost.queues.stats([QUEUE, f"{QUEUE}.XQ"])
    finally:
        publisher.close()
        broker.close()
    # Delivered MAX_DELIVERIES + 1 times (x-delivery-limit = MAX_DELIVERIES),
    # then dead-lettered by RabbitMQ itself.
    assert counts == [None, 1, 2, 3]
    assert skipped == [3]
    assert given_up == [(QUEUE, (7, 70))]
    assert depths[QUEUE][0] == 0
    assert depths[f"{QUEUE}.XQ"][0] == 1


@pytest.mark.parametrize(("first", "then"), [("classic", "quorum"), ("quorum", "classic")])
def test_a_process_with_another_queue_type_is_told_how_to_fix_it(vhost, first, then):
    broker = broker_for(vhost, first)
    try:
        broker.declare_queue(QUEUE, ensure=True)
    finally:
        broker.close()
    other = broker_for(vhost, then)
    try:
        with pytest.raises(QueueArgumentsMismatch) as raised:
            other.declare_queue(QUEUE, ensure=True)
        # The broker is still usable for the queues that do match.
        other.declare_queue("resend_invitation", ensure=True)
    finally:
        other.close()
    message = str(raised.value)
    assert f"QUEUE_TYPE={then}" in message
    assert "inequivalent arg" in message  # RabbitMQ names the first argument that differs
    assert "Moving to quorum queues" in message
    assert declared(vhost)[QUEUE][0] == first
