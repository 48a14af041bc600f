"""The Dramatiq actors: one per action, named and queued as the action, and
`finalize_deletion`. Declared on a worker runtime's broker by `declare`.

Actors stay thin: the work is in `workers.items` (the per-learner hot path),
`workers.mail` (invitation delivery), `workers.deletion` and
`workers.webhooks` (`deliver_webhook`). Each returns
the outcome's label, which `workers.metrics.LearnerMetrics` counts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import dramatiq

from shared.contract import FINALIZE_DELETION_QUEUE, WEBHOOK_QUEUE, Action
from workers import webhooks
from workers.deletion import finalize_learner
from workers.errors import PermanentFailure, describe, is_transient

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

# When and how often to retry is the Retries middleware's (workers.retries);
# an actor only names the failures that are not worth retrying.
RETRY_OPTIONS: dict[str, Any] = {"throws": (PermanentFailure,)}


def declare(runtime: WorkerRuntime) -> dict[str, dramatiq.Actor]:
    """Every actor, on the runtime's broker."""
    items = runtime.items
    grace_ms = runtime.settings.deletion_grace_seconds * 1000

    def finalize_deletion(school_id: int, learner_id: int) -> str:
        """Purge a deleted learner once the grace period is over."""
        return finalize_learner(runtime.sessions, school_id, learner_id).kind.value

    finalizer = dramatiq.actor(
        broker=runtime.broker,
        actor_name=FINALIZE_DELETION_QUEUE,
        queue_name=FINALIZE_DELETION_QUEUE,
        **RETRY_OPTIONS,
    )(finalize_deletion)

    def handle_item(action: Action, batch_id: int, learner_id: int) -> str | None:
        """The outcome's label, or None when there was nothing to do."""
        try:
            outcome = items.process(batch_id, learner_id)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning("batch %s: item failed permanently: %s", batch_id, describe(exc))
            items.record_failure(batch_id, learner_id, describe(exc))
            raise PermanentFailure(describe(exc)) from None
        applied = outcome is not None and outcome.kind == "applied"
        if action == Action.RESEND_INVITATION and (outcome is None or applied):
            # Also on redelivery: the item may be done while its email is not sent yet.
            runtime.mailer.deliver_for_item(batch_id, learner_id)
        elif action == Action.DELETE_LEARNER and applied:
            ctx = items.context(batch_id)
            # An applied outcome means `process` found the batch's context, and
            # a batch row is never deleted, so loading it again cannot miss.
            assert ctx is not None
            finalizer.send_with_options(args=(ctx.school_id, learner_id), delay=grace_ms)
        return outcome.kind.value if outcome else None

    def item_actor(action: Action) -> dramatiq.Actor:
        def apply(batch_id: int, learner_id: int) -> str | None:
            return handle_item(action, batch_id, learner_id)

        apply.__name__ = apply.__qualname__ = action.value
        return dramatiq.actor(
            broker=runtime.broker,
            actor_name=action.value,
            queue_name=action.queue,
            **RETRY_OPTIONS,
        )(apply)

    declared = {action.value: item_actor(action) for action in Action}
    declared[FINALIZE_DELETION_QUEUE] = finalizer
    declared[WEBHOOK_QUEUE] = webhooks.declare(runtime)
    return declared
