"""An operator replays dead letters once the cause is fixed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from sqlalchemy import func, select, text

from batchctl.seed import seed_school
from shared.models import BatchItem, Group, GroupMembership
from tests.support.factories import learner_ids


def batchctl(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchctl", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


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
        wait_until(lambda: stack.vhost.queue_depths().get("add_to_group.XQ") == 1)

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
