"""`batchctl reconcile`: the loop that makes "delayed, never lost" true.

Each pass, safe to run in several replicas at once:
- tops up every running batch's dispatch window, advances cancels and
  completes batches whose Redis counters missed (`shared.dispatch.tick`);
- republishes the in-flight items of a batch that made no progress for
  `STALE_AFTER_SECONDS` (a lost message, a dead producer);
- claims the deletions that are due and publishes one `finalize_deletion`
  message per chunk of one school's learners; purges itself those still not
  purged `DELETION_OVERDUE_SECONDS` later (a lost message), and those whose
  messages the broker does not take (`workers.deletion.claim_due`);
- publishes the webhook deliveries that are due: first attempts, retries,
  and those a killed worker held (`shared.webhooks.publish_due`);
- sends outbox invitations nobody picked up within `STALE_AFTER_SECONDS`
  (their message was acked without a delivery attempt, e.g. given up on);
- removes finished batches and audit rows past their retention, a bounded
  number of short chunks a pass (`workers.retention`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db import now
from shared.dispatch import Pace, pace_for, tick
from shared.models import Invitation
from shared.publish import Publisher
from shared.settings import Settings
from shared.webhooks import publish_due
from workers.deletion import CLAIM, claim_due
from workers.errors import describe, is_transient
from workers.mail import InvitationSender
from workers.retention import Removed, remove_expired

log = logging.getLogger(__name__)
# Due deletions are claimed `CLAIM` learners a transaction; a pass makes at
# most this many claims, so a huge backlog does not hold up the other duties.
FINALIZE_CLAIMS_PER_PASS = 25


@dataclass
class Pass:
    published: int = 0
    # Deleted learners whose finalize message this pass published, and those
    # it purged itself (their message's lease ran out, or the broker failed).
    deletions_published: int = 0
    finalized: int = 0
    invitations_sent: int = 0
    webhooks_published: int = 0
    removed: Removed = field(default_factory=Removed)


def reconcile_once(
    sessions: sessionmaker[Session],
    publisher: Publisher,
    settings: Settings,
    sender: InvitationSender | None = None,
    pace: Pace | None = None,
) -> Pass:
    """One pass. `pace` is kept across passes by `run` on quorum queues: with
    it, a batch the producer is dispatching is left to the producer, which
    keeps its window small (`shared.dispatch.Pace`)."""
    result = Pass()
    stale_after = timedelta(seconds=settings.stale_after_seconds)
    result.published = tick(
        sessions, publisher, settings.dispatch_window, stale_after=stale_after, pace=pace
    )
    lease = timedelta(seconds=settings.deletion_overdue_seconds)
    for _ in range(FINALIZE_CLAIMS_PER_PASS):
        claimed = claim_due(sessions, publisher, lease)
        result.deletions_published += claimed.published
        result.finalized += claimed.purged
        if claimed.published + claimed.purged < CLAIM:
            break
    result.webhooks_published = publish_due(sessions, publisher, stale_after)
    if sender is not None:
        with sessions() as session:
            unsent = session.scalars(
                select(Invitation.id)
                .where(
                    Invitation.sending_at.is_(None),
                    Invitation.sent_at.is_(None),
                    Invitation.created_at < now() - stale_after,
                )
                .order_by(Invitation.id)
                .limit(200)
            ).all()
        for invitation_id in unsent:
            try:
                result.invitations_sent += sender.deliver(invitation_id)
            except Exception as exc:
                log.warning("invitation not sent: %s", describe(exc))
                if is_transient(exc):
                    break  # the mail server is down or busy: the next pass tries again
                # Anything else concerns this row only (and marked it): go on.
    result.removed = remove_expired(sessions, settings)
    return result


def run(
    sessions: sessionmaker[Session],
    publisher: Publisher,
    settings: Settings,
    sender: InvitationSender | None,
    stop: threading.Event,
) -> None:
    pace = pace_for(settings.queue_type, seconds=None)
    while not stop.is_set():
        try:
            result = reconcile_once(sessions, publisher, settings, sender, pace)
            if (
                result.published
                or result.deletions_published
                or result.finalized
                or result.invitations_sent
                or result.removed
            ):
                log.info("reconcile pass: %s", result)
        except Exception as exc:
            log.warning("reconcile pass failed, will retry: %s", describe(exc))
        stop.wait(settings.reconcile_interval_seconds)
