"""Delivering one webhook: claim the delivery, send it, record the attempt.

`deliver` runs for each `deliver_webhook` message (`(delivery_id,)`, published
by the reconciler, `shared.webhooks.publish_due`):

1. claim: the pending, due delivery is held (`locked_until`) for longer than
   an attempt may last, so a duplicate message does nothing and a killed
   worker's delivery is free again once the hold runs out;
2. send: the body (the batch's view, frozen on the event by the first
   attempt) is signed with the endpoint's secret(s), the URL's host resolved
   and checked again (`shared.webhooks.check_endpoint`), and the request sent
   to that checked address (`pin`), so a DNS answer that changed since the
   check cannot redirect it; redirects are not followed, the answer's body
   is not read;
3. record: a 2xx delivers; anything else is a failed attempt, retried after
   `shared.webhooks.backoff` until WEBHOOK_MAX_ATTEMPTS, then given up.

Dramatiq's Retries only ever retries a database error here: a failed HTTP
attempt is recorded and rescheduled in the delivery row, and the reconciler
publishes the retry when it is due.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import TYPE_CHECKING

import dramatiq
import httpx
from dramatiq.middleware.time_limit import TimeLimitExceeded
from prometheus_client import Counter
from sqlalchemy import insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.contract import WEBHOOK_QUEUE
from shared.db import now
from shared.models import (
    Batch,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from shared.progress import NoProgress
from shared.settings import Settings
from shared.webhooks import (
    EventType,
    RefusedEndpoint,
    UnreadableSecret,
    backoff,
    check_endpoint,
    sealing_keys,
    signed_headers,
    unseal,
)

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


OUTCOMES = ("delivered", "failed", "gave_up")


@cache
def deliveries_counter() -> Counter:
    counter = Counter(
        "batch_webhook_deliveries",
        "Webhook delivery attempts by event and outcome (delivered, failed: will "
        "be retried, gave_up: the last attempt failed).",
        ["event", "outcome"],
    )
    # Every series from the start, at 0: a rate() over a series that appears
    # with its first failure misses that failure, and the alerts would too.
    for event in EventType:
        for outcome in OUTCOMES:
            counter.labels(event.value, outcome)
    return counter


def attempt_seconds(settings: Settings) -> float:
    """The longest an attempt can take: connect, send and read each have the
    timeout; resolving the name is bounded by the time limit below."""
    return 3 * settings.webhook_timeout_seconds + 5


def hold(settings: Settings) -> timedelta:
    """How long a claim holds a delivery: past the actor's time limit, so the
    holder is surely done (or dead) when another worker may take it."""
    return timedelta(seconds=attempt_seconds(settings) + 5)


@dataclass(frozen=True)
class Target:
    event_type: str
    message_id: str
    body: bytes
    url: str
    secrets: list[str]


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def claim(session: Session, delivery_id: int, settings: Settings) -> bool:
    """Hold the delivery if it is pending, due and not held by another worker."""
    moment = now()
    return bool(
        session.connection()
        .execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at <= moment,
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < moment),
            )
            .values(
                locked_until=moment + hold(settings),
                claimed_at=moment,
                attempts=WebhookDelivery.attempts + 1,
            )
        )
        .rowcount
    )


def frozen_body(session: Session, event: WebhookEvent) -> bytes:
    """The event's body: the batch as `GET /v1/batches/{id}` shows it, under
    the Standard Webhooks envelope `{type, timestamp, data}`. Built by the
    first attempt and kept, so every attempt sends the same bytes."""
    if event.body is None:
        from producer.views import batch_view

        batch = session.get(Batch, event.batch_id)
        assert batch is not None  # the event is deleted with its batch
        view = batch_view(session, batch, NoProgress())
        body = json.dumps(
            {
                "type": event.type,
                "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
                "data": view.model_dump(mode="json"),
            },
            separators=(",", ":"),
        )
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event.id, WebhookEvent.body.is_(None))
            .values(body=body)
            .execution_options(synchronize_session=False)
        )
        session.flush()
        session.expire(event)
    assert event.body is not None
    return event.body.encode()


def load_target(session: Session, delivery_id: int, settings: Settings) -> Target | None:
    row = session.execute(
        select(WebhookEvent, WebhookEndpoint)
        .join(WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == delivery_id)
    ).first()
    if row is None:
        return None
    event, endpoint = row
    keys = sealing_keys(settings)
    sealed = [endpoint.secret]
    until = endpoint.previous_secret_until
    if endpoint.previous_secret and until is not None and until > now():
        sealed.append(endpoint.previous_secret)
    try:
        secrets = [unseal(keys, each) for each in sealed]
    except UnreadableSecret as exc:
        log.error("webhook endpoint %s: %s", endpoint.id, exc)
        secrets = []  # the attempt fails as `secret_unreadable`
    return Target(event.type, event.message_id, frozen_body(session, event), endpoint.url, secrets)


def pin(url: str, address: str) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """The request to `address` for `url`: the URL with the checked address
    as its host, the Host header and the TLS server name (certificate
    checked against it) kept as the URL's."""
    original = httpx.URL(url)
    pinned = original.copy_with(host=address)
    headers = {"host": original.netloc.decode("ascii")}
    extensions = {"sni_hostname": original.host} if original.scheme == "https" else {}
    return pinned, headers, extensions


def send(target: Target, settings: Settings) -> Attempt:
    """One HTTP attempt. Never raises for what the receiver or the network
    does: that is the attempt's outcome."""
    started = time.monotonic()

    def attempt(status_code: int | None, error: str | None) -> Attempt:
        return Attempt(status_code, error, int(1000 * (time.monotonic() - started)))

    if not target.secrets:
        return attempt(None, "secret_unreadable")

    try:
        addresses = check_endpoint(target.url, settings)
    except RefusedEndpoint:
        return attempt(None, "address_refused")
    url, host, extensions = pin(target.url, addresses[0])
    headers = signed_headers(target.secrets, target.message_id, int(time.time()), target.body)
    try:
        # trust_env=False: a proxy from the environment would connect elsewhere.
        with (
            httpx.Client(
                follow_redirects=False, timeout=settings.webhook_timeout_seconds, trust_env=False
            ) as client,
            client.stream(
                "POST", url, content=target.body, headers=headers | host, extensions=extensions
            ) as response,
        ):
            return attempt(response.status_code, None)
    except httpx.TimeoutException:
        return attempt(None, "timeout")
    except httpx.HTTPError as exc:
        return attempt(None, type(exc).__name__[:64])
    except TimeLimitExceeded:
        return attempt(None, "time_limit")


def record(session: Session, delivery_id: int, result: Attempt, settings: Settings) -> str | None:
    """Write the attempt and what it means for the delivery; the outcome
    label: `delivered`, `failed` (retried later) or `gave_up`. None when the
    delivery is gone meanwhile (its endpoint deleted)."""
    connection = session.connection()
    moment = now()
    attempts = connection.scalar(
        select(WebhookDelivery.attempts).where(WebhookDelivery.id == delivery_id)
    )
    if attempts is None:
        return None
    connection.execute(
        insert(WebhookAttempt).values(
            delivery_id=delivery_id,
            attempted_at=moment,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
        )
    )
    values: dict = {
        "locked_until": None,
        "last_status_code": result.status_code,
        "last_error": result.error,
    }
    if result.delivered:
        outcome, values["status"], values["delivered_at"] = (
            "delivered",
            DeliveryStatus.DELIVERED,
            moment,
        )
    elif attempts >= settings.webhook_max_attempts:
        outcome, values["status"] = "gave_up", DeliveryStatus.FAILED
    else:
        outcome, values["next_attempt_at"] = "failed", moment + backoff(settings, attempts)
    connection.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.PENDING)
        .values(**values)
    )
    return outcome


def deliver(sessions: sessionmaker[Session], settings: Settings, delivery_id: int) -> str | None:
    """One attempt at a delivery; its outcome label, or None when there was
    nothing to do (delivered already, not due, held, or deleted with its
    endpoint)."""
    with sessions() as session, session.begin():
        if not claim(session, delivery_id, settings):
            return None
        target = load_target(session, delivery_id, settings)
    if target is None:
        return None
    result = send(target, settings)
    with sessions() as session, session.begin():
        outcome = record(session, delivery_id, result, settings)
    if outcome is None:
        return None
    deliveries_counter().labels(target.event_type, outcome).inc()
    if outcome != "delivered":
        log.info(
            "webhook delivery %s: attempt %s (%s)",
            delivery_id,
            outcome,
            result.status_code or result.error,
        )
    return outcome


def declare(runtime: WorkerRuntime) -> dramatiq.Actor:
    """The `deliver_webhook` actor on the runtime's broker. Its time limit
    bounds an attempt (a receiver that trickles its answer, a slow resolver)."""

    deliveries_counter()  # exported, at 0, before the first delivery

    def deliver_webhook(delivery_id: int) -> str | None:
        return deliver(runtime.sessions, runtime.settings, delivery_id)

    return dramatiq.actor(
        broker=runtime.broker,
        actor_name=WEBHOOK_QUEUE,
        queue_name=WEBHOOK_QUEUE,
        time_limit=int(1000 * attempt_seconds(runtime.settings)),
    )(deliver_webhook)
