"""Request and response bodies of the HTTP API (the OpenAPI document is built
from these). Unknown fields are rejected, so a typo is a 422 naming it."""

from __future__ import annotations

import contextlib
import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
)

from shared.contract import Action

MAX_ID = 2**63 - 1
# Strict: JSON `true` or `"7"` is not learner 7.
LearnerId = Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]
MAX_EXPLICIT_IDS = 100_000


def _up_to_first_bad_id(values: Any) -> Any:
    """Only the list up to its first item that is not an id is validated, so
    800,000 `true`s are one error naming that item, not 800,000 (seconds of
    CPU and an answer of 150 MB)."""
    if isinstance(values, list):
        for index, value in enumerate(values):
            if type(value) is not int or not 1 <= value <= MAX_ID:
                return values[: index + 1]
    return values


IdList = Annotated[list[LearnerId], BeforeValidator(_up_to_first_bad_id)]
PeopleStatus = Literal["invited", "active", "deactivated"]


STATUSES = get_args(PeopleStatus)


def _distinct(values: Any) -> Any:
    """Each status once: a list of 400,000 copies is one status, not 400,000
    SQL parameters; more distinct values than there are statuses is refused
    in one error, not one per value."""
    if not isinstance(values, list):
        return values
    with contextlib.suppress(TypeError):  # unhashable values: pydantic names each
        values = list(dict.fromkeys(values))
    if len(values) > len(STATUSES):
        raise ValueError(f"at most {len(STATUSES)} statuses, of {', '.join(STATUSES)}")
    return values


def _printable(text: str) -> str:
    # A NUL ends the string for SQLite, so "\x00..." matched every learner.
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise ValueError("must not contain control characters (NUL, tab, line breaks, ...)")
    return text


PeopleStatuses = Annotated[list[PeopleStatus], BeforeValidator(_distinct)]
SearchText = Annotated[str, StringConstraints(max_length=200), AfterValidator(_printable)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LearnerFilter(Strict):
    """The people list's query: what `GET /v1/learners` takes, as a body."""

    status: PeopleStatuses | None = Field(
        default=None, description="Learner statuses; `deactivated` includes learners being deleted."
    )
    group_id: LearnerId | None = None
    q: SearchText | None = Field(default=None, description="Part of an email or name.")


class LearnerIdsSelection(Strict):
    learner_ids: IdList = Field(
        min_length=1, description=f"Up to {MAX_EXPLICIT_IDS:,} ids; use a filter for more."
    )


# The caller's own identifiers (issue #13 section 1): matched within the
# school, never stored; those that match no learner are only answered.
MAX_EMAIL_LENGTH = 320
MAX_EXTERNAL_ID_LENGTH = 255
EmailText = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_EMAIL_LENGTH), AfterValidator(_printable)
]
ExternalId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_EXTERNAL_ID_LENGTH),
    AfterValidator(_printable),
]
UNMATCHED_SHOWN = 20


def _up_to_first_bad_text(max_length: int):
    """As `_up_to_first_bad_id`, for lists of identifiers: 100,000 empty
    strings are one error naming the first, not 100,000."""

    def cut(values: Any) -> Any:
        if isinstance(values, list):
            for index, value in enumerate(values):
                if (
                    type(value) is not str
                    or not 1 <= len(value) <= max_length
                    or any(unicodedata.category(c) == "Cc" for c in value)
                ):
                    return values[: index + 1]
        return values

    return BeforeValidator(cut)


EmailList = Annotated[list[EmailText], _up_to_first_bad_text(MAX_EMAIL_LENGTH)]
ExternalIdList = Annotated[list[ExternalId], _up_to_first_bad_text(MAX_EXTERNAL_ID_LENGTH)]


class EmailsSelection(Strict):
    emails: EmailList = Field(
        min_length=1,
        max_length=MAX_EXPLICIT_IDS,
        description=f"Up to {MAX_EXPLICIT_IDS:,} emails, matched case-insensitively among "
        "the school's learners; those that match none are answered in `unmatched`, not stored.",
    )


class ExternalIdsSelection(Strict):
    external_ids: ExternalIdList = Field(
        min_length=1,
        max_length=MAX_EXPLICIT_IDS,
        description=f"Up to {MAX_EXPLICIT_IDS:,} of the school's own learner identifiers "
        "(`external_id`, matched exactly); those that match none are answered in "
        "`unmatched`, not stored.",
    )


class FilterSelection(Strict):
    filter: LearnerFilter
    exclude_ids: IdList = Field(default_factory=list)


class AllNotActivatedSelection(Strict):
    all_not_activated: Literal[True]


def _selection_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("learner_ids", "emails", "external_ids", "filter", "all_not_activated"):
            if key in value:
                return key
    return None


Selection = Annotated[
    Annotated[LearnerIdsSelection, Tag("learner_ids")]
    | Annotated[EmailsSelection, Tag("emails")]
    | Annotated[ExternalIdsSelection, Tag("external_ids")]
    | Annotated[FilterSelection, Tag("filter")]
    | Annotated[AllNotActivatedSelection, Tag("all_not_activated")],
    Discriminator(
        _selection_kind,
        custom_error_type="selection_kind",
        custom_error_message=(
            "selection must be {learner_ids: [...]}, {emails: [...]}, {external_ids: [...]}, "
            "{filter: {...}, exclude_ids: [...]} or {all_not_activated: true}"
        ),
    ),
]


class BatchParams(Strict):
    group_ids: IdList | None = Field(default=None, min_length=1, max_length=100)
    course_ids: IdList | None = Field(default=None, min_length=1, max_length=100)


class BatchRequest(Strict):
    action: Action
    params: BatchParams = Field(default_factory=BatchParams)
    selection: Selection
    dry_run: bool = False
    expected_total: int | None = Field(
        default=None,
        ge=0,
        le=MAX_ID,
        strict=True,
        description="The learner count a dry run of this body answered (`total`). Required "
        "for deactivate_learner and delete_learner unless the selection is an explicit list "
        "(`learner_ids`, `emails`, `external_ids`); "
        "if the frozen selection has another count the answer is 409 and nothing is created.",
    )


class Counts(BaseModel):
    applied: int = 0
    skipped: int = 0
    failed: int = 0
    cancelled: int = 0
    pending: int = 0
    reasons: dict[str, int] = Field(default_factory=dict, description="Skips by reason code.")


class BatchView(BaseModel):
    id: int
    action: str
    params: dict[str, Any]
    status: str
    total: int
    counts: Counts
    percent: float
    rate_per_second: float | None = Field(description="Learners finished per second so far.")
    eta_seconds: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_reason: str | None = Field(
        default=None,
        description="Why it was cancelled: `cancelled_by_admin` (the cancel endpoint) or "
        "`admin_lost_access` (its admin was deactivated or deleted).",
    )
    retry_of: int | None = Field(
        default=None,
        description="The batch whose failed learners this batch retries "
        "(`POST /v1/batches/{id}/retry`).",
    )


class Unmatched(BaseModel):
    """The identifiers of an `emails` or `external_ids` selection that match
    no learner of the school (count 0 for every other selection). They are
    answered here only: never stored, never logged."""

    count: int = 0
    first: list[str] = Field(
        default_factory=list,
        description=f"The first {UNMATCHED_SHOWN} of them, as sent, in the order sent.",
    )


class SubmittedView(BatchView):
    unmatched: Unmatched


class DryRunView(BaseModel):
    dry_run: Literal[True] = True
    action: str
    total: int
    counts: Counts
    unmatched: Unmatched


class BatchList(BaseModel):
    batches: list[BatchView]
    next_cursor: int | None


class ItemView(BaseModel):
    learner_id: int
    outcome: str
    reason: str | None
    error: str | None
    finished_at: datetime | None


class ItemPage(BaseModel):
    items: list[ItemView]
    next_cursor: int | None


class LearnerView(BaseModel):
    id: int
    email: str | None
    name: str | None
    external_id: str | None = Field(
        default=None, description="The school's own identifier for the learner."
    )
    status: str
    is_admin: bool


class LearnerPage(BaseModel):
    learners: list[LearnerView]
    next_cursor: int | None


class AccessView(BaseModel):
    learner_id: int
    course_ids: list[int]
    learning_path_ids: list[int]


class Problem(BaseModel):
    detail: str


# Rails on destructive actions and retries (issue #14 sections 3 and 5).


class Conflict(Problem):
    """409: the request conflicts with what is stored. A destructive submit
    whose selection no longer has the count the admin confirmed also says
    both counts (nothing was created; run the dry run again)."""

    total: int | None = Field(default=None, description="How many learners the selection has now.")
    expected_total: int | None = Field(default=None, description="The count the request carried.")


# --- The audit trail and API tokens (GET /v1/audit, GET|DELETE /v1/tokens) ---


def _in_utc(value: datetime) -> datetime:
    """A moment to compare stored UTC times with: one without an offset is
    taken as UTC; one that has no UTC equivalent (year 1 with a positive
    offset) is a 422, not a 500 when it is bound."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None


def _written_as_a_date(value: object) -> object:
    """Only an ISO 8601 date-time, as the schema says: pydantic would also
    take a number (`0.5`) as seconds since 1970."""
    if not isinstance(value, str) or not ISO_DATE.match(value):
        raise ValueError("an ISO 8601 date and time, e.g. 2026-11-29T12:00:00Z")
    return value


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
Moment = Annotated[datetime, BeforeValidator(_written_as_a_date), AfterValidator(_in_utc)]


class AuditEntryView(BaseModel):
    """One entry of the trail. `action` is a batch action for a learner's
    outcome (`learner_id` set, `outcome` applied/skipped/failed, `reason` a
    reason code), `finalize_deletion` for a purge, or an event:
    `batch.submitted`, `batch.cancelled` (`actor_id` who cancelled, `reason`
    why), `batch.finished` (`outcome` the final status), `token.issued`,
    `token.revoked` (`learner_id` the token's admin, `token_id`)."""

    id: int
    created_at: datetime
    actor_id: int | None = Field(description="The admin who acted; null for the system.")
    learner_id: int | None
    batch_id: int | None
    token_id: int | None
    action: str
    outcome: str
    reason: str | None


class AuditPage(BaseModel):
    entries: list[AuditEntryView]
    next_cursor: int | None


class TokenView(BaseModel):
    """An API token as an admin may see it: never the secret, never its hash."""

    id: int
    learner_id: int = Field(description="The admin the token acts as.")
    label: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class TokenList(BaseModel):
    tokens: list[TokenView]
