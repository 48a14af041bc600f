"""Settings that would weaken security are refused at start, naming the
setting and the fix (docs/SECURITY.md, audit of 2026-11-29)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import Settings

RABBIT = "amqp://guest:guest@127.0.0.1:5672/%2F"
KEY = "k" * 32


def refusal(**settings) -> str:
    with pytest.raises(ValidationError) as refused:
        Settings(database_url="sqlite://", **settings)
    return str(refused.value)


def test_a_rabbitmq_broker_needs_a_signing_key_of_32_bytes():
    assert "SIGNING_KEY is required" in refusal(broker_url=RABBIT)
    short = refusal(broker_url=RABBIT, signing_key="x")
    assert "SIGNING_KEY must be at least 32 bytes" in short and "openssl rand -hex 32" in short
    assert "SIGNING_KEY_PREVIOUS must be at least 32 bytes" in refusal(
        broker_url=RABBIT, signing_key=KEY, signing_key_previous="old"
    )
    assert Settings(broker_url=RABBIT, signing_key=KEY).signing_key == KEY


def test_the_embedded_mode_may_run_unsigned():
    assert Settings(database_url="sqlite://", broker_url="").signing_key == ""


def test_a_refusal_never_echoes_the_key():
    assert "short-secret" not in refusal(broker_url=RABBIT, signing_key="short-secret")


def test_smtp_logins_are_refused_on_an_unencrypted_connection():
    message = refusal(smtp_url="smtp://user:secret@smtp-relay:587")
    assert "SMTP_URL" in message and "smtps://" in message and "secret" not in message
    assert "SMTP_URL must start with" in refusal(smtp_url="http://smtp-relay")
    assert "SMTP_CA_FILE" in refusal(smtp_url="smtps://relay", smtp_ca_file="/nowhere/ca.pem")
    for url in ("smtp://sink:1025", "smtps://u:p@relay:465", "smtp+starttls://u:p@relay:587"):
        assert Settings(smtp_url=url).smtp_url == url


def test_message_max_age_must_outlast_the_grace_period_and_the_retries():
    message = refusal(message_max_age_seconds=600)
    assert "MESSAGE_MAX_AGE_SECONDS" in message and "DELETION_GRACE_SECONDS" in message
    assert Settings(message_max_age_seconds=600, retry_max=3, deletion_grace_seconds=60)


def test_invitation_link_settings_are_checked():
    assert "INVITE_URL_BASE" in refusal(invite_url_base="learn.example/invitations")
    assert "INVITE_LINK_KEY must be at least 32 bytes" in refusal(invite_link_key="short")
    base = Settings(invite_url_base="https://learn.school.test/join/").invite_url_base
    assert base == "https://learn.school.test/join"
