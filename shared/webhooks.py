"""Completion webhooks: what every process shares about them.

A school registers endpoints (`producer/webhooks.py`); when one of its
batches ends, `record_batch_end` writes a `webhook_events` row and one
`webhook_deliveries` row per listening endpoint in the transaction that
ends the batch, so an event exists exactly when its batch has ended. The
reconciler publishes due deliveries (`publish_due`: the message carries the
delivery id only) and `workers/webhooks.py` sends them.

Signatures follow the Standard Webhooks specification
(https://www.standardwebhooks.com): headers `webhook-id`,
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256>` over
`{id}.{timestamp}.{body}`, keyed with the base64-decoded part of the
`whsec_...` secret, so receivers can use any existing verifier.

The secrets are stored sealed (`seal`), because the server must sign with
them; addresses are checked (`refusal`) at registration and again, on the
resolved address the request then goes to, at every attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Iterable, Sequence
from datetime import timedelta
from enum import StrEnum
from urllib.parse import urlsplit

import dramatiq
from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.contract import WEBHOOK_QUEUE
from shared.db import now
from shared.models import (
    Batch,
    BatchStatus,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from shared.publish import Publisher
from shared.settings import Settings

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MAX_URL_LENGTH = 2048


class EventType(StrEnum):
    """What an endpoint can listen to: the batch's final status. A batch
    whose items partly failed still `completes`; its counts say how many
    failed. (No code path ends a batch `failed` today; the event is part of
    the contract for when one does.)"""

    BATCH_COMPLETED = "batch.completed"
    BATCH_CANCELLED = "batch.cancelled"
    BATCH_FAILED = "batch.failed"


EVENT_FOR_STATUS = {
    BatchStatus.COMPLETED: EventType.BATCH_COMPLETED,
    BatchStatus.CANCELLED: EventType.BATCH_CANCELLED,
    BatchStatus.FAILED: EventType.BATCH_FAILED,
}


# --- Signing (Standard Webhooks) ---


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes: shown once to the admin."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `{message_id}.{timestamp}.{body}`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    content = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(key, content, hashlib.sha256)).decode()


def signed_headers(
    secrets_: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The request headers: one signature per secret, space-separated (the
    new secret first; the previous one as well during a rotation's grace)."""
    return {
        "content-type": "application/json",
        "user-agent": "batch-actions-webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, message_id, timestamp, body) for s in secrets_),
    }


# --- Stored secrets ---
# Sealed with HMAC-SHA256 as a stream cipher (counter mode) and an HMAC tag
# over nonce and ciphertext (encrypt-then-MAC): the standard library has no
# AES, and the project ships no crypto package.

SEALED_PREFIX = "s1:"
_NONCE_BYTES = 16


def _keys(material: str) -> tuple[bytes, bytes]:
    root = hashlib.sha256(b"batch-actions webhook secrets\0" + material.encode()).digest()
    return (
        hmac.digest(root, b"encrypt", hashlib.sha256),
        hmac.digest(root, b"authenticate", hashlib.sha256),
    )


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (
        hmac.digest(key, nonce + n.to_bytes(8, "big"), hashlib.sha256)
        for n in range(-(-length // 32))
    )
    return b"".join(blocks)[:length]


def sealing_keys(settings: Settings) -> list[str]:
    """Key material to try, the one that seals first: WEBHOOK_SECRET_KEY, or
    SIGNING_KEY and, while it rotates, SIGNING_KEY_PREVIOUS."""
    if settings.webhook_secret_key:
        return [settings.webhook_secret_key, settings.signing_key, settings.signing_key_previous]
    return [settings.signing_key, settings.signing_key_previous]


def seal(material: str, secret: str) -> str:
    encrypt, authenticate = _keys(material)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    plain = secret.encode()
    cipher = bytes(
        a ^ b for a, b in zip(plain, _keystream(encrypt, nonce, len(plain)), strict=True)
    )
    tag = hmac.digest(authenticate, nonce + cipher, hashlib.sha256)
    return SEALED_PREFIX + base64.b64encode(nonce + cipher + tag).decode()


class UnreadableSecret(ValueError):
    """No key this process has opens the stored secret."""


def unseal(materials: Iterable[str], sealed: str) -> str:
    """The secret, opened with the first key material that sealed it."""
    raw = base64.b64decode(sealed.removeprefix(SEALED_PREFIX))
    nonce, cipher, tag = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:-32], raw[-32:]
    for material in dict.fromkeys(materials):  # in order, each once
        encrypt, authenticate = _keys(material)
        if hmac.compare_digest(tag, hmac.digest(authenticate, nonce + cipher, hashlib.sha256)):
            stream = _keystream(encrypt, nonce, len(cipher))
            return bytes(a ^ b for a, b in zip(cipher, stream, strict=True)).decode()
    raise UnreadableSecret(
        "a webhook secret opens with none of WEBHOOK_SECRET_KEY, SIGNING_KEY, "
        "SIGNING_KEY_PREVIOUS: the key it was sealed with is gone; rotate the "
        "endpoint's secret (POST /v1/webhooks/{id}/rotate-secret)"
    )


# --- Addresses (SSRF) ---

# Cloud metadata services: refused even where private addresses are allowed.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)


class RefusedEndpoint(ValueError):
    """A URL the server will not call; the message says why and what to do."""


def address_refusal(address: str, allow_private: bool) -> str | None:
    """Why the server must not connect to `address`, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:a.b.c.d is a.b.c.d
    if mapped is not None:
        ip = mapped
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or not ip.is_global:
        return "a reserved address"
    return None


def check_url(url: str, allow_http: bool) -> tuple[str, int]:
    """The host and port of a URL the server may call, or RefusedEndpoint."""
    if len(url) > MAX_URL_LENGTH:
        raise RefusedEndpoint(f"url: at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RefusedEndpoint("url: not a URL; give e.g. https://example.org/hooks") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise RefusedEndpoint(
            "url: must start with https:// (plain http is allowed only with "
            "WEBHOOK_ALLOW_HTTP, for local development)"
        )
    if not parts.hostname:
        raise RefusedEndpoint("url: has no host; give e.g. https://example.org/hooks")
    if parts.username or parts.password:
        raise RefusedEndpoint(
            "url: must not contain a user or password; the signature is the proof"
        )
    if parts.fragment:
        raise RefusedEndpoint("url: must not contain a #fragment")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """Every address `host` resolves to, if none is refused; RefusedEndpoint
    otherwise (one bad address is enough: the resolver could hand it out next)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise RefusedEndpoint(f"url: the host {host!r} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        why = address_refusal(address, allow_private)
        if why is not None:
            raise RefusedEndpoint(
                f"url: {host!r} resolves to {why}, which webhooks may not reach "
                "(WEBHOOK_ALLOW_PRIVATE_ADDRESSES allows private ones for local development)"
            )
    if not addresses:
        raise RefusedEndpoint(f"url: the host {host!r} does not resolve")
    return addresses


def check_endpoint(url: str, settings: Settings) -> list[str]:
    """The addresses a URL may be called at now, or RefusedEndpoint."""
    host, port = check_url(url, settings.webhook_allow_http)
    return resolve(host, port, settings.webhook_allow_private_addresses)


# --- Events, written where a batch ends ---


def record_batch_end(session: Session, batch_id: int, status: str) -> int:
    """In the transaction that gives the batch its final `status`: one event
    and one delivery per endpoint of the batch's school that listens to it.
    Nothing at all for a school without such an endpoint. The number of
    deliveries written."""
    event_type = EVENT_FOR_STATUS[BatchStatus(status)]
    connection = session.connection()
    endpoints = connection.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.events, Batch.school_id)
        .join(Batch, Batch.school_id == WebhookEndpoint.school_id)
        .where(Batch.id == batch_id)
    ).all()
    listening = [row for row in endpoints if event_type in row.events.split()]
    if not listening:
        return 0
    event_id = connection.execute(
        insert(WebhookEvent)
        .values(
            school_id=listening[0].school_id,
            batch_id=batch_id,
            type=event_type.value,
            message_id="msg_" + secrets.token_hex(16),
        )
        .returning(WebhookEvent.id)
    ).scalar_one()
    connection.execute(
        insert(WebhookDelivery),
        [{"event_id": event_id, "endpoint_id": row.id, "attempts": 0} for row in listening],
    )
    return len(listening)


# --- The retry schedule, and publishing what is due ---


def backoff(settings: Settings, attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: the minimum, doubling
    up to the maximum."""
    seconds = settings.webhook_backoff_min_seconds * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(seconds, settings.webhook_backoff_max_seconds))


def delivery_message(delivery_id: int) -> dramatiq.Message:
    """A message names the delivery only: never a URL, secret or payload."""
    return dramatiq.Message(
        queue_name=WEBHOOK_QUEUE,
        actor_name=WEBHOOK_QUEUE,
        args=(delivery_id,),
        kwargs={},
        options={},
    )


def publish_due(
    sessions: sessionmaker[Session], publisher: Publisher, stale_after: timedelta, limit: int = 500
) -> int:
    """Publish every pending delivery whose attempt is due, is not held by a
    worker, and has no message out for it: never published, published before
    its last attempt (a retry), or published so long ago that the message
    must be lost. The published time moves only once the broker confirmed.
    Every attempt, the first and each retry, goes out this way, so a message
    is never older than one reconcile pass (MESSAGE_MAX_AGE_SECONDS does not
    bound the schedule) and a killed worker's delivery is picked up again
    once its hold runs out."""
    moment = now()
    query = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= moment,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < moment),
            or_(
                WebhookDelivery.published_at.is_(None),
                and_(
                    WebhookDelivery.claimed_at.is_not(None),
                    WebhookDelivery.published_at <= WebhookDelivery.claimed_at,
                ),
                WebhookDelivery.published_at < moment - stale_after,
            ),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    with sessions() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        due = list(session.scalars(query))
        if not due:
            return 0
        publisher.publish([delivery_message(delivery_id) for delivery_id in due])
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(due))
            .values(published_at=moment)
            .execution_options(synchronize_session=False)
        )
    return len(due)
