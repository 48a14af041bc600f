"""The message contract: which actions exist, their queues, and their params.

Queue names are part of the contract in docs/CONTRACT.md (deploy files, dashboards
and KEDA scalers name them). A message carries ids only, never people:
`(batch_id, learner_id)` for a batch action, `(school_id, learner_id)` for
`finalize_deletion`, `(delivery_id,)` for `deliver_webhook`.
"""

from __future__ import annotations

import enum


class Action(enum.StrEnum):
    RESEND_INVITATION = "resend_invitation"
    ADD_TO_GROUP = "add_to_group"
    ADD_TO_COURSE = "add_to_course"
    DEACTIVATE_LEARNER = "deactivate_learner"
    DELETE_LEARNER = "delete_learner"
    REACTIVATE_LEARNER = "reactivate_learner"

    @property
    def queue(self) -> str:
        return self.value

    @property
    def param_name(self) -> str | None:
        """The one list parameter the action takes, if any."""
        return {Action.ADD_TO_GROUP: "group_ids", Action.ADD_TO_COURSE: "course_ids"}.get(self)

    @property
    def destructive(self) -> bool:
        """Takes access away from everyone selected: over a filter (which an
        empty filter makes the whole school) a submit must carry the count
        the admin confirmed, `expected_total` (docs/CONTRACT.md)."""
        return self in (Action.DEACTIVATE_LEARNER, Action.DELETE_LEARNER)


FINALIZE_DELETION_QUEUE = "finalize_deletion"
# One completion webhook to one school endpoint: `(delivery_id,)` (workers/webhooks.py).
WEBHOOK_QUEUE = "deliver_webhook"
QUEUES = [a.queue for a in Action] + [FINALIZE_DELETION_QUEUE, WEBHOOK_QUEUE]
# Actors whose message names a batch item: (batch_id, learner_id).
ITEM_ACTORS = frozenset(a.value for a in Action)
# Every actor that acts on one learner (counted in metrics, crash-loop guarded).
LEARNER_ACTORS = ITEM_ACTORS | {FINALIZE_DELETION_QUEUE}
