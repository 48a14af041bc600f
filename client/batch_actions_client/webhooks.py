"""Verifying a webhook delivery, as the Standard Webhooks spec signs it
(https://www.standardwebhooks.com): written from the spec, not from the
server's signing code, so the two check each other."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 5 * 60


class WebhookVerificationError(Exception):
    """The delivery is not one the API signed with this secret, or is too old
    (or too far in the future) to be trusted: answer it with a 4xx, do not
    act on it."""


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """The delivery's JSON payload once its signature and age are checked.

    `secret` is the endpoint's `whsec_...` secret (the prefix is optional);
    `headers` the request's headers (any case); `body` the raw request body,
    exactly as received (parse it only after verifying). Raises
    WebhookVerificationError otherwise."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        raise WebhookVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature header"
        )
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {timestamp!r} is not a number") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {current - sent_at:+.0f}s from now; "
            f"more than {tolerance:.0f}s (a replay, or a clock to fix)"
        )
    raw = body.encode() if isinstance(body, str) else body
    expected = _sign(_key(secret), msg_id, timestamp, raw)
    for entry in signatures.split():
        version, _, signature = entry.partition(",")
        # compare_digest on every entry: the time taken says nothing about the key.
        if version == "v1" and hmac.compare_digest(signature.encode(), expected.encode()):
            return json.loads(raw)
    raise WebhookVerificationError("no webhook-signature entry matches this secret and body")


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise WebhookVerificationError(
            "the secret is not `whsec_` followed by base64; copy it as the API gave it"
        ) from None


def _sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """base64(HMAC-SHA256(key, f"{msg_id}.{timestamp}.{body}"))."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
