"""HTTP routes: parse, authorize, call a function, shape the response."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from producer.access import access
from producer.audit import AuditQuery, audit_page, csv_lines, next_cursor
from producer.auth import reader, writer
from producer.deps import RuntimeDep, get_session
from producer.idempotency import hashed
from producer.items import ItemsQuery, items_page
from producer.items import csv_lines as items_csv_lines
from producer.retry import retry_failed
from producer.schemas import (
    MAX_ID,
    AccessView,
    AuditEntryView,
    AuditPage,
    BatchList,
    BatchRequest,
    BatchView,
    Conflict,
    Counts,
    DryRunView,
    ItemPage,
    ItemView,
    LearnerFilter,
    LearnerPage,
    LearnerView,
    Moment,
    PeopleStatus,
    Problem,
    SearchText,
    SubmittedView,
    TokenList,
    TokenView,
)
from producer.selection import filter_conditions, shown_status, unmatched_identifiers
from producer.submit import Submitted, dry_run, submit
from producer.tokens import list_tokens, revoke_token
from producer.views import batch_view
from shared.actions import Actor
from shared.audit import record_submitted
from shared.batches import CancelReason, request_cancel
from shared.contract import Action
from shared.models import (
    FINISHED_BATCH_STATUSES,
    Batch,
    BatchStatus,
    Group,
    Learner,
    LearnerStatus,
)
from shared.runtime import Runtime

router = APIRouter(prefix="/v1")
Reader = Annotated[Actor, Depends(reader)]
Writer = Annotated[Actor, Depends(writer)]
SessionDep = Annotated[Session, Depends(get_session)]
Cursor = Annotated[
    int | None, Query(ge=0, le=MAX_ID, description="`next_cursor` of the previous page.")
]
Limit = Annotated[int, Query(ge=1, le=500)]
BatchId = Annotated[int, Path(ge=1, le=MAX_ID)]
LearnerIdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing, invalid or revoked token."},
    403: {"model": Problem, "description": "Not an admin, or the token lacks the scope."},
    429: {
        "model": Problem,
        "description": "Too many requests, running batches or learners this hour; see Retry-After.",
    },
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such batch in your school."}
}


def _batch(session: Session, actor: Actor, batch_id: int) -> Batch:
    batch = session.scalar(
        select(Batch).where(Batch.id == batch_id, Batch.school_id == actor.school_id)
    )
    if batch is None:  # another school's batch looks exactly like a missing one
        raise HTTPException(404, f"no batch {batch_id} in your school")
    return batch


@router.post(
    "/batches",
    status_code=202,
    response_model=SubmittedView,
    responses={
        **ERRORS,
        200: {"model": DryRunView, "description": "Dry run: the counts each outcome would have."},
        400: {"model": Problem, "description": "The body is not JSON."},
        409: {
            "model": Conflict,
            "description": "Idempotency-Key reused with another body; or `expected_total` "
            "is not the selection's count (which `total` gives): nothing was created.",
        },
        413: {"model": Problem, "description": "Too many explicit learner ids."},
    },
)
def create_batch(
    body: BatchRequest,
    request: Request,
    response: Response,
    actor: Writer,
    session: SessionDep,
    runtime: RuntimeDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
):
    """Freeze the selection into a batch and start dispatch; with `dry_run`,
    only count what each outcome would be."""
    request.state.batch_action = body.action.value
    if body.dry_run:
        counts = dry_run(session, actor, body, runtime.settings.invite_cooldown_seconds)
        total = counts.pop("total")
        unmatched = unmatched_identifiers(session, actor, body.selection)
        return JSONResponse(
            DryRunView(
                action=body.action, total=total, counts=Counts(**counts), unmatched=unmatched
            ).model_dump(mode="json")
        )
    settings = runtime.settings
    submitted = submit(
        session,
        actor,
        body,
        hashed(idempotency_key, settings),
        settings.max_active_batches_per_school,
        settings.selected_learners_per_hour,
    )
    if not submitted.replayed:
        record_submitted(session, actor.school_id, submitted.batch.id, actor.admin_id)
    # Answered, never stored (a replay answers them as they are now).
    unmatched = unmatched_identifiers(session, actor, body.selection)
    session.commit()
    if not submitted.replayed and submitted.not_found:
        runtime.progress.add(submitted.batch.id, "skipped:not_found", submitted.not_found)
    view = _accepted(request, response, session, runtime, submitted)
    return SubmittedView(**dict(view), unmatched=unmatched)


@router.get("/batches", response_model=BatchList, responses=ERRORS)
def list_batches(
    actor: Reader,
    session: SessionDep,
    runtime: RuntimeDep,
    cursor: Cursor = None,
    limit: Limit = 20,
    status: Annotated[BatchStatus | None, Query(description="Only batches in this status.")] = None,
    action: Annotated[Action | None, Query(description="Only batches of this action.")] = None,
):
    """The school's batches, newest first."""
    query = select(Batch).where(Batch.school_id == actor.school_id)
    if status is not None:
        query = query.where(Batch.status == status.value)
    if action is not None:
        query = query.where(Batch.action == action.value)
    if cursor:
        query = query.where(Batch.id < cursor)
    batches = session.scalars(query.order_by(Batch.id.desc()).limit(limit)).all()
    return BatchList(
        batches=[batch_view(session, b, runtime.progress) for b in batches],
        next_cursor=batches[-1].id if len(batches) == limit else None,
    )


@router.get("/batches/{batch_id}", response_model=BatchView, responses={**ERRORS, **NOT_FOUND})
def get_batch(batch_id: BatchId, actor: Reader, session: SessionDep, runtime: RuntimeDep):
    """Status, counts by outcome and reason, percent, rate and ETA."""
    return batch_view(session, _batch(session, actor, batch_id), runtime.progress)


ITEMS_CSV_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The page as JSON; with `Accept: text/csv` or `?format=csv`, every "
        "matching item from the cursor on, as CSV: a header line `learner_id,external_id,"
        "email,outcome,reason,error,finished_at`, then one item a line (empty cells for "
        "null; `email` and `external_id` empty once the learner is purged; an `external_id` "
        "or `email` that starts with `=`, `+`, `-` or `@` gets a leading `'`).",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/batches/{batch_id}/items",
    response_model=ItemPage,
    responses={**ERRORS, **NOT_FOUND, **ITEMS_CSV_ANSWER},
)
def list_items(
    request: Request,
    batch_id: BatchId,
    actor: Reader,
    session: SessionDep,
    runtime: RuntimeDep,
    outcome: Annotated[
        str | None, Query(pattern="^(pending|applied|skipped|failed|cancelled)$")
    ] = None,
    reason: Annotated[str | None, Query(max_length=32)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
    format: Annotated[Literal["json", "csv"] | None, Query()] = None,
):
    """Per-learner results with reason codes, by learner id; as CSV, the
    whole result in one streamed answer, with each learner's `external_id`
    and `email`."""
    _batch(session, actor, batch_id)
    query = ItemsQuery(
        school_id=actor.school_id, batch_id=batch_id, outcome=outcome, reason=reason, cursor=cursor
    )
    if wants_csv(request, format):
        return StreamingResponse(
            items_csv_lines(runtime.sessions, query),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="batch-{batch_id}-items.csv"'},
        )
    items = items_page(session, query, limit)
    return ItemPage(
        items=[
            ItemView(
                learner_id=i.learner_id,
                outcome=i.outcome,
                reason=i.reason,
                error=i.error,
                finished_at=i.finished_at,
            )
            for i in items
        ],
        next_cursor=items[-1].learner_id if len(items) == limit else None,
    )


@router.post(
    "/batches/{batch_id}/cancel",
    status_code=202,
    response_model=BatchView,
    responses={**ERRORS, **NOT_FOUND, 409: {"model": Problem, "description": "Already finished."}},
)
def cancel_batch(
    batch_id: BatchId, request: Request, actor: Writer, session: SessionDep, runtime: RuntimeDep
):
    """Stop starting new learners; unfinished ones end `cancelled`."""
    batch = _batch(session, actor, batch_id)
    if batch.status in FINISHED_BATCH_STATUSES:
        raise HTTPException(409, f"batch {batch_id} is {batch.status}; nothing to cancel")
    request_cancel(session, batch_id, CancelReason.BY_ADMIN, actor_id=actor.admin_id)
    session.commit()
    session.refresh(batch)
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()
    return batch_view(session, batch, runtime.progress)


@router.post(
    "/batches/{batch_id}/retry",
    status_code=202,
    response_model=BatchView,
    responses={
        **ERRORS,
        **NOT_FOUND,
        409: {
            "model": Problem,
            "description": "Nothing failed, the batch is still running, or the "
            "Idempotency-Key was used for another request.",
        },
    },
)
def retry_batch(
    batch_id: BatchId,
    request: Request,
    response: Response,
    actor: Writer,
    session: SessionDep,
    runtime: RuntimeDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
):
    """A new batch of the learners whose items ended `failed`: same action and
    params, `retry_of` naming this batch."""
    settings = runtime.settings
    retried = retry_failed(
        session,
        actor,
        batch_id,
        hashed(idempotency_key, settings),
        settings.max_active_batches_per_school,
        settings.selected_learners_per_hour,
    )
    if not retried.replayed:
        record_submitted(session, actor.school_id, retried.batch.id, actor.admin_id)
    session.commit()
    return _accepted(request, response, session, runtime, retried)


def _accepted(
    request: Request, response: Response, session: Session, runtime: Runtime, made: Submitted
) -> BatchView:
    """A new (or replayed) batch's answer: dispatch woken, Location set."""
    if made.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()
    response.headers["Location"] = f"/v1/batches/{made.batch.id}"
    return batch_view(session, made.batch, runtime.progress)


@router.get(
    "/learners",
    response_model=LearnerPage,
    responses={**ERRORS, 404: {"model": Problem, "description": "No such group."}},
)
def list_learners(
    actor: Reader,
    session: SessionDep,
    status: Annotated[list[PeopleStatus] | None, Query()] = None,
    group_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    q: Annotated[SearchText | None, Query()] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
):
    """The people list: the same filter a batch `selection.filter` takes."""
    if group_id is not None and not session.scalar(
        select(Group.id).where(Group.id == group_id, Group.school_id == actor.school_id)
    ):
        raise HTTPException(404, f"no group {group_id} in your school")
    conditions = filter_conditions(actor, LearnerFilter(status=status, group_id=group_id, q=q))
    query = select(Learner).where(*conditions)
    if cursor:
        query = query.where(Learner.id > cursor)
    learners = session.scalars(query.order_by(Learner.id).limit(limit)).all()
    return LearnerPage(
        learners=[
            LearnerView(
                id=le.id,
                email=le.email,
                name=le.name,
                external_id=le.external_id,
                status=shown_status(le.status),
                is_admin=le.is_admin,
            )
            for le in learners
        ],
        next_cursor=learners[-1].id if len(learners) == limit else None,
    )


@router.get(
    "/learners/{learner_id}/access",
    response_model=AccessView,
    responses={**ERRORS, 404: {"model": Problem, "description": "No such learner."}},
)
def learner_access(learner_id: LearnerIdPath, actor: Reader, session: SessionDep):
    """Courses and learning paths the learner can open right now."""
    status = session.scalar(
        select(Learner.status).where(Learner.id == learner_id, Learner.school_id == actor.school_id)
    )
    if status is None or status == LearnerStatus.DELETED:
        raise HTTPException(404, f"no learner {learner_id} in your school")
    granted = access(session, actor.school_id, learner_id)
    return AccessView(
        learner_id=learner_id,
        course_ids=sorted(granted.course_ids),
        learning_path_ids=sorted(granted.learning_path_ids),
    )


# --- The audit trail (GET /v1/audit) and API tokens (GET|DELETE /v1/tokens) ---

CSV_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The page as JSON; with `Accept: text/csv` or `?format=csv`, every "
        "matching entry from the cursor on, as CSV (a header line, then one entry a line).",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


def wants_csv(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "csv"
    return "text/csv" in request.headers.get("accept", "")


@router.get("/audit", response_model=AuditPage, responses={**ERRORS, **CSV_ANSWER})
def read_audit(
    request: Request,
    actor: Reader,
    session: SessionDep,
    runtime: RuntimeDep,
    learner_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    batch_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    actor_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="The admin who acted.")
    ] = None,
    action: Annotated[
        str | None,
        Query(
            pattern=r"^[a-z_.]{1,32}$",
            description="A batch action, `finalize_deletion`, or an event such as "
            "`batch.cancelled` or `token.revoked`.",
        ),
    ] = None,
    since: Annotated[Moment | None, Query(description="At or after this moment.")] = None,
    until: Annotated[Moment | None, Query(description="Before this moment.")] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
    format: Annotated[Literal["json", "csv"] | None, Query()] = None,
):
    """The school's audit trail, newest first: every learner's outcomes,
    purges, batches submitted, cancelled (by whom, why) and finished, tokens
    issued and revoked. Learners appear by id only. Another school's ids
    match nothing."""
    query = AuditQuery(
        school_id=actor.school_id,
        learner_id=learner_id,
        batch_id=batch_id,
        actor_id=actor_id,
        action=action,
        since=since,
        until=until,
        cursor=cursor,
    )
    if wants_csv(request, format):
        return StreamingResponse(
            csv_lines(runtime.sessions, query),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
    rows = audit_page(session, query, limit)
    return AuditPage(
        entries=[AuditEntryView.model_validate(row, from_attributes=True) for row in rows],
        next_cursor=next_cursor(rows, limit),
    )


TokenId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("/tokens", response_model=TokenList, responses=ERRORS)
def read_tokens(
    actor: Reader,
    session: SessionDep,
    include_revoked: Annotated[bool, Query(description="Revoked tokens too.")] = False,
):
    """The school's API tokens, newest first; never the secret or its hash."""
    return TokenList(
        tokens=[
            TokenView(**vars(token))
            for token in list_tokens(session, actor.school_id, include_revoked)
        ]
    )


@router.delete(
    "/tokens/{token_id}",
    status_code=204,
    responses={**ERRORS, 404: {"model": Problem, "description": "No such token in your school."}},
)
def delete_token(token_id: TokenId, actor: Writer, session: SessionDep) -> Response:
    """Revoke a token of the school at once (audited as `token.revoked`);
    revoking a revoked token is a no-op."""
    if not revoke_token(session, actor.school_id, token_id, revoked_by=actor.admin_id):
        raise HTTPException(404, f"no token {token_id} in your school")
    session.commit()
    return Response(status_code=204)
