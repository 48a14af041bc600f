"""Workers act only on messages signed with the signing key."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import dramatiq
import httpx
import pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from batchctl.seed import seed_school
from producer.schemas import BatchRequest
from producer.submit import submit
from shared.actions import Actor
from shared.broker import SMALL_BATCH_PRIORITY
from shared.dispatch import item_message
from shared.models import Batch, BatchItem, Learner
from shared.publish import ConfirmedPublisher
from shared.signing import SignMessages, signature, verify
from tests.support.factories import learner_ids


def bare_broker(stack) -> RabbitmqBroker:
    """A broker without our signing middleware (an outsider's publisher); its
    queues must be declared as ours are, priority included."""
    return RabbitmqBroker(url=stack.vhost.url, max_priority=SMALL_BATCH_PRIORITY)


def test_signatures_cover_the_message_and_accept_the_previous_key():
    message = item_message("deactivate_learner", 1, 2)
    message.options["signature"] = signature("new", message)
    assert verify(["new", "old"], message) is None
    tampered = message.copy(args=(1, 3))
    assert verify(["new", "old"], tampered) == "bad_signature"
    assert verify(["other"], message) == "bad_signature"
    assert verify(["new"], item_message("deactivate_learner", 1, 2)) == "unsigned"
    old = item_message("deactivate_learner", 1, 2)
    old.options["signature"] = signature("old", old)
    assert verify(["new", "old"], old) is None


def rejected(stack) -> float:
    url = f"http://127.0.0.1:{stack.env['METRICS_PORT']}/metrics"
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name == "batch_messages_rejected_total":
                total += sample.value
    return total


@pytest.fixture
def parked_batch(session):
    """A running batch whose items are pending but, as far as dispatch knows,
    already published: only the messages this test sends will reach them."""
    seeded = seed_school(session, learners=10, groups=1, courses=1, name="Signed School")
    victims = learner_ids(session, seeded.school_id)[:3]
    request = BatchRequest.model_validate(
        {"action": "deactivate_learner", "selection": {"learner_ids": victims}}
    )
    batch = submit(session, Actor(seeded.school_id, seeded.admin_id), request).batch
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id)
        .values(dispatch_cursor=max(victims), dispatched_at=batch.created_at + timedelta(days=1))
    )
    session.commit()
    return batch.id, victims


def publish(broker, messages):
    publisher = ConfirmedPublisher(broker)
    publisher.publish(messages)
    publisher.close()
    broker.close()


def test_unsigned_and_tampered_messages_are_dead_lettered_and_change_nothing(
    stack, session, parked_batch
):
    batch_id, (first, second, third) = parked_batch
    dead_before = stack.vhost.queue_depths().get("deactivate_learner.XQ", 0)
    rejected_before = rejected(stack)

    publish(bare_broker(stack), [item_message("deactivate_learner", batch_id, first)])
    signed = item_message("deactivate_learner", batch_id, second)
    signed.options["signature"] = signature(stack.env["SIGNING_KEY"], signed)
    forged = dramatiq.Message(**{**signed._asdict(), "args": (batch_id, third)})
    publish(bare_broker(stack), [forged])

    deadline = time.monotonic() + 30
    while stack.vhost.queue_depths().get("deactivate_learner.XQ", 0) < dead_before + 2:
        assert time.monotonic() < deadline, "forged messages did not reach the dead letters"
        time.sleep(0.2)
    assert rejected(stack) - rejected_before == 2
    statuses = set(session.scalars(select(Learner.status).where(Learner.id.in_([first, third]))))
    assert "deactivated" not in statuses
    pending = session.scalar(
        select(func.count()).where(BatchItem.batch_id == batch_id, BatchItem.outcome == "pending")
    )
    assert pending == 3


def test_a_message_signed_with_the_previous_key_is_still_accepted(stack, session, parked_batch):
    batch_id, (first, _, _) = parked_batch
    message = item_message("deactivate_learner", batch_id, first)
    broker = bare_broker(stack)
    broker.add_middleware(SignMessages(stack.env["SIGNING_KEY_PREVIOUS"]))
    publish(broker, [message])
    deadline = time.monotonic() + 30
    while True:
        session.expire_all()
        outcome = session.scalar(
            select(BatchItem.outcome).where(
                BatchItem.batch_id == batch_id, BatchItem.learner_id == first
            )
        )
        if outcome != "pending" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert outcome == "applied"
    assert session.scalar(select(Learner.status).where(Learner.id == first)) == "deactivated"


def publish_raw(stack, queue: str, messages: list[dramatiq.Message]) -> None:
    """Straight onto a queue, as anyone with broker credentials can."""
    connection = pika.BlockingConnection(pika.URLParameters(stack.vhost.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for message in messages:
            channel.basic_publish(
                "", queue, message.encode(), pika.BasicProperties(delivery_mode=2)
            )
    finally:
        connection.close()


def signed_message(stack, batch_id: int, learner_id: int, **fields) -> dramatiq.Message:
    message = dramatiq.Message(
        **{**item_message("deactivate_learner", batch_id, learner_id)._asdict(), **fields}
    )
    message.options["signature"] = signature(stack.env["SIGNING_KEY"], message)
    return message


def wait_rejected(stack, before: float, n: int) -> None:
    deadline = time.monotonic() + 30
    while rejected(stack) - before < n:
        assert time.monotonic() < deadline, f"{n} messages were not rejected"
        time.sleep(0.2)


def untouched(session, batch_id: int, learners: list[int]) -> bool:
    session.expire_all()
    statuses = set(session.scalars(select(Learner.status).where(Learner.id.in_(learners))))
    outcomes = set(
        session.scalars(
            select(BatchItem.outcome).where(
                BatchItem.batch_id == batch_id, BatchItem.learner_id.in_(learners)
            )
        )
    )
    return "deactivated" not in statuses and outcomes == {"pending"}


def test_options_changed_after_signing_are_rejected(stack, session, parked_batch):
    """Retry counts, time limits and delays change what a worker does, so a
    signed message whose options were changed is a forgery."""
    batch_id, (first, second, _) = parked_batch
    before = rejected(stack)
    more_time = signed_message(stack, batch_id, first)
    more_time.options["time_limit"] = 3_600_000
    delayed = signed_message(stack, batch_id, second)
    delayed.options["eta"] = int(time.time() * 1000)
    publish_raw(stack, "deactivate_learner", [more_time, delayed])
    wait_rejected(stack, before, 2)
    time.sleep(1)
    assert untouched(session, batch_id, [first, second]), debug_state(session, batch_id)


def test_the_delay_queue_does_not_launder_unsigned_messages(stack, session, parked_batch):
    """A worker re-enqueues, and so re-signs, a delayed message when it is
    due; an unsigned one put on the delay queue must not come out signed."""
    batch_id, (first, _, _) = parked_batch
    before = rejected(stack)
    unsigned = item_message("deactivate_learner", batch_id, first)
    unsigned.options["eta"] = int(time.time() * 1000)
    publish_raw(stack, "deactivate_learner.DQ", [unsigned])
    wait_rejected(stack, before, 1)
    time.sleep(1.5)
    assert untouched(session, batch_id, [first])


def test_a_signed_message_older_than_the_maximum_age_is_rejected(stack, session, parked_batch):
    batch_id, (first, second, _) = parked_batch
    before = rejected(stack)
    two_hours_ago = int(time.time() * 1000) - 2 * 3600 * 1000
    publish_raw(
        stack,
        "deactivate_learner",
        [signed_message(stack, batch_id, first, message_timestamp=two_hours_ago)],
    )
    wait_rejected(stack, before, 1)
    # A fresh, correctly signed message for the next learner still works.
    publish_raw(stack, "deactivate_learner", [signed_message(stack, batch_id, second)])
    deadline = time.monotonic() + 30
    while session.scalar(select(Learner.status).where(Learner.id == second)) != "deactivated":
        assert time.monotonic() < deadline, "a fresh signed message was not applied"
        time.sleep(0.2)
        session.expire_all()
    assert untouched(session, batch_id, [first])


def debug_state(session, batch_id):
    return session.execute(
        select(BatchItem.learner_id, BatchItem.outcome, BatchItem.error).where(
            BatchItem.batch_id == batch_id
        )
    ).all()


def test_every_process_that_uses_rabbitmq_refuses_to_start_without_a_key(stack):
    """Producer, worker, reconciler and `dlq` all read the same settings."""
    for key in ("", "short"):
        env = {**stack.env, "SIGNING_KEY": key, "SIGNING_KEY_PREVIOUS": "", "COLUMNS": "400"}
        for args in (
            ["serve", "--port", "0"],
            ["worker", "--processes", "1"],
            ["reconcile", "--once"],
            ["dlq", "list"],
        ):
            started = subprocess.run(
                [sys.executable, "-m", "batchctl", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            output = started.stdout + started.stderr
            assert started.returncode != 0, args
            assert "SIGNING_KEY" in output and "openssl rand -hex 32" in output, args
