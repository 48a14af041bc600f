"""No invitation spam: a learner invited less than INVITE_COOLDOWN_SECONDS ago
is skipped `recently_invited`, by any batch, also when batches race."""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import func, select

from batchctl.seed import seed_school
from shared.contract import Action
from shared.models import Invitation, Learner
from shared.outcomes import Outcome, Reason
from shared.runtime import current
from tests.support.factories import learner_ids, make_learner
from tests.support.parked import park_batch
from workers.items import Items

RACING = 30


def test_two_batches_racing_for_the_same_learners_invite_each_once(session, school):
    """Both batches' workers run the single statement at the same moment for
    each learner: one applies, the other waits on the learner's row lock and
    then sees its stamp."""
    invited = [make_learner(session, school.school_id, status="invited").id for _ in range(RACING)]
    first, second = (
        park_batch(session, school.school_id, school.admin_id, "resend_invitation", invited)
        for _ in range(2)
    )
    session.commit()
    items = Items(current())
    assert current().settings.invite_cooldown_seconds > 0
    assert items.one_statement(first) is not None, "the single statement is what races"
    outcomes: list[Outcome | None] = []
    lock = threading.Lock()

    def run(batch_id: int, learner_id: int, start: threading.Barrier) -> None:
        start.wait()
        outcome = items.process(batch_id, learner_id)
        with lock:
            outcomes.append(outcome)

    for learner_id in invited:
        start = threading.Barrier(2)
        threads = [
            threading.Thread(target=run, args=(batch_id, learner_id, start))
            for batch_id in (first, second)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert Counter(outcomes) == {
        Outcome.applied(): RACING,
        Outcome.skipped(Reason.RECENTLY_INVITED): RACING,
    }
    per_learner = dict(
        session.execute(
            select(Invitation.learner_id, func.count())
            .where(Invitation.learner_id.in_(invited))
            .group_by(Invitation.learner_id)
        ).all()
    )
    assert per_learner == dict.fromkeys(invited, 1)


def test_ten_quick_resend_all_batches_send_one_email_per_learner(stack, session):
    """The report: ten "Resend All" batches in a row sent one learner 13 emails."""
    seeded = seed_school(session, learners=60, groups=1, courses=1, name="Cooldown School")
    session.commit()
    invited = learner_ids(session, seeded.school_id, status="invited")
    assert invited
    emails = dict(
        session.execute(select(Learner.id, Learner.email).where(Learner.id.in_(invited))).all()
    )
    with stack.client(seeded.token) as client:
        batches = [
            client.submit(
                "resend_invitation",
                {"filter": {"status": ["invited"]}},
                idempotency_key=f"resend-all-{n}",
            )["id"]
            for n in range(10)
        ]
        finals = [client.wait(batch_id, timeout=120) for batch_id in batches]
        predicted = client.submit(
            "resend_invitation", {"filter": {"status": ["invited"]}}, dry_run=True
        )

    assert sum(final["counts"]["applied"] for final in finals) == len(invited)
    skipped = sum(final["counts"]["reasons"].get("recently_invited", 0) for final in finals)
    assert skipped == 9 * len(invited)

    addresses = [emails[i] for i in invited]
    assert stack.smtp.inbox.received_by(addresses) == dict.fromkeys(addresses, 1)
    # The dry run predicts it: every one of them was invited within the hour.
    assert predicted["counts"]["applied"] == 0
    assert predicted["counts"]["reasons"] == {"recently_invited": len(invited)}


def test_the_dry_run_and_the_action_agree_on_the_cooldown(session, school):
    from shared.actions import Actor, apply_action

    actor = Actor(school.school_id, school.admin_id)
    learner = make_learner(session, school.school_id, status="invited")

    def resend(cooldown: float) -> Outcome:
        return apply_action(
            session, Action.RESEND_INVITATION, actor, learner.id, invite_cooldown_seconds=cooldown
        )

    assert resend(3600) == Outcome.applied()
    assert resend(3600) == Outcome.skipped(Reason.RECENTLY_INVITED)
    assert resend(0) == Outcome.applied(), "a cooldown of 0 is off"
