"""Signed broker messages: HMAC-SHA256 over what a message asks a worker to do.

Producers, the reconciler and workers sign every message they enqueue (the
`before_enqueue` hook, so retries and delayed messages are signed too);
workers check the signature before any actor code runs and dead-letter a
message that is unsigned or tampered with. Rotation: sign with
`SIGNING_KEY`, accept `SIGNING_KEY` or `SIGNING_KEY_PREVIOUS`; once every
message signed with the old key is gone, drop the old key.

Signing is on whenever `SIGNING_KEY` is set; the embedded demo runs without.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import dramatiq
from dramatiq.middleware import Middleware, SkipMessage

log = logging.getLogger(__name__)
OPTION = "signature"
VERSION = "v1"


def _payload(message: dramatiq.Message) -> bytes:
    # A worker's MessageProxy forwards every attribute through __getattr__;
    # read the message it wraps instead (this runs for every delivery).
    message = getattr(message, "_message", message)
    # The queue is left out: Dramatiq moves delayed messages between queues.
    return json.dumps(
        [
            message.actor_name,
            list(message.args),
            message.kwargs,
            message.message_id,
            message.message_timestamp,
        ],
        separators=(",", ":"),
        sort_keys=True,
        default=str,
    ).encode()


def signature(key: str, message: dramatiq.Message) -> str:
    return _sign(key, _payload(message))


def _sign(key: str, payload: bytes) -> str:
    return f"{VERSION}:{hmac.digest(key.encode(), payload, hashlib.sha256).hex()}"


def verify(keys: list[str], message: dramatiq.Message) -> str | None:
    """None if the message is signed with one of `keys`, else why not."""
    given = message.options.get(OPTION)
    if not isinstance(given, str):
        return "unsigned"
    payload = _payload(message)
    if any(hmac.compare_digest(given, _sign(key, payload)) for key in keys):
        return None
    return "bad_signature"


class SignMessages(Middleware):
    def __init__(self, key: str, previous_key: str = "") -> None:
        self.key = key
        self.keys = [k for k in (key, previous_key) if k]

    def before_enqueue(self, broker, message, delay):
        message.options[OPTION] = signature(self.key, message)

    def before_process_message(self, broker, message):
        problem = verify(self.keys, message)
        if problem is None:
            return
        from shared.metrics import messages_rejected

        messages_rejected().labels(problem).inc()
        log.error("rejected %s message %s for %s", problem, message.message_id, message.actor_name)
        message.fail()
        raise SkipMessage(problem)
