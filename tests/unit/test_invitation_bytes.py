"""The invitation the workers send (`invitation_outgoing`, written without the
email package in the usual case) is byte for byte the one the email package
writes (`invitation_email`), and refuses the same header injections."""

from __future__ import annotations

import email
import email.policy
import hashlib

import pytest

from shared.settings import Settings
from workers import mail

TOKEN_HASH = hashlib.sha256(b"an invitation").hexdigest()
LINK = "https://learn.example/invitations/" + "ab" * 32 + "?expires=1796888474"


@pytest.fixture(autouse=True)
def fixed_link(monkeypatch):
    # Both paths sign a link with the current time: the same link for both.
    monkeypatch.setattr(mail, "invitation_link", lambda settings, token_hash, issued_at=None: LINK)


def written_by_email_package(settings, to, name, school):
    message = mail.invitation_email(settings, to, name, school, TOKEN_HASH)
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


@pytest.mark.parametrize(
    ("to", "name", "school", "sender"),
    [
        ("ada@school.test", "Ada Lovelace", "Plain Academy", ""),
        ("first.last+tag@sub.school.test", "", "A", "admissions@school.test"),
        ("o'neil@school.test", "O'Neil, Jr.", "St. Mary's (North)", ""),
        # The email package's path: non-ASCII text, a long subject, odd addresses.
        ("zoe@school.test", "Zoë", "École Ünï", ""),
        ("ada@school.test", "Ada", "The " + "Very " * 20 + "Long School", ""),
        ("Ada <ada@school.test>", "Ada", "Plain Academy", ""),
        ("ada@école.test", "Ada", "Plain Academy", ""),
    ],
)
def test_the_same_bytes_as_the_email_package(to, name, school, sender):
    settings = Settings(signing_key="k" * 32, **({"smtp_from": sender} if sender else {}))
    outgoing = mail.invitation_outgoing(settings, to, name, school, TOKEN_HASH)
    assert outgoing.data == written_by_email_package(settings, to, name, school)
    parsed = email.message_from_bytes(outgoing.data, policy=email.policy.default)
    assert parsed["To"] == to and outgoing.recipient == str(parsed["To"])
    assert outgoing.sender == settings.smtp_from
    assert LINK in parsed.get_content()


@pytest.mark.parametrize(
    ("to", "school"),
    [
        ("x@school.test\r\nBcc: all@evil.test", "Plain Academy"),
        ("x@school.test", "Line\r\nBcc: all@evil.test Academy"),
        ("x@school.test", "Line\nBreak"),
    ],
)
def test_a_line_break_in_a_header_is_refused_on_both_paths(to, school):
    settings = Settings(signing_key="k" * 32)
    with pytest.raises(ValueError):
        mail.invitation_email(settings, to, "A", school, TOKEN_HASH)
    with pytest.raises(ValueError):
        mail.invitation_outgoing(settings, to, "A", school, TOKEN_HASH)
