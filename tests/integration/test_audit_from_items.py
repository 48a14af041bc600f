"""Per-learner audit rows are copied from the finished items (#16), on
PostgreSQL: what an auditor reads must be what happened, once per learner,
however the copy is cut up.

- a copy stops at the first item still pending, so a learner finished later
  is never skipped, and nothing is copied twice;
- the whole pipeline: after a batch completes, every finished learner has
  exactly one row, cancelled items and ids unknown at submit have none;
- an invitation whose email fails after its row was copied gets a second row
  `failed`; one that fails before is copied as `failed` only.
"""

from __future__ import annotations

from sqlalchemy import select

from shared import audit
from shared.audit import record_finished_items
from shared.contract import Action
from shared.models import AuditEntry, BatchItem
from shared.progress import NoProgress
from shared.runtime import current
from tests.support.factories import learner_ids, make_group
from tests.support.parked import park_batch
from workers.items import Items
from workers.mail import fail_applied_item


def trail(session, batch_id: int) -> list[tuple[int, str]]:
    session.rollback()
    return [
        (row.learner_id, row.outcome)
        for row in session.execute(
            select(AuditEntry.learner_id, AuditEntry.outcome)
            .where(AuditEntry.batch_id == batch_id, AuditEntry.learner_id.is_not(None))
            .order_by(AuditEntry.id)
        )
    ]


def copy(session, batch_id: int, until_done: bool = False) -> int:
    session.rollback()
    with session.begin():
        return record_finished_items(session, batch_id, until_done=until_done)


def test_a_copy_stops_at_the_first_pending_learner_and_never_copies_twice(
    session, school, monkeypatch
):
    # The integration stack's dispatch loop may copy this running batch too
    # (it copies every running batch), so the test checks the trail, which
    # is the same whoever copies, and the chunk size only as an upper bound.
    group_id, _, _ = make_group(session, school.school_id)
    ids = sorted(learner_ids(session, school.school_id, status="active"))[:6]
    batch_id = park_batch(
        session, school.school_id, school.admin_id, "add_to_group", ids, group_ids=[group_id]
    )
    session.commit()
    items = Items(current())

    for learner_id in (ids[0], ids[1], ids[3], ids[5]):  # ids[2] and ids[4] still pending
        items.process(batch_id, learner_id)
    copy(session, batch_id)
    assert trail(session, batch_id) == [(ids[0], "applied"), (ids[1], "applied")]
    assert copy(session, batch_id, until_done=True) == 0

    items.process(batch_id, ids[2])
    monkeypatch.setattr(audit, "AUDIT_CHUNK", 1)
    assert copy(session, batch_id) <= 1  # one chunk per call
    copy(session, batch_id)
    assert trail(session, batch_id)[2:] == [(ids[2], "applied"), (ids[3], "applied")]

    items.process(batch_id, ids[4])
    copy(session, batch_id, until_done=True)
    assert [lid for lid, _ in trail(session, batch_id)] == ids
    assert copy(session, batch_id, until_done=True) == 0


def test_after_a_batch_completes_each_finished_learner_has_exactly_one_row(stack, session, school):
    group_id, _, _ = make_group(session, school.school_id)
    session.commit()
    ids = learner_ids(session, school.school_id)[:40]
    unknown = max(ids) + 10_000_000
    with stack.client(school.token) as client:
        batch = client.submit(
            Action.ADD_TO_GROUP.value, {"learner_ids": [*ids, unknown]}, {"group_ids": [group_id]}
        )
        done = client.wait(batch["id"], timeout=120)
        rows = list(client.audit(batch_id=batch["id"]))

    per_learner = [r for r in rows if r["learner_id"] is not None]
    assert sorted(r["learner_id"] for r in per_learner) == sorted(ids)
    by_outcome: dict[str, int] = {}
    for row in per_learner:
        assert row["action"] == "add_to_group" and row["actor_id"] == school.admin_id
        by_outcome[row["outcome"]] = by_outcome.get(row["outcome"], 0) + 1
    assert by_outcome.get("applied", 0) == done["counts"]["applied"]
    assert by_outcome.get("skipped", 0) == done["counts"]["skipped"] - 1  # the unknown id


def test_an_invitation_failing_after_its_row_was_copied_gets_a_second_row(session, school):
    ids = sorted(learner_ids(session, school.school_id, status="invited"))[:3]
    batch_id = park_batch(session, school.school_id, school.admin_id, "resend_invitation", ids)
    session.commit()
    items = Items(current())
    items.process(batch_id, ids[0])
    copy(session, batch_id)  # ids[1] is still pending
    items.process(batch_id, ids[1])  # ids[2] stays pending: the batch does not end

    for learner_id in ids[:2]:
        assert fail_applied_item(current().sessions, NoProgress(), batch_id, learner_id, "refused")
    copy(session, batch_id)

    assert trail(session, batch_id) == [
        (ids[0], "applied"),
        (ids[0], "failed"),
        (ids[1], "failed"),
    ]
    session.rollback()
    outcomes = session.scalars(
        select(BatchItem.outcome)
        .where(BatchItem.batch_id == batch_id)
        .order_by(BatchItem.learner_id)
    )
    assert list(outcomes) == ["failed", "failed", "pending"]
