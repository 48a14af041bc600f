"""The Dramatiq actors: one per action, named and queued as the action.

Actors stay thin: the work is in `workers.items` (the per-learner hot path),
`workers.mail` (invitation delivery) and `workers.deletion`.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import dramatiq

from shared import redaction
from shared.broker import get_broker
from shared.contract import FINALIZE_DELETION_QUEUE, Action
from shared.settings import get_settings
from workers import metrics, middleware
from workers.broker import WorkerBroker
from workers.deletion import finalize_learner
from workers.errors import PermanentFailure, describe, is_transient
from workers.items import _context, process_item, record_failure, sessions
from workers.mail import InvitationSender

log = logging.getLogger(__name__)
# Dramatiq has set up this worker process's logging by the time it imports us.
redaction.install("dramatiq")
broker = get_broker(rabbitmq_class=WorkerBroker)
metrics.install(broker)
middleware.install(broker)

# When and how often to retry is the Retries middleware's (workers.retries);
# an actor only names the failures that are not worth retrying.
RETRY_OPTIONS = {"throws": (PermanentFailure,)}


@lru_cache(maxsize=1)
def invitation_sender() -> InvitationSender:
    return InvitationSender(sessions())


def handle_item(action: Action, batch_id: int, learner_id: int) -> str | None:
    """The outcome's label ("applied", "skipped", "failed"), or None when
    there was nothing to do; `workers.metrics.LearnerMetrics` counts it."""
    try:
        outcome = process_item(batch_id, learner_id)
    except Exception as exc:
        if is_transient(exc):
            raise
        log.warning("batch %s: item failed permanently: %s", batch_id, describe(exc))
        record_failure(batch_id, learner_id, describe(exc))
        raise PermanentFailure(describe(exc)) from None
    if action == Action.RESEND_INVITATION and (outcome is None or outcome.kind == "applied"):
        # Also on redelivery: the item may be done while its email is not sent yet.
        invitation_sender().deliver_for_item(batch_id, learner_id)
    elif action == Action.DELETE_LEARNER and outcome is not None and outcome.kind == "applied":
        ctx = _context(batch_id)
        finalize_deletion.send_with_options(
            args=(ctx.school_id, learner_id),
            delay=get_settings().deletion_grace_seconds * 1000,
        )
    return outcome.kind.value if outcome else None


def _item_actor(action: Action) -> dramatiq.Actor:
    def apply(batch_id: int, learner_id: int) -> str | None:
        return handle_item(action, batch_id, learner_id)

    apply.__name__ = apply.__qualname__ = action.value
    return dramatiq.actor(apply, actor_name=action.value, queue_name=action.queue, **RETRY_OPTIONS)


resend_invitation = _item_actor(Action.RESEND_INVITATION)
add_to_group = _item_actor(Action.ADD_TO_GROUP)
add_to_course = _item_actor(Action.ADD_TO_COURSE)
deactivate_learner = _item_actor(Action.DEACTIVATE_LEARNER)
delete_learner = _item_actor(Action.DELETE_LEARNER)


@dramatiq.actor(
    actor_name=FINALIZE_DELETION_QUEUE, queue_name=FINALIZE_DELETION_QUEUE, **RETRY_OPTIONS
)
def finalize_deletion(school_id: int, learner_id: int) -> str:
    """Purge a deleted learner once the grace period is over."""
    return finalize_learner(sessions(), school_id, learner_id).kind.value
