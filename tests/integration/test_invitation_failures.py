"""An invitation that cannot be written as an email (a line break in an
address or a school's name) ends `failed` with the reason, and stops neither
its batch nor the reconciler's pass over other schools (issue #12, item 16)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from sqlalchemy import insert, select, update

from batchctl.seed import seed_school
from producer.schemas import BatchRequest
from producer.submit import submit
from shared.actions import Actor
from shared.db import now
from shared.models import Batch, BatchItem, Invitation, Learner, School
from shared.publish import ConfirmedPublisher
from shared.settings import Settings
from tests.support.environment import sessions_for
from tests.support.factories import learner_ids
from tests.support.services import SmtpServer
from workers.mail import UNWRITABLE, InvitationSender
from workers.reconcile import reconcile_once


def school_with_invited(session, name: str, n: int = 3):
    seeded = seed_school(session, learners=12, groups=1, courses=1, name="Invites")
    session.execute(update(School).where(School.id == seeded.school_id).values(name=name))
    invited = learner_ids(session, seeded.school_id, status="invited")[:n]
    session.commit()
    return seeded, invited


def emails_of(session, ids: list[int]) -> list[str]:
    return list(session.scalars(select(Learner.email).where(Learner.id.in_(ids))))


def outcomes(session, batch_id: int) -> dict[int, tuple[str, str | None]]:
    session.expire_all()
    rows = session.execute(
        select(BatchItem.learner_id, BatchItem.outcome, BatchItem.error).where(
            BatchItem.batch_id == batch_id
        )
    )
    return {learner: (outcome, error) for learner, outcome, error in rows}


def test_a_line_break_in_a_school_name_or_an_email_fails_the_item_not_the_batch(stack, session):
    evil_school, evil_ids = school_with_invited(session, "Line\r\nBcc: all@evil.test Academy")
    school, ids = school_with_invited(session, "Plain Academy")
    bad = ids[0]
    session.execute(
        update(Learner)
        .where(Learner.id == bad)
        .values(email=f"x{uuid.uuid4().hex[:6]}@school.test\r\nBcc: all@evil.test")
    )
    session.commit()

    views = {}
    for seeded, selected in ((evil_school, evil_ids), (school, ids)):
        with stack.client(seeded.token) as client:
            batch = client.submit("resend_invitation", {"learner_ids": selected})
            views[seeded.school_id] = client.wait(batch["id"], timeout=60)
    evil_view, view = views[evil_school.school_id], views[school.school_id]
    assert evil_view["status"] == view["status"] == "completed"

    deadline = time.monotonic() + 30
    while outcomes(session, evil_view["id"]).get(evil_ids[-1], ("",))[0] != "failed":
        assert time.monotonic() < deadline, outcomes(session, evil_view["id"])
        time.sleep(0.2)
    assert set(outcomes(session, evil_view["id"]).values()) == {("failed", UNWRITABLE)}
    plain = outcomes(session, view["id"])
    assert plain[bad] == ("failed", UNWRITABLE)
    assert {plain[i][0] for i in ids[1:]} == {"applied"}

    with stack.client(school.token) as client:
        assert client.batch(view["id"])["counts"]["failed"] == 1
    received = stack.smtp.inbox.recipients()
    for email in emails_of(session, evil_ids + [bad]):
        assert not any(email.split("\r")[0] in str(to) for to in received)
    deadline = time.monotonic() + 30
    while not all(received[email] == 1 for email in emails_of(session, ids[1:])):
        assert time.monotonic() < deadline, "the school's other invitations were not sent"
        time.sleep(0.2)
        received = stack.smtp.inbox.recipients()


def test_the_reconciler_goes_on_past_an_invitation_it_cannot_write(stack, session, database_url):
    """Unsent invitations of two schools, the first one unwritable: the pass
    fails that one's item and still sends the other school's."""
    evil_school, (evil_id,) = school_with_invited(session, "Evil\nSchool", n=1)
    school, (good_id,) = school_with_invited(session, "Good School", n=1)
    batches = {}
    for seeded, learner in ((evil_school, evil_id), (school, good_id)):
        request = BatchRequest.model_validate(
            {"action": "resend_invitation", "selection": {"learner_ids": [learner]}}
        )
        batch = submit(session, Actor(seeded.school_id, seeded.admin_id), request).batch
        # Published and applied as far as the database knows; the message
        # that should have sent the email was lost.
        session.execute(
            update(Batch)
            .where(Batch.id == batch.id)
            .values(dispatch_cursor=learner, dispatched_at=now() + timedelta(days=1))
        )
        session.execute(
            update(BatchItem).where(BatchItem.batch_id == batch.id).values(outcome="applied")
        )
        session.execute(
            insert(Invitation).values(
                school_id=seeded.school_id,
                learner_id=learner,
                batch_id=batch.id,
                token_hash=uuid.uuid4().hex * 2,
                created_at=now() - timedelta(hours=1),
            )
        )
        batches[learner] = batch.id
    session.commit()

    smtp = SmtpServer()
    broker = stack.broker()
    publisher = ConfirmedPublisher(broker)
    settings = Settings(
        database_url=database_url,
        broker_url=stack.vhost.url,
        signing_key=stack.env["SIGNING_KEY"],
        smtp_url=smtp.url,
        stale_after_seconds=1,
    )
    sessions = sessions_for(database_url)
    good_email = emails_of(session, [good_id])[0]
    sender = InvitationSender(sessions, settings)
    try:
        # A pass takes 200 rows, oldest first: other tests may have left
        # unsent ones before ours, but each pass gets further.
        for _ in range(10):
            reconcile_once(sessions, publisher, settings, sender)
            if smtp.inbox.recipients()[good_email]:
                break
    finally:
        publisher.close()
        broker.close()
        smtp.stop()

    assert smtp.inbox.recipients()[good_email] == 1
    assert outcomes(session, batches[evil_id])[evil_id] == ("failed", UNWRITABLE)
    assert outcomes(session, batches[good_id])[good_id] == ("applied", None)
