"""Signed broker messages: HMAC-SHA256 over what a message asks a worker to do.

The signature covers the actor, arguments, message id, creation time and the
options that change what a worker does (eta, retries, backoff, priority,
anything else Dramatiq reads from them): all options but the signature and
the traceback, which `ScrubTraceback` removes. Producers, the reconciler and
workers sign every message they enqueue (the `before_enqueue` hook, which
Dramatiq runs after `Retries` and a delayed enqueue have set the options, so
a worker re-signs the retry it sends). Workers check the signature and the
message's age (`MESSAGE_MAX_AGE_SECONDS`) before any actor code runs, and
before they hold a delayed message: when it is due the worker re-enqueues,
so re-signs, it. Rotation: sign with `SIGNING_KEY`, accept `SIGNING_KEY` or
`SIGNING_KEY_PREVIOUS`; once every message signed with the old key is gone,
drop the old key.

Signing is on whenever `SIGNING_KEY` is set, which settings require with
RabbitMQ; the embedded demo runs without.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import dramatiq
from dramatiq.common import current_millis
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware, MiddlewareError, SkipMessage

log = logging.getLogger(__name__)
OPTION = "signature"
# v2 signs the options too; v1 signatures (actor, args, id, time) are refused.
VERSION = "v2"
# The traceback is informational and removed after signing (ScrubTraceback).
UNSIGNED_OPTIONS = frozenset({OPTION, "traceback"})


# json.dumps builds an encoder per call unless every option is the default.
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, default=str)


def _payload(message: dramatiq.Message) -> bytes:
    # A worker's MessageProxy forwards every attribute through __getattr__;
    # read the message it wraps instead (this runs for every delivery).
    message = getattr(message, "_message", message)
    # The queue is left out: Dramatiq moves delayed messages between queues.
    return _ENCODER.encode(
        [
            message.actor_name,
            list(message.args),
            message.kwargs,
            message.message_id,
            message.message_timestamp,
            {k: v for k, v in message.options.items() if k not in UNSIGNED_OPTIONS},
        ]
    ).encode()


def signature(key: str, message: dramatiq.Message) -> str:
    return _sign(key, _payload(message))


def _sign(key: str, payload: bytes) -> str:
    return f"{VERSION}:{hmac.digest(key.encode(), payload, hashlib.sha256).hex()}"


def verify(keys: list[str], message: dramatiq.Message) -> str | None:
    """None if the message is signed with one of `keys`, else why not."""
    options = message.options
    given = options.get(OPTION) if isinstance(options, dict) else None
    if not isinstance(given, str):
        return "unsigned"
    payload = _payload(message)
    for key in keys:
        if hmac.compare_digest(given, _sign(key, payload)):
            return None
    return "bad_signature"


def too_old(message: dramatiq.Message, max_age_seconds: float) -> bool:
    age_ms = current_millis() - message.message_timestamp
    return age_ms > max_age_seconds * 1000


class RejectedMessage(ActorNotFound, MiddlewareError):
    """A delayed message that is forged or too old. Dramatiq's consumer
    dead-letters a message whose actor it cannot find, which is the one way
    a consumer-thread hook (`before_delay_message`) can refuse a message;
    brokers pass on only a MiddlewareError from a hook."""


class SignMessages(Middleware):
    def __init__(self, key: str, previous_key: str = "", max_age_seconds: float = 0) -> None:
        self.key = key
        self.keys = [k for k in (key, previous_key) if k]
        self.max_age_seconds = max_age_seconds

    def before_enqueue(self, broker, message, delay):
        message.options[OPTION] = signature(self.key, message)

    def _problem(self, message) -> str | None:
        problem = verify(self.keys, message)
        if problem is None and self.max_age_seconds and too_old(message, self.max_age_seconds):
            problem = "expired"
        if problem is not None:
            from shared.metrics import messages_rejected

            messages_rejected().labels(problem).inc()
            log.error(
                "rejected %s message %s for %s", problem, message.message_id, message.actor_name
            )
        return problem

    def before_delay_message(self, broker, message):
        problem = self._problem(message)
        if problem is not None:
            raise RejectedMessage(problem)

    def before_process_message(self, broker, message):
        problem = self._problem(message)
        if problem is not None:
            message.fail()
            raise SkipMessage(problem)
