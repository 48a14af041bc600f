"""Run real work, inject a real fault, count. Every scenario runs a batch of
5,000 learners through the producer, two worker pods (`batchctl worker`,
restarted when they exit) and the reconciler, breaks something, and then
checks that every selected learner has exactly one outcome, every effect
happened once, and no invitation email went out twice (counted at the SMTP
server). The rows are printed as a table at the end of the run."""

from __future__ import annotations

import json
import time
import uuid

import dramatiq
import pytest
from sqlalchemy import func, select, text

from batchctl.seed import seed_school
from producer.schemas import BatchRequest
from producer.submit import submit
from shared.actions import Actor
from shared.dispatch import item_message
from shared.models import Course, Group
from shared.publish import ConfirmedPublisher
from shared.signing import signature
from tests.faults.harness import (
    SETTINGS,
    kill_worker_connections,
    measure,
    rabbitmq_stopped,
    start_redis,
    stop_redis,
    wait_completed,
    wait_progress,
)
from tests.support.factories import learner_ids
from tests.support.services import wait_until
from workers.erasure import PURGED_BY_LEARNER

pytestmark = [pytest.mark.faults, pytest.mark.slow]
LEARNERS = 5000


def seed(session, name: str, learners: int = LEARNERS):
    school = seed_school(session, learners=learners, groups=2, courses=3, name=name)
    session.commit()
    chosen = learner_ids(session, school.school_id)
    return school, chosen


def first(session, model, school_id: int, n: int = 1) -> list[int]:
    query = select(model.id).where(model.school_id == school_id).order_by(model.id).limit(n)
    return list(session.scalars(query))


def publish(stack, messages: list[dramatiq.Message]) -> None:
    broker = stack.broker()
    publisher = ConfirmedPublisher(broker)
    try:
        publisher.publish(messages)
    finally:
        publisher.close()
        broker.close()


def test_1_worker_process_sigkilled_mid_batch(make_stack, session, report):
    started = time.time()
    school, chosen = seed(session, "Faults: SIGKILL")
    stack = make_stack()
    stack.wait_ready("resend_invitation")
    with stack.client(school.token) as client:
        batch = client.submit("resend_invitation", {"learner_ids": chosen})
    wait_progress(session, batch["id"], len(chosen), 0.3)
    pod = stack.pods[0]
    killed = pod.kill_worker_process()
    fault_end = time.time()
    wait_completed(session, batch["id"])

    row = measure(session, stack, "1 worker SIGKILL", batch["id"], chosen, {}, fault_end, started)
    row.check(pod.restarts >= 1, "the pod whose worker process was killed did not restart")
    row.check(row.failed == 0, f"{row.failed} learners failed")
    row.notes.append(f"killed worker pid {killed}; Dramatiq's main process exited {pod.exits}")
    report(row)


def test_2_worker_sigterm_rolling_deploy(make_stack, session, report):
    started = time.time()
    school, chosen = seed(session, "Faults: SIGTERM")
    group = first(session, Group, school.school_id)
    stack = make_stack()
    stack.wait_ready("add_to_group")
    with stack.client(school.token) as client:
        batch = client.submit("add_to_group", {"learner_ids": chosen}, {"group_ids": group})
    wait_progress(session, batch["id"], len(chosen), 0.3)
    old = stack.pods[0]
    left = _pending(session, batch["id"])
    code, took = old.terminate()
    fault_end = time.time()
    stack.add_pod()  # the rolling deploy's replacement
    wait_completed(session, batch["id"])

    row = measure(
        session,
        stack,
        "2 worker SIGTERM",
        batch["id"],
        chosen,
        {"group_ids": group},
        fault_end,
        started,
    )
    log = old.output()
    row.check(code == 0, f"the SIGTERMed pod exited {code}, not 0")
    row.check("Worker has been shut down" in log, "the SIGTERMed pod did not shut down cleanly")
    row.check("Killing worker process" not in log, "the SIGTERMed pod killed its workers")
    row.check(row.failed == 0, f"{row.failed} learners failed")
    row.notes.append(f"pod exited 0 in {took:.1f}s; {left} learners were pending at SIGTERM")
    report(row)


def _pending(session, batch_id: int) -> int:
    session.rollback()
    return session.execute(
        text("SELECT count(*) FROM batch_items WHERE batch_id = :b AND outcome = 'pending'"),
        {"b": batch_id},
    ).scalar_one()


def _cursor(session, batch_id: int) -> int:
    session.rollback()
    return session.execute(
        text("SELECT dispatch_cursor FROM batches WHERE id = :b"), {"b": batch_id}
    ).scalar_one()


@pytest.mark.parametrize("phase", ["dispatch", "consumption"])
def test_3_rabbitmq_restarted(make_stack, session, report, phase):
    started = time.time()
    school, chosen = seed(session, f"Faults: RabbitMQ during {phase}")
    stack = make_stack()
    stack.wait_ready("resend_invitation")
    with stack.client(school.token) as client:
        batch = client.submit("resend_invitation", {"learner_ids": chosen})
    if phase == "dispatch":
        # The first window is being published and confirmed right now.
        deadline = time.monotonic() + 30
        while _cursor(session, batch["id"]) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        wait_progress(session, batch["id"], len(chosen), 0.5)
    done_before = len(chosen) - _pending(session, batch["id"])
    with rabbitmq_stopped():
        time.sleep(3)
    fault_end = time.time()
    wait_completed(session, batch["id"])

    name = f"3 RabbitMQ restart ({phase})"
    row = measure(session, stack, name, batch["id"], chosen, {}, fault_end, started)
    row.check(row.failed == 0, f"{row.failed} learners failed")
    row.notes.append(f"stopped with {done_before} learners done")
    report(row)


def test_4_worker_database_connections_killed(make_stack, session, report):
    started = time.time()
    school, chosen = seed(session, "Faults: pg_terminate_backend")
    courses = first(session, Course, school.school_id, 2)
    stack = make_stack()
    stack.wait_ready("add_to_course")
    with stack.client(school.token) as client:
        batch = client.submit("add_to_course", {"learner_ids": chosen}, {"course_ids": courses})
    wait_progress(session, batch["id"], len(chosen), 0.3)
    killed = []
    for _ in range(3):
        killed.append(kill_worker_connections(session))
        time.sleep(0.5)
    fault_end = time.time()
    wait_completed(session, batch["id"])

    row = measure(
        session,
        stack,
        "4 worker DB connections killed",
        batch["id"],
        chosen,
        {"course_ids": courses},
        fault_end,
        started,
    )
    row.check(sum(killed) > 0, "no worker connection was killed")
    row.check(row.failed == 0, f"{row.failed} learners failed")
    row.notes.append(f"terminated {'+'.join(map(str, killed))} worker backends")
    report(row)


def test_5_redis_stopped_mid_batch(make_stack, session, report):
    started = time.time()
    school, chosen = seed(session, "Faults: Redis down")
    stack = make_stack()
    stack.wait_ready("resend_invitation")
    with stack.client(school.token) as client:
        batch = client.submit("resend_invitation", {"learner_ids": chosen})
        wait_progress(session, batch["id"], len(chosen), 0.3)
        views = []
        try:
            stop_redis()
            down_at = time.monotonic()
            # Progress without Redis, read from the database by the API.
            while time.monotonic() - down_at < 6:
                views.append(client.batch(batch["id"]))
                time.sleep(1)
        finally:
            start_redis()
        fault_end = time.time()
        time.sleep(0.5)
        after = client.batch(batch["id"])  # Redis is back, empty
        truth = 100.0 * (len(chosen) - _pending(session, batch["id"])) / len(chosen)
        wait_completed(session, batch["id"])
        final = client.batch(batch["id"])

    row = measure(session, stack, "5 Redis stopped", batch["id"], chosen, {}, fault_end, started)
    session.rollback()
    recount = dict(
        session.execute(
            text("SELECT outcome, count(*) FROM batch_items WHERE batch_id = :b GROUP BY outcome"),
            {"b": batch["id"]},
        ).all()
    )
    for outcome in ("applied", "skipped", "failed"):
        got = final["counts"][outcome]
        row.check(got == recount.get(outcome, 0), f"final {outcome} {got} != {recount}")
    moving = [v["percent"] for v in views]
    row.check(moving == sorted(moving) and moving[-1] > moving[0], f"no progress shown: {moving}")
    row.check(row.failed == 0, f"{row.failed} learners failed")
    row.notes.append(f"while Redis was down the API showed {moving[0]}% .. {moving[-1]}%")
    if after["status"] == "running":
        row.notes.append(
            f"just after Redis came back empty the API showed {after['percent']}% "
            f"with {truth:.1f}% done (live counts restart from zero; final counts exact)"
        )
    report(row)


def test_6_producer_killed_mid_dispatch(make_stack, session, report):
    started = time.time()
    school, chosen = seed(session, "Faults: producer killed")
    stack = make_stack()
    stack.wait_ready("deactivate_learner")
    with stack.client(school.token) as client:
        batch = client.submit("deactivate_learner", {"learner_ids": chosen})
    wait_progress(session, batch["id"], len(chosen), 0.2)
    stack.producer.signal(9)
    stack.producer.popen.wait()
    dispatched = session.execute(
        text("SELECT count(*) FROM batch_items WHERE batch_id = :b AND learner_id <= :c"),
        {"b": batch["id"], "c": _cursor(session, batch["id"])},
    ).scalar_one()
    fault_end = time.time()
    wait_completed(session, batch["id"])

    row = measure(session, stack, "6 producer SIGKILL", batch["id"], chosen, {}, fault_end, started)
    row.check(row.failed == 0, f"{row.failed} learners failed")
    row.notes.append(
        f"producer died with {dispatched} of {len(chosen)} dispatched; "
        "the reconciler dispatched the rest"
    )
    report(row)


def test_7_every_message_published_twice(make_stack, session, report):
    started = time.time()
    school, chosen = seed(session, "Faults: duplicates")
    stack = make_stack()
    stack.wait_ready("resend_invitation")
    with stack.client(school.token) as client:
        batch = client.submit("resend_invitation", {"learner_ids": chosen})
    publish(stack, [item_message("resend_invitation", batch["id"], lid) for lid in chosen])
    fault_end = time.time()
    wait_completed(session, batch["id"])

    row = measure(
        session, stack, "7 every message twice", batch["id"], chosen, {}, fault_end, started
    )
    got, expected = row.emails.split("/")
    row.check(got == expected, f"emails {row.emails}: with no crash every invitation arrives")
    row.check(row.failed == 0, f"{row.failed} learners failed")
    report(row)


REFUSE = """
CREATE OR REPLACE FUNCTION faults_refuse() RETURNS trigger AS $$
BEGIN
  IF NEW.learner_id = {permanent} THEN
    RAISE EXCEPTION 'refused' USING ERRCODE = 'P0001';
  ELSIF NEW.learner_id = {transient} THEN
    RAISE EXCEPTION 'try again' USING ERRCODE = '40001';
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER faults_refuse BEFORE INSERT ON group_memberships
  FOR EACH ROW EXECUTE FUNCTION faults_refuse();
"""


def test_8_poison_messages(make_stack, session, report):
    """A malformed body naming an item, an undecodable body, a message for an
    unknown actor, a learner whose step always fails permanently and one whose
    step always fails transiently: four items end `failed` with a reason,
    five messages are dead-lettered, every other learner is unaffected.

    The first two learners' items are marked dispatched in the same
    transaction that creates the batch, so the poison messages are their
    only messages (as if a broken producer had sent them); if the workers
    did not fail them, the reconciler would republish them and they would
    end `applied`."""
    started = time.time()
    school, everyone = seed(session, "Faults: poison", LEARNERS + 5)
    group = first(session, Group, school.school_id)
    innocent = [lid for lid in everyone if lid % 3]  # not a member of any group yet
    malformed, unknown = innocent[:2]
    chosen = [malformed, unknown] + [lid for lid in everyone if lid > unknown][: LEARNERS - 2]
    permanent, transient = innocent[len(innocent) // 3], innocent[2 * len(innocent) // 3]
    stack = make_stack()
    stack.wait_ready("add_to_group")
    session.execute(text(REFUSE.format(permanent=permanent, transient=transient)))
    session.commit()
    try:
        request = BatchRequest.model_validate(
            {
                "action": "add_to_group",
                "params": {"group_ids": group},
                "selection": {"learner_ids": chosen},
            }
        )
        batch_id = submit(session, Actor(school.school_id, school.admin_id), request).batch.id
        session.execute(
            text("UPDATE batches SET dispatch_cursor = :c, dispatched_at = now() WHERE id = :b"),
            {"c": unknown, "b": batch_id},
        )
        session.commit()

        key = stack.env["SIGNING_KEY"]
        newer = item_message("add_to_group", batch_id, malformed)
        newer.options["signature"] = signature(key, newer)
        body = json.dumps({**newer.asdict(), "schema": 2}).encode()  # a field this worker lacks
        stack.queues.publish_raw("add_to_group", body)
        stack.queues.publish_raw("add_to_group", b"\x00\xff not a message " + uuid.uuid4().bytes)
        stranger = dramatiq.Message(
            queue_name="add_to_group",
            actor_name="add_to_group_v2",
            args=(batch_id, unknown),
            kwargs={},
            options={},
        )
        publish(stack, [stranger])
        fault_end = time.time()
        wait_completed(session, batch_id)
    finally:
        session.rollback()
        session.execute(text("DROP TRIGGER IF EXISTS faults_refuse ON group_memberships"))
        session.commit()
    time.sleep(1)  # dead-lettering follows the outcome by a moment

    row = measure(
        session,
        stack,
        "8 poison messages",
        batch_id,
        chosen,
        {"group_ids": group},
        fault_end,
        started,
    )
    failed = dict(
        session.execute(
            text(
                "SELECT learner_id, error FROM batch_items "
                "WHERE batch_id = :b AND outcome = 'failed'"
            ),
            {"b": batch_id},
        ).all()
    )
    expected = {
        malformed: "malformed message",
        unknown: "unknown actor add_to_group_v2",
        permanent: "(P0001)",
        transient: "gave up: OperationalError (40001)",
    }
    row.check(set(failed) == set(expected), f"failed {sorted(failed)}, expected {sorted(expected)}")
    for lid, reason in expected.items():
        row.check(
            reason in (failed.get(lid) or ""), f"learner {lid} failed with {failed.get(lid)!r}"
        )
    row.check(row.dead_lettered == 5, f"{row.dead_lettered} dead letters, expected 5")
    row.notes.append("; ".join(f"{lid}: {failed.get(lid)}" for lid in expected))
    report(row)


def test_9_message_that_kills_its_worker_every_time(make_stack, session, report):
    started = time.time()
    school, chosen = seed(session, "Faults: crash loop")
    course = first(session, Course, school.school_id)
    deadly = chosen[len(chosen) // 2]
    stack = make_stack(
        modules=("tests.faults.killer",), env={"FAULTS_KILL_LEARNER_ID": str(deadly)}
    )
    stack.wait_ready("add_to_course")
    with stack.client(school.token) as client:
        batch = client.submit("add_to_course", {"learner_ids": chosen}, {"course_ids": course})
    wait_completed(session, batch["id"])
    time.sleep(1)

    session.rollback()
    outcome, error, given_up = session.execute(
        text(
            "SELECT outcome, error, finished_at FROM batch_items "
            "WHERE batch_id = :b AND learner_id = :l"
        ),
        {"b": batch["id"], "l": deadly},
    ).one()
    fault_end = given_up.timestamp() if given_up else None
    row = measure(
        session,
        stack,
        "9 message kills its worker",
        batch["id"],
        chosen,
        {"course_ids": course},
        fault_end,
        started,
    )
    crashes = sum(pod.restarts for pod in stack.pods)
    limit = int(SETTINGS["MAX_DELIVERIES"])
    row.check(outcome == "failed", f"the deadly learner ended {outcome}")
    row.check("crashed its worker" in (error or ""), f"the deadly learner failed with {error!r}")
    row.check(row.failed == 1, f"{row.failed} learners failed, expected only the deadly one")
    row.check(1 <= crashes <= limit + 2, f"{crashes} pod restarts for MAX_DELIVERIES={limit}")
    row.check(row.dead_lettered >= 1, "the deadly message was not dead-lettered")
    row.notes.append(f"{crashes} worker crashes, then {error!r}")
    report(row)


def test_10_deletion_finalization_message_lost(make_stack, session, report):
    started = time.time()
    school, chosen = seed(session, "Faults: finalize lost")
    # These pods do not consume finalize_deletion: the reconciler's chunk
    # messages wait in the broker until the test purges them, the loss being
    # tested. The reconciler purges the learners itself once their lease
    # (DELETION_OVERDUE_SECONDS) is over.
    stack = make_stack(queues=("delete_learner",))
    stack.wait_ready("delete_learner")
    with stack.client(school.token) as client:
        batch = client.submit("delete_learner", {"learner_ids": chosen})
    wait_completed(session, batch["id"])

    def all_claimed() -> bool:
        """Every learner's message published (the first may be purged already)."""
        session.rollback()
        claimed = session.execute(
            text(
                "SELECT count(*) FROM learners WHERE id = ANY(:ids) "
                "AND (status = 'deleted' OR deletion_leased_until IS NOT NULL)"
            ),
            {"ids": chosen},
        ).scalar_one()
        return claimed == len(chosen)

    wait_until(all_claimed, 60, "every deletion claimed by the reconciler", every=0.3)
    lost = stack.queues.purge("finalize_deletion")
    fault_end = time.time()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        session.rollback()
        left = session.execute(
            text("SELECT count(*) FROM learners WHERE id = ANY(:ids) AND status <> 'deleted'"),
            {"ids": chosen},
        ).scalar_one()
        if not left:
            break
        time.sleep(0.5)

    row = measure(
        session, stack, "10 finalize message lost", batch["id"], chosen, {}, None, started
    )
    late, purged_at = session.execute(
        text(
            "SELECT max(extract(epoch FROM l.deleted_at - i.finished_at)) - :grace, "
            "max(extract(epoch FROM l.deleted_at)) FROM batch_items i "
            "JOIN learners l ON l.id = i.learner_id WHERE i.batch_id = :b"
        ),
        {"b": batch["id"], "grace": int(SETTINGS["DELETION_GRACE_SECONDS"])},
    ).one()
    if purged_at is not None:
        row.recover_seconds = max(0.0, float(purged_at) - fault_end)
    for model in PURGED_BY_LEARNER:
        left = session.scalar(
            select(func.count()).where(model.learner_id.in_(chosen)).select_from(model)
        )
        row.check(left == 0, f"{model.__tablename__} still has {left} rows of purged learners")
    overdue = int(SETTINGS["DELETION_OVERDUE_SECONDS"])
    row.check(lost >= 1, "no finalize message was there to lose")
    row.check(row.effects == len(chosen), f"{row.effects} of {len(chosen)} learners purged")
    row.check(late is not None and late <= overdue + 60, f"purged up to {late}s after due")
    row.notes.append(
        f"{lost} chunk messages for {len(chosen)} learners purged from the queue; purged at "
        f"most {float(late or 0):.0f}s after due (by the reconciler once their lease, "
        f"DELETION_OVERDUE_SECONDS={overdue}, was over; the promise is an hour)"
    )
    report(row)
