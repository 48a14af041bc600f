"""The workers' RabbitMQ broker (workers/broker.py) against RabbitMQ: its
consumer acks every message it is given and dead-letters an undecodable one
after PoisonMessages has seen it; in the running workers, such a message
naming an item fails the item. Unit checks with recorders instead of pika:
tests/unit/test_worker_consumer.py."""

from __future__ import annotations

import json
import time

import pika.channel
from sqlalchemy import func, select, update

from producer.schemas import BatchRequest
from producer.submit import submit
from shared.actions import Actor
from shared.broker import build_broker
from shared.dispatch import item_message
from shared.models import Batch, BatchItem
from shared.publish import underlying_channel
from shared.settings import Settings
from shared.signing import signature
from tests.support.factories import learner_ids
from tests.support.services import RabbitVhost
from workers.broker import WorkerBroker
from workers.poison import PoisonMessages

QUEUE = "deactivate_learner"


def undecodable(message) -> bytes:
    """A message from a newer producer: a field this worker's Dramatiq lacks."""
    return json.dumps({**message.asdict(), "schema": 2}).encode()


def test_the_worker_consumer_acks_its_messages_and_dead_letters_an_undecodable_one(monkeypatch):
    seen: list[bytes] = []
    monkeypatch.setattr(
        PoisonMessages, "malformed", lambda self, broker, queue, body: seen.append(body)
    )
    vhost = RabbitVhost()
    settings = Settings(broker_url=vhost.url, signing_key="k" * 32)
    broker = build_broker(settings, rabbitmq_class=WorkerBroker)
    broker.add_middleware(PoisonMessages(items=None))
    try:
        # pika's asynchronous channel under a blocking one (`_impl`, pika 1.x).
        assert isinstance(underlying_channel(broker.channel), pika.channel.Channel)
        for learner_id in (2, 3):
            broker.enqueue(item_message(QUEUE, 1, learner_id))
        poison = undecodable(item_message(QUEUE, 1, 4))
        vhost.queues.publish_raw(QUEUE, poison)

        consumer = broker.consume(QUEUE, prefetch=10, timeout=100)
        received, deadline = [], time.monotonic() + 30
        while len(received) < 2 or not seen:
            assert time.monotonic() < deadline, f"received {len(received)}, seen {len(seen)}"
            message = next(consumer)
            if message is not None:
                received.append(message)
        for message in received:
            consumer.ack(message)
        consumer.close()  # an unacked message would be ready again now

        assert sorted(m.args[1] for m in received) == [2, 3]
        assert seen == [poison]
        stats = vhost.queues.stats([QUEUE, f"{QUEUE}.XQ"])
        assert stats[QUEUE][0] == 0
        assert stats[f"{QUEUE}.XQ"][0] == 1
    finally:
        broker.close()
        vhost.delete()


def test_an_undecodable_signed_message_fails_the_item_it_names(stack, session, school):
    learner = learner_ids(session, school.school_id)[7]
    request = BatchRequest.model_validate(
        {"action": QUEUE, "selection": {"learner_ids": [learner]}}
    )
    batch_id = submit(session, Actor(school.school_id, school.admin_id), request).batch.id
    # Dispatched already, in the batch's own transaction: the producer sends
    # nothing, so the poison message is the item's only message.
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(dispatch_cursor=learner, dispatched_at=func.now())
    )
    session.commit()
    message = item_message(QUEUE, batch_id, learner)
    message.options["signature"] = signature(stack.env["SIGNING_KEY"], message)
    stack.vhost.queues.publish_raw(QUEUE, undecodable(message))

    item = select(BatchItem.outcome, BatchItem.error).where(
        BatchItem.batch_id == batch_id, BatchItem.learner_id == learner
    )
    deadline = time.monotonic() + 30
    while (row := session.execute(item).one()).outcome == "pending":
        assert time.monotonic() < deadline, "the item is still pending"
        session.rollback()
        time.sleep(0.2)
    assert tuple(row) == ("failed", "malformed message")
