"""Rails on destructive actions, and retrying what failed (issue #14 sections
3 and 5), as an admin or an upstream service meets them over HTTP and the
command line against the real producer and workers."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx
from sqlalchemy import insert, select, text

from batchctl.seed import seed_school
from shared.models import Course, CourseEnrollment
from tests.support.factories import learner_ids


def post(stack, token: str, path: str, body: dict | None = None, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}", **headers},
        timeout=30,
    )


def batch_ids(stack, token: str) -> list[int]:
    listed = httpx.get(
        f"{stack.base_url}/v1/batches",
        params={"limit": 500},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return [b["id"] for b in listed.json()["batches"]]


def batchctl(stack, token: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**stack.env, "BATCH_API_URL": stack.base_url, "BATCH_API_TOKEN": token, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "batchctl", *args],
        env=env,
        input=stdin,  # a pipe: no terminal to confirm on
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_filter_delete_needs_the_count_the_admin_confirmed(stack, session) -> None:
    seeded = seed_school(session, learners=40, groups=1, courses=1, name="Confirmed Deletes")
    session.commit()
    token = seeded.token
    body = {"action": "delete_learner", "selection": {"filter": {"status": ["invited"]}}}

    unconfirmed = post(stack, token, "/v1/batches", body)
    assert unconfirmed.status_code == 422, unconfirmed.text
    problem = unconfirmed.json()["detail"][0]
    assert problem["loc"] == ["body", "expected_total"]
    assert "dry run" in problem["msg"]

    dry = post(stack, token, "/v1/batches", {**body, "dry_run": True})
    total = dry.json()["total"]
    assert total == len(learner_ids(session, seeded.school_id, "invited")) > 0

    before = batch_ids(stack, token)
    stale = post(stack, token, "/v1/batches", {**body, "expected_total": total + 1})
    assert stale.status_code == 409, stale.text
    assert stale.json()["total"] == total and stale.json()["expected_total"] == total + 1
    assert f"{total:,} learners now" in stale.json()["detail"]
    assert batch_ids(stack, token) == before, "a refused delete created a batch"

    confirmed = post(stack, token, "/v1/batches", {**body, "expected_total": total})
    assert confirmed.status_code == 202, confirmed.text
    with stack.client(token) as client:
        done = client.wait(confirmed.json()["id"], timeout=120)
    assert done["status"] == "completed" and done["counts"]["applied"] == total


def test_explicit_ids_need_no_confirmed_count(stack, session) -> None:
    seeded = seed_school(session, learners=10, groups=1, courses=1, name="Explicit Deactivate")
    session.commit()
    chosen = learner_ids(session, seeded.school_id)[:3]
    body = {"action": "deactivate_learner", "selection": {"learner_ids": chosen}}
    assert post(stack, seeded.token, "/v1/batches", body).status_code == 202


def test_the_command_line_confirms_a_filter_deactivation_or_refuses_without_a_terminal(
    stack, session
) -> None:
    seeded = seed_school(session, learners=30, groups=1, courses=1, name="CLI Confirmations")
    session.commit()
    invited = len(learner_ids(session, seeded.school_id, "invited"))
    before = batch_ids(stack, seeded.token)

    refused = batchctl(stack, seeded.token, "submit", "deactivate_learner", "--status", "invited")
    assert refused.returncode == 2, refused.stderr
    assert f"on {invited:,} learners" in refused.stderr and "pass --yes" in refused.stderr
    assert batch_ids(stack, seeded.token) == before

    confirmed = batchctl(
        stack, seeded.token, "submit", "deactivate_learner", "--status", "invited", "--yes"
    )
    assert confirmed.returncode == 0, confirmed.stderr
    made = json.loads(confirmed.stdout.splitlines()[-1])
    with stack.client(seeded.token) as client:
        done = client.wait(made["id"], timeout=120)
    assert done["total"] == invited and done["counts"]["applied"] == invited


def refuse_enrollments(session, trigger: str, learners: list[int]) -> None:
    """The database refuses these learners' enrollments: their items fail
    (a permanent error) until the trigger is dropped."""
    listed = ", ".join(str(i) for i in learners)
    session.execute(
        text(f"""
        CREATE OR REPLACE FUNCTION {trigger}() RETURNS trigger AS $$
        BEGIN
          IF NEW.learner_id IN ({listed}) THEN RAISE EXCEPTION 'no' USING ERRCODE = 'P0001';
          END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER {trigger} BEFORE INSERT ON course_enrollments
          FOR EACH ROW EXECUTE FUNCTION {trigger}();
    """)
    )
    session.commit()


def test_failed_learners_are_retried_as_a_new_batch_linked_to_the_first(stack, session) -> None:
    seeded = seed_school(session, learners=20, groups=1, courses=1, name="Retries")
    course = session.scalar(
        insert(Course).values(school_id=seeded.school_id, title="New course").returning(Course.id)
    )
    session.commit()
    chosen = learner_ids(session, seeded.school_id)[:8]
    doomed = chosen[2:4]
    trigger = f"refuse_retry_{uuid.uuid4().hex[:8]}"
    refuse_enrollments(session, trigger, doomed)
    try:
        with stack.client(seeded.token) as client:
            first = client.submit(
                "add_to_course", {"learner_ids": chosen}, {"course_ids": [course]}
            )
            first = client.wait(first["id"], timeout=120)
    finally:
        session.execute(text(f"DROP TRIGGER {trigger} ON course_enrollments"))
        session.execute(text(f"DROP FUNCTION {trigger}()"))
        session.commit()
    assert first["counts"]["failed"] == len(doomed)

    key = {"Idempotency-Key": f"retry {first['id']}"}
    retried = post(stack, seeded.token, f"/v1/batches/{first['id']}/retry", **key)
    assert retried.status_code == 202, retried.text
    again = post(stack, seeded.token, f"/v1/batches/{first['id']}/retry", **key)
    assert again.json()["id"] == retried.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"

    with stack.client(seeded.token) as client:
        done = client.wait(retried.json()["id"], timeout=120)
        items = list(client.items(done["id"]))
    assert done["status"] == "completed" and done["retry_of"] == first["id"]
    assert done["action"] == "add_to_course" and done["params"] == {"course_ids": [course]}
    assert sorted(i["learner_id"] for i in items) == doomed
    assert done["counts"]["applied"] == len(doomed)
    enrolled = session.scalars(
        select(CourseEnrollment.learner_id).where(CourseEnrollment.course_id == course)
    )
    assert set(enrolled) == set(chosen)

    # Nothing failed in the retry: there is nothing more to retry.
    nothing = post(stack, seeded.token, f"/v1/batches/{done['id']}/retry")
    assert nothing.status_code == 409 and "no failed learners" in nothing.json()["detail"]
    stack_dead_letters_purged(stack)


def test_another_schools_batch_cannot_be_retried(stack, session) -> None:
    mine = seed_school(session, learners=5, groups=1, courses=1, name="Retry Mine")
    theirs = seed_school(session, learners=5, groups=1, courses=1, name="Retry Theirs")
    session.commit()
    with stack.client(theirs.token) as client:
        batch = client.submit(
            "deactivate_learner", {"learner_ids": learner_ids(session, theirs.school_id)[:2]}
        )
    answer = post(stack, mine.token, f"/v1/batches/{batch['id']}/retry")
    assert answer.status_code == 404, answer.text


def stack_dead_letters_purged(stack) -> None:
    """The failed messages were dead-lettered; leave the queue as found."""
    purged = subprocess.run(
        [sys.executable, "-m", "batchctl", "dlq", "purge", "--queue", "add_to_course", "--yes"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert purged.returncode == 0, purged.stderr
