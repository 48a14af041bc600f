"""Finalizing deletions, a chunk of learners at a time.

`delete_learner` only marks a learner `deleting` with the time its grace
period ends (`deletion_due_at`). Each reconciler pass claims the learners
that are due, up to `CHUNK` of one school together, and publishes one
`finalize_deletion` message per chunk, naming the school and the learner ids
(ids only, never people); the worker that receives it purges the chunk in one
short transaction (`workers.erasure.purge_deleting`). One message per chunk,
where it was one delayed message per learner: that message was published to
a delay queue, held by a worker and published again, most of a delete's
broker and worker time (#16).

A claimed learner is leased for `DELETION_OVERDUE_SECONDS`
(`deletion_leased_until`): the reconciler leaves it alone until then. One
still `deleting` after its lease had its message lost, or not handled in
time (no worker on the queue, a backlog): the reconciler then purges it
itself, as it does the chunks it claimed when the broker cannot be reached,
so the help page's promise (purged within an hour) holds whatever RabbitMQ
and the workers do. A learner is purged once however many purges name it:
each locks the rows and takes only those still `deleting`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import dramatiq
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.contract import FINALIZE_DELETION_QUEUE
from shared.db import now
from shared.models import Learner, LearnerStatus
from shared.publish import Publisher, PublishError
from workers.erasure import purge_deleting

log = logging.getLogger(__name__)

# Learners of one school per `finalize_deletion` message: a purge of this many
# is one transaction of a fraction of a second.
CHUNK = 500
# Learners one claim (one reconciler transaction) takes, in as many chunks.
CLAIM = 2000


@dataclass
class Claimed:
    """What one claim did: learners published in finalize messages, and
    learners the reconciler purged itself (their lease ran out, or the
    broker could not take their messages)."""

    published: int = 0
    purged: int = 0


def finalize_message(school_id: int, learner_ids: Sequence[int]) -> dramatiq.Message:
    """One chunk's message: the school and its learners' ids."""
    return dramatiq.Message(
        queue_name=FINALIZE_DELETION_QUEUE,
        actor_name=FINALIZE_DELETION_QUEUE,
        args=(school_id, list(learner_ids)),
        kwargs={},
        options={},
    )


def finalize_chunk(
    sessions: sessionmaker[Session], school_id: int, learner_ids: Sequence[int]
) -> int:
    """The `finalize_deletion` actor's work: purge the chunk in one
    transaction. Returns how many learners it purged."""
    with sessions() as session, session.begin():
        return purge_deleting(session, school_id, learner_ids)


def chunks(rows: Sequence[tuple[int, int]], size: int = CHUNK) -> list[tuple[int, list[int]]]:
    """(school_id, learner ids) chunks of at most `size` learners of one
    school, from (school_id, learner_id) rows."""
    by_school: dict[int, list[int]] = {}
    for school_id, learner_id in rows:
        by_school.setdefault(school_id, []).append(learner_id)
    return [
        (school_id, ids[start : start + size])
        for school_id, ids in by_school.items()
        for start in range(0, len(ids), size)
    ]


def claim_due(
    sessions: sessionmaker[Session], publisher: Publisher, lease: timedelta, limit: int = CLAIM
) -> Claimed:
    """Claim up to `limit` learners whose deletion is due and not leased.
    Those never claimed go out in their chunks' messages and are leased;
    those whose lease ran out, and all of them when the broker fails, are
    purged here. One transaction: the claimed rows stay locked until the
    messages are confirmed (SKIP LOCKED, so several reconcilers share the
    due learners; a worker handed a chunk meanwhile waits for the lock,
    then finds its learners `deleting` as before)."""
    moment = now()
    query = (
        select(Learner.school_id, Learner.id, Learner.deletion_leased_until.is_not(None))
        .where(
            Learner.status == LearnerStatus.DELETING,
            Learner.deletion_due_at <= moment,
            or_(Learner.deletion_leased_until.is_(None), Learner.deletion_leased_until < moment),
        )
        .order_by(Learner.deletion_due_at)
        .limit(limit)
    )
    with sessions() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        fresh: list[tuple[int, int]] = []
        overdue: list[tuple[int, int]] = []
        for school_id, learner_id, leased in session.execute(query):
            (overdue if leased else fresh).append((school_id, learner_id))
        claimed = Claimed()
        for chunk in chunks(overdue):
            claimed.purged += purge_deleting(session, *chunk)
        if not fresh:
            return claimed
        due = chunks(fresh)
        try:
            publisher.publish([finalize_message(school_id, ids) for school_id, ids in due])
        except PublishError as exc:
            log.warning("finalize messages not published, purging here: %s", exc)
            claimed.purged += sum(purge_deleting(session, *chunk) for chunk in due)
            return claimed
        session.execute(
            update(Learner)
            .where(Learner.id.in_([learner_id for _, learner_id in fresh]))
            .values(deletion_leased_until=moment + lease)
            .execution_options(synchronize_session=False)
        )
        claimed.published = len(fresh)
        return claimed
