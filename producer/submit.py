"""Submitting a batch: validate against the school, freeze, and hand over to
dispatch. Everything here happens in the request's one transaction, so a
batch exists with its full selection or not at all."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from producer.idempotency import IdempotencyKey
from producer.predict import predict
from producer.schemas import (
    MAX_EXPLICIT_IDS,
    BatchRequest,
    EmailsSelection,
    ExternalIdsSelection,
    LearnerIdsSelection,
)
from producer.selection import freeze_selection
from shared.actions import Actor
from shared.contract import Action
from shared.db import now
from shared.models import ACTIVE_BATCH_STATUSES, Batch, BatchStatus, Course, Group, School

QUOTA_WINDOW = timedelta(hours=1)
# Selections that name each learner: the admin has seen every one.
EXPLICIT_LISTS = (LearnerIdsSelection, EmailsSelection, ExternalIdsSelection)


# Stands for the search text in a batch's stored selection.
SEARCH_NOT_KEPT = "[not kept]"


class SubmitError(Exception):
    """A request the API refuses; `status` is the HTTP code, `field` the body path."""

    def __init__(
        self,
        status: int,
        field: str | None,
        message: str,
        retry_after: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message
        self.retry_after = retry_after
        # More of the answer's body, beside `detail` (a 409's real count).
        self.extra = extra or {}


@dataclass
class Submitted:
    batch: Batch
    replayed: bool = False
    not_found: int = 0


def request_hash(request: BatchRequest) -> str:
    """The body's fingerprint for Idempotency-Key. Every list in a request is
    a set (ids, statuses), so `[61, 60]` and `[60, 61, 60]` are one body."""
    plain = _plain(request)
    if plain.get("expected_total") is None:
        # As before the field existed: a retry across the upgrade still matches.
        plain.pop("expected_total", None)
    body = json.dumps(_as_sets(plain), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _as_sets(value):
    if isinstance(value, dict):
        return {key: _as_sets(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted(set(value))
    return value


def _plain(request: BatchRequest) -> dict:
    # Dumped part by part: pydantic cannot re-discriminate the selection union.
    body = request.model_dump(mode="json", exclude={"selection"})
    body["selection"] = request.selection.model_dump(mode="json")
    return body


def params_for(session: Session, actor: Actor, request: BatchRequest) -> dict:
    """The action's params, checked: the right list for the action, nothing
    else, and every id a group or course of this school."""
    wanted = request.action.param_name
    given = request.params.model_dump(exclude_none=True)
    for name in given:
        if name != wanted:
            raise SubmitError(422, f"params.{name}", f"{request.action} takes no {name}; remove it")
    if wanted is None:
        return {}
    if wanted not in given:
        raise SubmitError(
            422, f"params.{wanted}", f"{request.action} needs {wanted}: a non-empty list of ids"
        )
    ids = sorted(set(given[wanted]))
    model = Group if request.action == Action.ADD_TO_GROUP else Course
    known = set(
        session.scalars(
            select(model.id).where(model.school_id == actor.school_id, model.id.in_(ids))
        )
    )
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise SubmitError(
            422,
            f"params.{wanted}",
            f"no such {model.__tablename__[:-1]} in this school: {unknown[:20]}",
        )
    return {wanted: ids}


def check_size(request: BatchRequest) -> None:
    selection = request.selection
    if isinstance(selection, LearnerIdsSelection) and len(selection.learner_ids) > MAX_EXPLICIT_IDS:
        raise SubmitError(
            413,
            "selection.learner_ids",
            f"{len(selection.learner_ids):,} ids is more than {MAX_EXPLICIT_IDS:,}; "
            "select with a filter (and exclude_ids) instead",
        )


def dry_run(
    session: Session, actor: Actor, request: BatchRequest, invite_cooldown_seconds: float = 0
) -> dict:
    check_size(request)
    params = params_for(session, actor, request)
    return predict(
        session, actor, request.action, params, request.selection, invite_cooldown_seconds
    )


def submit(
    session: Session,
    actor: Actor,
    request: BatchRequest,
    idempotency_key: IdempotencyKey | None = None,
    max_active_batches: int | None = None,
    learners_per_hour: int | None = None,
) -> Submitted:
    """Create the batch and its frozen items, or return the batch this
    Idempotency-Key already made for the same body."""
    check_size(request)
    fingerprints, replayed = earlier(session, actor, idempotency_key, request_hash(request))
    if replayed is not None:
        return replayed
    check_expected_total_given(request)
    params = params_for(session, actor, request)
    admit(session, actor, max_active_batches, learners_per_hour)
    created = new_batch(
        session,
        actor,
        idempotency_key,
        fingerprints,
        action=request.action.value,
        params=params,
        selection=_selection_summary(request),
    )
    if isinstance(created, Submitted):
        return created
    batch = created
    total, not_found = freeze_selection(session, batch.id, actor, request.selection)
    if total == 0:
        raise SubmitError(422, "selection", "the selection matches no learners; nothing to do")
    check_expected_total(request, total)
    batch.total = total
    session.flush()
    check_quota_with_batch(session, actor, learners_per_hour)
    return Submitted(batch, not_found=not_found)


def check_quota_with_batch(session: Session, actor: Actor, learners_per_hour: int | None) -> None:
    """After freezing (the new batch's total flushed): the hourly quota with
    this batch's learners counted."""
    if learners_per_hour is not None:
        _check_hourly_quota(session, actor, learners_per_hour, adding=0)


def admit(
    session: Session,
    actor: Actor,
    max_active_batches: int | None,
    learners_per_hour: int | None,
) -> None:
    """The limits every new batch passes (a submit, a retry), under the
    school's lock until commit."""
    _lock_school(session, actor)
    if max_active_batches is not None:
        _check_running_cap(session, actor, max_active_batches)
    if learners_per_hour is not None:
        # Refused before freezing when the quota is already spent.
        _check_hourly_quota(session, actor, learners_per_hour, adding=1)


def new_batch(
    session: Session,
    actor: Actor,
    idempotency_key: IdempotencyKey | None,
    fingerprints: tuple[str, ...],
    **columns: Any,
) -> Batch | Submitted:
    """Insert the running batch row (no items yet); or, when a concurrent
    request with the same Idempotency-Key won the race, that request's batch
    as a replay."""
    try:
        with session.begin_nested():
            batch = Batch(
                school_id=actor.school_id,
                actor_id=actor.admin_id,
                status=BatchStatus.RUNNING,
                idempotency_key=idempotency_key.stored if idempotency_key else None,
                request_hash=fingerprints[0] if fingerprints else None,
                started_at=now(),
                **columns,
            )
            session.add(batch)
            session.flush()
    except IntegrityError:
        # Another request with this key won the race; without a key, or with
        # no batch under it, the conflict is something else.
        winner = by_key(session, actor, idempotency_key) if idempotency_key else None
        if winner is None:
            raise
        return replay(winner, fingerprints)
    return batch


def needs_expected_total(request: BatchRequest) -> bool:
    """A destructive action over a filter (or any selection but an explicit
    list): an empty filter is the whole school, so the admin must have seen
    the count."""
    return request.action.destructive and not isinstance(request.selection, EXPLICIT_LISTS)


def check_expected_total_given(request: BatchRequest) -> None:
    if needs_expected_total(request) and request.expected_total is None:
        raise SubmitError(
            422,
            "expected_total",
            f"{request.action} over a filter needs expected_total: run a dry run first "
            "(dry_run: true) and send the total it answered, once the admin confirmed it",
        )


def check_expected_total(request: BatchRequest, total: int) -> None:
    """After freezing, in the batch's transaction: a different count rolls the
    batch and its items back."""
    expected = request.expected_total
    if expected is None or expected == total:
        return
    raise SubmitError(
        409,
        "expected_total",
        f"the selection has {total:,} learners now, not the {expected:,} of expected_total; "
        "nothing was created: run the dry run again and confirm its count",
        extra={"total": total, "expected_total": expected},
    )


def _lock_school(session: Session, actor: Actor) -> None:
    """Serialise the school's submits until commit, so two cannot both take the
    last running place or the last of the hourly quota. SQLite has no row
    locks: a write takes its database lock, and also opens the transaction
    (pysqlite begins one only at a write, so the batch's SAVEPOINT would
    otherwise be the outermost transaction and commit on release, leaving a
    refused batch behind)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(School).where(School.id == actor.school_id).values(name=School.name))
    else:
        session.execute(select(School.id).where(School.id == actor.school_id).with_for_update())


def _check_hourly_quota(session: Session, actor: Actor, quota: int, adding: int) -> None:
    """At most SELECTED_LEARNERS_PER_HOUR learners selected per school in any
    hour, counted in the database (every replica agrees, Redis or not) over
    every batch, also those that finished at once (unknown ids): one token
    could otherwise fill the database with `not_found` items."""
    since = now() - QUOTA_WINDOW
    in_window = (Batch.school_id == actor.school_id, Batch.created_at > since)
    used = session.execute(
        select(func.coalesce(func.sum(Batch.total), 0)).where(*in_window)
    ).scalar_one()
    excess = used + adding - quota
    if excess <= 0:
        return
    retry = QUOTA_WINDOW
    freed = 0
    for created_at, total in session.execute(
        select(Batch.created_at, Batch.total).where(*in_window).order_by(Batch.created_at)
    ):
        freed += total
        if freed >= excess:
            retry = created_at + QUOTA_WINDOW - now()
            break
    seconds = max(1, math.ceil(retry.total_seconds()))
    raise SubmitError(
        429,
        None,
        f"your school selected {used:,} learners in the last hour (the limit is {quota:,} "
        f"an hour); retry in {seconds}s, or select fewer learners",
        retry_after=seconds,
    )


def _check_running_cap(session: Session, actor: Actor, cap: int) -> None:
    """At most MAX_ACTIVE_BATCHES_PER_SCHOOL running at once (the caller holds
    the school's lock)."""
    running = session.execute(
        select(func.count()).where(
            Batch.school_id == actor.school_id,
            Batch.status.in_(ACTIVE_BATCH_STATUSES),
        )
    ).scalar_one()
    if running >= cap:
        raise SubmitError(
            429,
            None,
            f"your school already has {running} batches running (the limit is {cap}); "
            "wait for one to finish or cancel one",
            retry_after=30,
        )


def earlier(
    session: Session, actor: Actor, key: IdempotencyKey | None, body_hash: str
) -> tuple[tuple[str, ...], Submitted | None]:
    """The body's fingerprints under the key, and the batch this key already
    made for the same body (a replay), if any. Fingerprints are kept only with
    a key, and keyed: a body can quote an email (`q`)."""
    if key is None:
        return (), None
    fingerprints = key.body_fingerprints(body_hash)
    existing = by_key(session, actor, key)
    return fingerprints, None if existing is None else replay(existing, fingerprints)


def by_key(session: Session, actor: Actor, key: IdempotencyKey) -> Batch | None:
    return session.scalar(
        select(Batch).where(
            Batch.school_id == actor.school_id, Batch.idempotency_key.in_(key.accepted)
        )
    )


def replay(batch: Batch, fingerprints: tuple[str, ...]) -> Submitted:
    if batch.request_hash not in fingerprints:
        raise SubmitError(
            409,
            "Idempotency-Key",
            "this Idempotency-Key was used with a different body; use a new key",
        )
    return Submitted(batch, replayed=True)


def _selection_summary(request: BatchRequest) -> dict:
    """What was selected, for the record; explicit lists are in batch_items
    (as learner ids), so only their length is kept: emails and external ids,
    matched or not, are not. A search text is not kept either: it is often an
    email or a name, and the batch row outlives the learner's erasure. The
    items say who was selected."""
    selection = _plain(request)["selection"]
    for listed in ("learner_ids", "emails", "external_ids"):
        if listed in selection:
            return {listed: len(selection[listed])}
    if "exclude_ids" in selection:
        selection["exclude_ids"] = len(selection["exclude_ids"])
    if selection.get("filter", {}).get("q") is not None:
        selection["filter"]["q"] = SEARCH_NOT_KEPT
    return selection
