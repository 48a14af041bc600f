"""An operator replays dead letters once the cause is fixed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta

import pika
from sqlalchemy import func, select, text, update

from batchctl.seed import seed_school
from producer.schemas import BatchRequest
from producer.submit import submit
from shared.actions import Actor
from shared.dispatch import item_message
from shared.models import Batch, BatchItem, Group, GroupMembership, Learner
from shared.signing import signature
from tests.support.factories import learner_ids
from tests.support.services import wait_until


def batchctl(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchctl", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dead_letters_are_listed_and_replayed_after_the_cause_is_fixed(stack, session):
    seeded = seed_school(session, learners=50, groups=1, courses=1, name="Dead Letters")
    session.commit()
    group_id = session.scalar(select(Group.id).where(Group.school_id == seeded.school_id))
    ids = learner_ids(session, seeded.school_id)
    # Not a member already: seed_school makes every learner with id % 3 == 0 one.
    doomed = next(i for i in ids[3:] if i % 3)
    session.execute(
        text(f"""
        CREATE OR REPLACE FUNCTION refuse_dlq() RETURNS trigger AS $$
        BEGIN
          IF NEW.learner_id = {doomed} THEN RAISE EXCEPTION 'no' USING ERRCODE = 'P0001'; END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER refuse_dlq BEFORE INSERT ON group_memberships
          FOR EACH ROW EXECUTE FUNCTION refuse_dlq();
    """)
    )
    session.commit()
    batchctl(stack, "dlq", "purge", "--queue", "add_to_group", "--yes")
    try:
        with stack.client(seeded.token) as client:
            batch = client.submit("add_to_group", {"learner_ids": ids}, {"group_ids": [group_id]})
            final = client.wait(batch["id"], timeout=60)
        assert final["counts"]["failed"] == 1
        wait_until(
            lambda: stack.vhost.queue_depths().get("add_to_group.XQ") == 1, 30, "one dead letter"
        )

        listed = batchctl(stack, "dlq", "list", "--queue", "add_to_group")
        assert listed.returncode == 0, listed.stderr
        assert "add_to_group.XQ: 1" in listed.stderr
        letter = json.loads(listed.stdout.splitlines()[0])
        assert letter["args"] == [batch["id"], doomed] and letter["actor"] == "add_to_group"

        dry = batchctl(stack, "dlq", "replay", "--queue", "add_to_group", "--dry-run")
        assert "would replay 1" in dry.stderr
        assert stack.vhost.queue_depths().get("add_to_group.XQ") == 1
    finally:
        session.execute(text("DROP TRIGGER refuse_dlq ON group_memberships"))
        session.commit()

    replayed = batchctl(stack, "dlq", "replay", "--queue", "add_to_group")
    assert "replayed 1 (items reopened: 1)" in replayed.stderr, replayed.stderr

    with stack.client(seeded.token) as client:
        again = client.wait(batch["id"], timeout=60)
    assert again["status"] == "completed"
    assert again["counts"]["failed"] == 0
    assert again["counts"]["applied"] + again["counts"]["skipped"] == len(ids)
    assert (
        session.scalar(
            select(func.count()).where(
                GroupMembership.group_id == group_id, GroupMembership.learner_id == doomed
            )
        )
        == 1
    )
    assert (
        session.scalar(
            select(BatchItem.outcome).where(
                BatchItem.batch_id == batch["id"], BatchItem.learner_id == doomed
            )
        )
        == "applied"
    )
    assert stack.vhost.queue_depths().get("add_to_group.XQ", 0) == 0
    purged = batchctl(stack, "dlq", "purge", "--dry-run")
    assert purged.returncode == 0 and "would drop 0" in purged.stderr


def test_forged_dead_letters_are_listed_as_such_and_never_replayed(stack, session):
    """Replay signs what it publishes: a message the workers rejected as
    unsigned or forged must not become valid by being replayed."""
    seeded = seed_school(session, learners=10, groups=1, courses=1, name="Forged Letters")
    victims = learner_ids(session, seeded.school_id)[:2]
    request = BatchRequest.model_validate(
        {"action": "deactivate_learner", "selection": {"learner_ids": victims}}
    )
    batch = submit(session, Actor(seeded.school_id, seeded.admin_id), request).batch
    # As far as dispatch knows, already published: only our messages reach the items.
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id)
        .values(dispatch_cursor=max(victims), dispatched_at=batch.created_at + timedelta(days=1))
    )
    session.commit()
    batchctl(stack, "dlq", "purge", "--queue", "deactivate_learner", "--yes")

    unsigned = item_message("deactivate_learner", batch.id, victims[0])
    forged = item_message("deactivate_learner", batch.id, victims[1])
    forged.options["signature"] = signature("an attacker's key " + "x" * 32, forged)
    connection = pika.BlockingConnection(pika.URLParameters(stack.vhost.url))
    channel = connection.channel()
    channel.confirm_delivery()
    for message in (unsigned, forged):
        channel.basic_publish("", "deactivate_learner", message.encode())
    connection.close()
    wait_until(
        lambda: stack.vhost.queue_depths().get("deactivate_learner.XQ") == 2, 30, "two dead letters"
    )

    listed = batchctl(stack, "dlq", "list", "--queue", "deactivate_learner")
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(letter["signature"] for letter in letters) == ["bad_signature", "unsigned"]
    assert not any(letter["replayable"] for letter in letters)

    replayed = batchctl(stack, "dlq", "replay", "--queue", "deactivate_learner")
    assert "replayed 0" in replayed.stderr, replayed.stderr
    assert "refused (unsigned or forged) 2" in replayed.stderr, replayed.stderr
    time.sleep(2)
    assert stack.vhost.queue_depths().get("deactivate_learner.XQ") == 2
    session.expire_all()
    statuses = set(session.scalars(select(Learner.status).where(Learner.id.in_(victims))))
    assert "deactivated" not in statuses
    outcomes = session.scalars(select(BatchItem.outcome).where(BatchItem.batch_id == batch.id))
    assert set(outcomes) == {"pending"}
    batchctl(stack, "dlq", "purge", "--queue", "deactivate_learner", "--yes")
