"""`/v1/webhooks`: a school's completion webhook endpoints and their deliveries.

Routes parse, authorize and shape; the work is in the plain functions
below, each taking a session and the school. An endpoint's signing secret
is answered once, when it is created or rotated, and never listed; it is
stored sealed (`shared.webhooks.seal`). Another school's endpoint behaves
exactly like one that does not exist.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from producer.auth import reader, writer
from producer.deps import RuntimeDep, get_session
from producer.schemas import MAX_ID, Problem
from shared.actions import Actor
from shared.db import now
from shared.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from shared.settings import Settings
from shared.webhooks import (
    EventType,
    RefusedEndpoint,
    check_endpoint,
    new_secret,
    seal,
    sealing_keys,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
Reader = Annotated[Actor, Depends(reader)]
Writer = Annotated[Actor, Depends(writer)]
SessionDep = Annotated[Session, Depends(get_session)]
EndpointId = Annotated[int, Path(ge=1, le=MAX_ID)]
# A school's endpoints: each one multiplies every batch's deliveries.
MAX_ENDPOINTS_PER_SCHOOL = 10
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing, invalid or revoked token."},
    403: {"model": Problem, "description": "Not an admin, or the token lacks the scope."},
    429: {"model": Problem, "description": "Too many requests; see Retry-After."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such endpoint in your school."}
}


class EndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=2048,
        description="Where to POST the events: https:// (plain http only with "
        "WEBHOOK_ALLOW_HTTP), on a public address (docs/SECURITY.md, Webhooks).",
        examples=["https://sis.example.org/hooks/batch-actions"],
    )
    events: list[EventType] = Field(
        min_length=1,
        max_length=len(EventType),
        description="The events to receive: batch.completed (also when some "
        "learners failed: the counts say how many), batch.cancelled, batch.failed.",
    )

    @field_validator("events")
    @classmethod
    def _each_once(cls, events: list[EventType]) -> list[EventType]:
        return list(dict.fromkeys(events))


class EndpointView(BaseModel):
    """An endpoint as listed: never its secret."""

    id: int
    url: str
    events: list[EventType]
    created_at: datetime
    previous_secret_valid_until: datetime | None = Field(
        description="After a rotation, deliveries are signed with the previous secret "
        "too until then (a second `v1,` signature in `webhook-signature`)."
    )


class EndpointCreated(EndpointView):
    secret: str = Field(
        description="The signing secret (`whsec_...`), shown this once: verify each "
        "delivery's `webhook-signature` with it (Standard Webhooks)."
    )


class EndpointList(BaseModel):
    endpoints: list[EndpointView]


class AttemptView(BaseModel):
    attempted_at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status, if it answered.")
    error: str | None = Field(
        description="Why there was no answer: timeout, address_refused, ConnectError..."
    )
    duration_ms: int


class DeliveryView(BaseModel):
    id: int
    event_id: int
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    type: EventType
    batch_id: int
    status: str = Field(description="pending (being tried), delivered, or failed (given up).")
    attempts: int
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried next.")
    delivered_at: datetime | None
    created_at: datetime
    attempt_log: list[AttemptView] = Field(description="Every attempt, oldest first.")


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryView]
    next_cursor: int | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


def _view(endpoint: WebhookEndpoint) -> dict[str, Any]:
    until = endpoint.previous_secret_until
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.events.split(),
        "created_at": endpoint.created_at,
        "previous_secret_valid_until": until if until is not None and until > now() else None,
    }


def _endpoint(session: Session, school_id: int, endpoint_id: int) -> WebhookEndpoint:
    endpoint = session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.school_id == school_id
        )
    )
    if endpoint is None:  # another school's endpoint looks exactly like a missing one
        raise HTTPException(404, f"no webhook endpoint {endpoint_id} in your school")
    return endpoint


def register(
    session: Session, settings: Settings, actor: Actor, request: EndpointRequest
) -> EndpointCreated:
    """Store a checked endpoint with a new secret; the secret is in the answer only."""
    try:
        check_endpoint(request.url, settings)
    except RefusedEndpoint as exc:
        raise HTTPException(
            422, [{"loc": ["body", "url"], "msg": str(exc), "type": "value_error"}]
        ) from None
    count = session.scalar(select(func.count()).where(WebhookEndpoint.school_id == actor.school_id))
    if (count or 0) >= MAX_ENDPOINTS_PER_SCHOOL:
        raise HTTPException(
            409,
            f"your school has {MAX_ENDPOINTS_PER_SCHOOL} webhook endpoints, the most it may "
            "have; delete one first (DELETE /v1/webhooks/{id})",
        )
    secret = new_secret()
    endpoint_id = session.execute(
        insert(WebhookEndpoint)
        .values(
            school_id=actor.school_id,
            url=request.url,
            events=" ".join(request.events),
            secret=seal(sealing_keys(settings)[0], secret),
            created_by=actor.admin_id,
        )
        .returning(WebhookEndpoint.id)
    ).scalar_one()
    endpoint = _endpoint(session, actor.school_id, endpoint_id)
    return EndpointCreated(**_view(endpoint), secret=secret)


def rotate(session: Session, settings: Settings, actor: Actor, endpoint_id: int) -> EndpointCreated:
    """A new secret signs from now on; the one it replaces signs too (a second
    signature) for WEBHOOK_SECRET_GRACE_HOURS. A secret replaced during an
    earlier grace period stops at once: only the latest two sign."""
    endpoint = _endpoint(session, actor.school_id, endpoint_id)
    secret = new_secret()
    grace = timedelta(hours=settings.webhook_secret_grace_hours)
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint.id)
        .values(
            secret=seal(sealing_keys(settings)[0], secret),
            previous_secret=endpoint.secret if grace else None,
            previous_secret_until=now() + grace if grace else None,
        )
        .execution_options(synchronize_session=False)
    )
    session.expire(endpoint)
    return EndpointCreated(**_view(_endpoint(session, actor.school_id, endpoint_id)), secret=secret)


def deliveries_page(
    session: Session, endpoint_id: int, cursor: int | None, limit: int
) -> DeliveryPage:
    """The endpoint's deliveries, newest first, each with its attempts."""
    query = (
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        query = query.where(WebhookDelivery.id < cursor)
    rows = session.execute(query).all()
    page = rows[:limit]
    attempts: dict[int, list[AttemptView]] = {}
    if page:
        for attempt in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_([d.id for d, _ in page]))
            .order_by(WebhookAttempt.id)
        ):
            attempts.setdefault(attempt.delivery_id, []).append(
                AttemptView(
                    attempted_at=attempt.attempted_at,
                    status_code=attempt.status_code,
                    error=attempt.error,
                    duration_ms=attempt.duration_ms,
                )
            )
    return DeliveryPage(
        deliveries=[
            DeliveryView(
                id=delivery.id,
                event_id=event.id,
                webhook_id=event.message_id,
                type=EventType(event.type),
                batch_id=event.batch_id,
                status=delivery.status,
                attempts=delivery.attempts,
                next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
                delivered_at=delivery.delivered_at,
                created_at=delivery.created_at,
                attempt_log=attempts.get(delivery.id, []),
            )
            for delivery, event in page
        ],
        next_cursor=page[-1][0].id if len(rows) > limit else None,
    )


@router.post(
    "",
    status_code=201,
    response_model=EndpointCreated,
    responses={
        **ERRORS,
        409: {"model": Problem, "description": "The school has the most endpoints it may have."},
        422: {"description": "A field is invalid, or the URL is refused (named in the error)."},
    },
)
def create_webhook(
    body: EndpointRequest, actor: Writer, session: SessionDep, runtime: RuntimeDep
) -> EndpointCreated:
    """Register an endpoint for the school's batch events. The answer holds the
    signing secret, shown this once."""
    created = register(session, runtime.settings, actor, body)
    session.commit()
    return created


@router.get("", response_model=EndpointList, responses=ERRORS)
def list_webhooks(actor: Reader, session: SessionDep) -> EndpointList:
    """The school's endpoints, newest first; never a secret."""
    endpoints = session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.school_id == actor.school_id)
        .order_by(WebhookEndpoint.id.desc())
    )
    return EndpointList(endpoints=[EndpointView(**_view(e)) for e in endpoints])


@router.delete("/{endpoint_id}", status_code=204, responses={**ERRORS, **NOT_FOUND})
def delete_webhook(endpoint_id: EndpointId, actor: Writer, session: SessionDep) -> Response:
    """Remove an endpoint, its deliveries and their attempts; nothing more is sent to it."""
    endpoint = _endpoint(session, actor.school_id, endpoint_id)
    session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id))
    session.commit()
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=EndpointCreated,
    responses={**ERRORS, **NOT_FOUND},
)
def rotate_webhook_secret(
    endpoint_id: EndpointId, actor: Writer, session: SessionDep, runtime: RuntimeDep
) -> EndpointCreated:
    """A new signing secret, shown this once. The previous one signs too (a
    second `v1,` signature) until `previous_secret_valid_until`
    (WEBHOOK_SECRET_GRACE_HOURS), so receivers can switch without a gap."""
    rotated = rotate(session, runtime.settings, actor, endpoint_id)
    session.commit()
    return rotated


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=DeliveryPage,
    responses={**ERRORS, **NOT_FOUND},
)
def list_deliveries(
    endpoint_id: EndpointId,
    actor: Reader,
    session: SessionDep,
    cursor: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="`next_cursor` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryPage:
    """The endpoint's deliveries, newest first, with every attempt."""
    endpoint = _endpoint(session, actor.school_id, endpoint_id)
    return deliveries_page(session, endpoint.id, cursor, limit)
