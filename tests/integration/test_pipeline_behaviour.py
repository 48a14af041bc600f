"""What upstream services and admins rely on: duplicates have one effect,
retries create no second batch, dry runs change nothing, small batches are not
stuck behind big ones, cancel stops the rest, bad input gets a clear error."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import func, select

from batch_actions_client import ApiError
from batchctl.seed import seed_school
from shared.dispatch import item_message
from shared.models import (
    AuditEntry,
    Batch,
    BatchItem,
    Course,
    CourseEnrollment,
    Group,
    GroupMembership,
    Learner,
)
from shared.publish import ConfirmedPublisher
from tests.support.factories import learner_ids
from tests.support.services import wait_until


@pytest.fixture
def school(session):
    seeded = seed_school(session, learners=1500, groups=3, courses=4, name="Behaviour School")
    session.commit()
    return seeded


@pytest.fixture
def other_school(session):
    seeded = seed_school(session, learners=20, groups=1, courses=1, name="Other School")
    session.commit()
    return seeded


def first(session, model, school_id) -> int:
    return session.scalar(select(model.id).where(model.school_id == school_id).order_by(model.id))


def drain(stack, queue: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while stack.vhost.queue_depths().get(queue, 0) and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(0.5)


def test_the_same_message_delivered_twice_has_one_effect(stack, session, school):
    group_id = first(session, Group, school.school_id)
    chosen = learner_ids(session, school.school_id)[:500]
    with stack.client(school.token) as client:
        batch = client.submit("add_to_group", {"learner_ids": chosen}, {"group_ids": [group_id]})
        final = client.wait(batch["id"], timeout=120)

    broker = stack.broker()
    publisher = ConfirmedPublisher(broker)
    publisher.publish([item_message("add_to_group", batch["id"], lid) for lid in chosen] * 2)
    publisher.close()
    broker.close()
    drain(stack, "add_to_group")

    with stack.client(school.token) as client:
        again = client.batch(batch["id"])
    assert again["counts"] == final["counts"]
    audit = session.scalar(
        select(func.count()).where(
            AuditEntry.batch_id == batch["id"], AuditEntry.learner_id.is_not(None)
        )
    )
    assert audit == len(chosen)
    attempts = session.scalar(
        select(func.max(BatchItem.attempts)).where(BatchItem.batch_id == batch["id"])
    )
    assert attempts == 1
    members = session.scalar(
        select(func.count()).where(
            GroupMembership.group_id == group_id, GroupMembership.learner_id.in_(chosen)
        )
    )
    assert members == len(chosen)


def test_an_idempotency_key_retry_creates_no_second_batch(stack, session, school):
    chosen = learner_ids(session, school.school_id)[:10]
    course = first(session, Course, school.school_id)
    with stack.client(school.token) as client:
        one = client.submit(
            "add_to_course",
            {"learner_ids": chosen},
            {"course_ids": [course]},
            idempotency_key="retry-me",
        )
        two = client.submit(
            "add_to_course",
            {"learner_ids": chosen},
            {"course_ids": [course]},
            idempotency_key="retry-me",
        )
        with pytest.raises(ApiError) as conflict:
            client.submit(
                "add_to_course",
                {"learner_ids": chosen[:5]},
                {"course_ids": [course]},
                idempotency_key="retry-me",
            )
    assert one["id"] == two["id"]
    assert conflict.value.status == 409 and "Idempotency-Key" in str(conflict.value.detail)
    assert session.scalar(select(func.count()).where(Batch.school_id == school.school_id)) == 1


def test_dry_run_changes_nothing_and_predicts_the_real_outcomes(stack, session, school):
    group_id = first(session, Group, school.school_id)
    selection = {"filter": {"status": ["active", "invited"]}, "exclude_ids": []}
    members_before = session.scalar(
        select(func.count()).where(GroupMembership.group_id == group_id)
    )
    with stack.client(school.token) as client:
        predicted = client.submit(
            "add_to_group", selection, {"group_ids": [group_id]}, dry_run=True
        )
        assert session.scalar(select(func.count()).where(Batch.school_id == school.school_id)) == 0
        assert (
            session.scalar(select(func.count()).where(GroupMembership.group_id == group_id))
            == members_before
        )
        real = client.wait(
            client.submit("add_to_group", selection, {"group_ids": [group_id]})["id"], timeout=120
        )
        chosen = learner_ids(session, school.school_id)[:300] + [school.admin_id]
        predicted_delete = client.submit("delete_learner", {"learner_ids": chosen}, dry_run=True)
        real_delete = client.wait(
            client.submit("delete_learner", {"learner_ids": chosen})["id"], timeout=120
        )
    assert predicted["dry_run"] is True
    assert predicted["total"] == real["total"]
    for key in ("applied", "skipped", "failed", "reasons"):
        assert predicted["counts"][key] == real["counts"][key]
        assert predicted_delete["counts"][key] == real_delete["counts"][key]
    assert real_delete["counts"]["reasons"] == {"self": 1}


def test_a_small_batch_finishes_while_a_large_batch_runs_and_cancel_stops_the_rest(stack, session):
    big_school = seed_school(session, learners=12000, groups=1, courses=1, name="Big School")
    big_course, small_course = (
        Course(school_id=big_school.school_id, title="Big"),
        Course(school_id=big_school.school_id, title="Small"),
    )
    session.add_all([big_course, small_course])
    session.commit()
    everyone = learner_ids(session, big_school.school_id) + [big_school.admin_id]
    with stack.client(big_school.token) as client:
        big = client.submit(
            "add_to_course",
            {"filter": {"status": ["active", "invited"]}},
            {"course_ids": [big_course.id]},
        )
        time.sleep(1.0)
        started = time.monotonic()
        small = client.submit(
            "add_to_course", {"learner_ids": everyone[-10:]}, {"course_ids": [small_course.id]}
        )
        small_final = client.wait(small["id"], timeout=60, poll=0.1)
        small_seconds = time.monotonic() - started
        big_then = client.batch(big["id"])
        cancelled = client.cancel(big["id"])
        big_final = client.wait(big["id"], timeout=120)
        with pytest.raises(ApiError) as again:
            client.cancel(big["id"])

    assert small_final["status"] == "completed" and small_final["counts"]["applied"] == 10
    assert big_then["status"] == "running", "the big batch should still be running"
    assert small_seconds < 10, f"small batch took {small_seconds:.1f}s behind the big one"
    assert cancelled["status"] in ("cancelling", "cancelled")
    assert again.value.status == 409
    counts = big_final["counts"]
    assert big_final["status"] == "cancelled"
    assert counts["cancelled"] > 0 and counts["applied"] > 0 and counts["pending"] == 0
    assert counts["applied"] + counts["cancelled"] == big_final["total"] == len(everyone)

    def items(outcome):
        return set(
            session.scalars(
                select(BatchItem.learner_id).where(
                    BatchItem.batch_id == big["id"], BatchItem.outcome == outcome
                )
            )
        )

    enrolled = set(
        session.scalars(
            select(CourseEnrollment.learner_id).where(CourseEnrollment.course_id == big_course.id)
        )
    )
    assert enrolled == items("applied"), "what was applied stays applied, nothing else"
    assert not enrolled & items("cancelled")


def test_self_protection_and_foreign_ids_through_the_api(stack, session, school, other_school):
    foreign = learner_ids(session, other_school.school_id)[:5]
    mine = learner_ids(session, school.school_id)[:5]
    with stack.client(school.token) as client:
        batch = client.submit(
            "deactivate_learner", {"learner_ids": mine + foreign + [school.admin_id]}
        )
        final = client.wait(batch["id"], timeout=60)
        not_found = {i["learner_id"] for i in client.items(batch["id"], reason="not_found")}
        with pytest.raises(ApiError) as access:
            client.access(foreign[0])
    with stack.client(other_school.token) as intruder:
        with pytest.raises(ApiError) as peek:
            intruder.batch(batch["id"])
        with pytest.raises(ApiError) as cancel:
            intruder.cancel(batch["id"])
    assert final["counts"]["applied"] == 5
    assert final["counts"]["reasons"] == {"not_found": 5, "self": 1}
    assert not_found == set(foreign)
    assert access.value.status == peek.value.status == cancel.value.status == 404
    statuses = set(session.scalars(select(Learner.status).where(Learner.id.in_(foreign))))
    assert "deactivated" not in statuses
    assert session.scalar(select(Learner.status).where(Learner.id == school.admin_id)) == "active"


def post(stack, token, body, headers=None):
    return httpx.post(
        f"{stack.base_url}/v1/batches",
        json=body,
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
        timeout=60,
    )


def field_of(response) -> str:
    return ".".join(str(p) for p in response.json()["detail"][0]["loc"][1:])


def test_bad_requests_get_clear_errors_naming_the_field(stack, session, school, other_school):
    foreign_group = first(session, Group, other_school.school_id)
    mine = learner_ids(session, school.school_id)[:3]
    token = school.token

    unknown_action = post(stack, token, {"action": "promote", "selection": {"learner_ids": mine}})
    assert unknown_action.status_code == 422 and field_of(unknown_action) == "action"

    foreign = post(
        stack,
        token,
        {
            "action": "add_to_group",
            "params": {"group_ids": [foreign_group]},
            "selection": {"learner_ids": mine},
        },
    )
    assert foreign.status_code == 422 and field_of(foreign) == "params.group_ids"
    assert "no such group" in foreign.json()["detail"][0]["msg"]

    missing = post(stack, token, {"action": "add_to_course", "selection": {"learner_ids": mine}})
    assert missing.status_code == 422 and field_of(missing) == "params.course_ids"

    empty = post(stack, token, {"action": "deactivate_learner", "selection": {"learner_ids": []}})
    assert empty.status_code == 422 and field_of(empty) == "selection.learner_ids.learner_ids"

    malformed = post(
        stack, token, {"action": "deactivate_learner", "selection": {"learner_ids": [1, "abc"]}}
    )
    assert malformed.status_code == 422
    assert field_of(malformed) == "selection.learner_ids.learner_ids.1"

    nobody = post(
        stack,
        token,
        {
            "action": "deactivate_learner",
            "selection": {"filter": {"q": "no-such-person-anywhere"}},
            "expected_total": 0,
        },
    )
    assert nobody.status_code == 422 and field_of(nobody) == "selection"

    unknown_shape = post(stack, token, {"action": "deactivate_learner", "selection": {"ids": [1]}})
    assert unknown_shape.status_code == 422 and "selection must be" in unknown_shape.text

    too_many = post(
        stack,
        token,
        {"action": "deactivate_learner", "selection": {"learner_ids": list(range(1, 100_002))}},
    )
    assert too_many.status_code == 413 and "filter" in too_many.json()["detail"]

    assert post(stack, "not-a-token", {"action": "x"}).status_code == 401
    assert (
        httpx.get(
            f"{stack.base_url}/v1/batches/999999999", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 404
    )
    assert session.scalar(select(func.count()).where(Batch.school_id == school.school_id)) == 0


def test_a_learner_whose_step_fails_permanently_ends_failed_and_dead_lettered(
    stack, session, school
):
    """A database trigger makes one learner's membership insert raise; that
    learner ends `failed` with the SQLSTATE, the message is dead-lettered,
    and every other learner is applied."""
    from sqlalchemy import text

    chosen = learner_ids(session, school.school_id)[:200]
    doomed = chosen[17]
    group_id = first(session, Group, school.school_id)
    session.execute(
        text(f"""
        CREATE OR REPLACE FUNCTION refuse_{doomed}() RETURNS trigger AS $$
        BEGIN
          IF NEW.learner_id = {doomed} THEN RAISE EXCEPTION 'refused' USING ERRCODE = 'P0001';
          END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER refuse_{doomed} BEFORE INSERT ON group_memberships
          FOR EACH ROW EXECUTE FUNCTION refuse_{doomed}();
    """)
    )
    session.commit()
    dead_before = stack.vhost.queue_depths().get("add_to_group.XQ", 0)
    try:
        with stack.client(school.token) as client:
            batch = client.submit(
                "add_to_group", {"learner_ids": chosen}, {"group_ids": [group_id]}
            )
            final = client.wait(batch["id"], timeout=60)
            failed = list(client.items(batch["id"], outcome="failed"))
    finally:
        session.execute(text(f"DROP TRIGGER refuse_{doomed} ON group_memberships"))
        session.commit()
    assert final["status"] == "completed"
    assert final["counts"]["failed"] == 1
    assert final["counts"]["applied"] + final["counts"]["skipped"] == len(chosen) - 1
    assert [i["learner_id"] for i in failed] == [doomed]
    assert failed[0]["error"].endswith("Error (P0001)")  # the SQLSTATE, never row values
    wait_until(
        lambda: stack.vhost.queue_depths().get("add_to_group.XQ", 0) != dead_before,
        10,
        "the failed message in the dead letters",
    )
