"""Invitation links: where they point, when they expire, which key signs
them (not the broker's), and what the Message-ID gives away (nothing)."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import parse_qs, urlparse

from shared.settings import Settings
from workers.mail import invitation_email, invitation_link, link_is_valid

TOKEN_HASH = hashlib.sha256(b"an invitation").hexdigest()
OLD_KEY, NEW_KEY, LINK_KEY = "o" * 32, "n" * 32, "l" * 32


def parts(link: str) -> tuple[str, str, int]:
    url = urlparse(link)
    base, mac = url.path.rsplit("/", 1)
    return f"{url.scheme}://{url.netloc}{base}", mac, int(parse_qs(url.query)["expires"][0])


def test_links_point_at_invite_url_base_and_expire_after_the_ttl():
    settings = Settings(
        invite_url_base="https://learn.school.test/join",
        invite_link_ttl_hours=2,
        signing_key=NEW_KEY,
    )
    issued = time.time()
    base, mac, expires = parts(invitation_link(settings, TOKEN_HASH, issued))
    assert base == "https://learn.school.test/join"
    assert expires == int(issued) + 2 * 3600
    assert link_is_valid(settings, TOKEN_HASH, mac, expires, at=issued + 3600)
    assert not link_is_valid(settings, TOKEN_HASH, mac, expires, at=expires + 1)
    # The expiry is signed: pushing it out breaks the link.
    assert not link_is_valid(settings, TOKEN_HASH, mac, expires + 3600, at=issued)
    assert not link_is_valid(settings, "cd" * 32, mac, expires, at=issued)


def test_rotating_the_broker_key_leaves_outstanding_links_working():
    before = Settings(signing_key=OLD_KEY, invite_link_key=LINK_KEY)
    after = Settings(signing_key=NEW_KEY, invite_link_key=LINK_KEY)
    _, mac, expires = parts(invitation_link(before, TOKEN_HASH))
    assert link_is_valid(after, TOKEN_HASH, mac, expires)
    # Without a link key of their own, links made before a rotation work
    # while the old key is kept as SIGNING_KEY_PREVIOUS.
    _, mac, expires = parts(invitation_link(Settings(signing_key=OLD_KEY), TOKEN_HASH))
    rotating = Settings(signing_key=NEW_KEY, signing_key_previous=OLD_KEY)
    assert link_is_valid(rotating, TOKEN_HASH, mac, expires)


def test_links_are_not_signed_with_the_broker_key():
    settings = Settings(signing_key=NEW_KEY)
    _, mac, _ = parts(invitation_link(settings, TOKEN_HASH))
    broker_mac = hmac.new(NEW_KEY.encode(), TOKEN_HASH.encode(), hashlib.sha256).hexdigest()
    assert mac != broker_mac


def test_the_message_id_reveals_nothing_of_the_link_secret():
    settings = Settings(signing_key=NEW_KEY)
    email = invitation_email(settings, "a@school.test", "A", "School", TOKEN_HASH)
    message_id = email["Message-ID"]
    _, mac, _ = parts(email.get_content().split("invitation: ")[1].strip())
    for secret in (TOKEN_HASH, mac):
        assert not any(secret[i : i + 8] in message_id for i in range(len(secret) - 8))
    again = invitation_email(settings, "a@school.test", "A", "School", TOKEN_HASH)
    assert again["Message-ID"] == message_id  # stable, so duplicates can be dropped
