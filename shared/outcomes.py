"""What happened to one learner: the outcome of one action, with a reason code.

Reason codes are part of the API (`GET /v1/batches/{id}/items`) and of the
metrics labels, so they are a closed enum rather than free text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shared.models import ItemOutcome


class Reason(enum.StrEnum):
    ALREADY_ACTIVE = "already_active"
    # Recorded before the invitation cooldown (migration 0006); no longer produced.
    ALREADY_INVITED = "already_invited"
    RECENTLY_INVITED = "recently_invited"
    ALREADY_MEMBER = "already_member"
    ALREADY_ENROLLED = "already_enrolled"
    ALREADY_DEACTIVATED = "already_deactivated"
    ALREADY_DELETED = "already_deleted"
    NOT_DEACTIVATED = "not_deactivated"
    SELF = "self"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: ItemOutcome
    reason: Reason | None = None
    error: str | None = None

    @classmethod
    def applied(cls) -> Outcome:
        return APPLIED

    @classmethod
    def skipped(cls, reason: Reason) -> Outcome:
        return cls(ItemOutcome.SKIPPED, reason=reason)

    @classmethod
    def failed(cls, error: str) -> Outcome:
        return cls(ItemOutcome.FAILED, error=error[:2000])

    @property
    def label(self) -> str:
        """`applied`, `skipped:<reason>`, `failed`: the key counts are kept under."""
        return f"skipped:{self.reason}" if self.reason else str(self.kind)


APPLIED = Outcome(ItemOutcome.APPLIED)
