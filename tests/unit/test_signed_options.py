"""What a signature covers: every option that changes what a worker does,
and the message's age (pure logic; the worker path is in
tests/integration/test_signing.py)."""

from __future__ import annotations

import time

import dramatiq
from dramatiq.brokers.stub import StubBroker

from shared.signing import SignMessages, signature, too_old, verify

KEY = "k" * 32


def signed(message: dramatiq.Message) -> dramatiq.Message:
    message.options["signature"] = signature(KEY, message)
    return message


def message(**options) -> dramatiq.Message:
    return dramatiq.Message(
        queue_name="deactivate_learner",
        actor_name="deactivate_learner",
        args=(1, 2),
        kwargs={},
        options=options,
    )


def test_changing_any_option_after_signing_breaks_the_signature():
    for option, value in [
        ("eta", 1),
        ("retries", 0),
        ("max_retries", 0),
        ("time_limit", 1),
        ("broker_priority", 1),
    ]:
        original = signed(message())
        assert verify([KEY], original) is None
        tampered = original.copy(options={option: value})
        assert verify([KEY], tampered) == "bad_signature", option


def test_the_traceback_is_not_signed_because_it_is_scrubbed_after_signing():
    original = signed(message(retries=1))
    assert verify([KEY], original.copy(options={"traceback": "..."})) is None


def test_a_retry_is_signed_as_dramatiq_sends_it():
    """Retries bumps `retries`, then the broker copies the message with an
    eta onto the delay queue; `before_enqueue` sees that final shape."""
    broker = StubBroker(middleware=[SignMessages(KEY)])
    broker.declare_queue("deactivate_learner")
    first = broker.enqueue(message())
    first.options["retries"] = 1
    retried = broker.enqueue(first, delay=500)
    assert "eta" in retried.options and verify([KEY], retried) is None
    assert verify([KEY], retried.copy(options={"eta": retried.options["eta"] + 1})) is not None


def test_v1_signatures_are_refused():
    old = message()
    old.options["signature"] = "v1:" + "0" * 64
    assert verify([KEY], old) == "bad_signature"


def test_a_message_is_too_old_after_the_maximum_age():
    fresh = message()
    assert not too_old(fresh, 60)
    old = dramatiq.Message(
        **{**fresh._asdict(), "message_timestamp": int(time.time() * 1000) - 61_000}
    )
    assert too_old(old, 60)
