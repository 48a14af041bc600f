"""The Dramatiq actors: one per action, named and queued as the action, and
`finalize_deletion`. Declared on a worker runtime's broker by `declare`.

Actors stay thin: the work is in `workers.items` (the per-learner hot path),
`workers.mail` (invitation delivery), `workers.deletion` (`finalize_deletion`,
a chunk of learners) and `workers.webhooks` (`deliver_webhook`). An item
actor returns the outcome's label, which `workers.metrics.WorkerMetrics`
counts; `finalize_deletion` counts its chunk's learners itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import dramatiq

from shared.contract import FINALIZE_DELETION_QUEUE, WEBHOOK_QUEUE, Action
from workers import webhooks
from workers.deletion import finalize_chunk
from workers.errors import PermanentFailure, describe, is_transient
from workers.metrics import TALLY, learners_processed

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

# When and how often to retry is the Retries middleware's (workers.retries);
# an actor only names the failures that are not worth retrying.
RETRY_OPTIONS: dict[str, Any] = {"throws": (PermanentFailure,)}


def declare(runtime: WorkerRuntime) -> dict[str, dramatiq.Actor]:
    """Every actor, on the runtime's broker."""
    items = runtime.items

    def finalize_deletion(school_id: int, learner_ids: list[int] | int) -> None:
        """Purge a chunk of one school's deleted learners whose grace period
        is over (`workers.deletion`). A single id is a message published
        before chunks, one per learner, still queued at the upgrade."""
        chunk = [learner_ids] if isinstance(learner_ids, int) else learner_ids
        purged = finalize_chunk(runtime.sessions, school_id, chunk)
        # Counted here, per learner: a message is a chunk, not one learner.
        TALLY.inc(learners_processed(), (FINALIZE_DELETION_QUEUE, "applied"), purged)
        TALLY.inc(learners_processed(), (FINALIZE_DELETION_QUEUE, "skipped"), len(chunk) - purged)

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
