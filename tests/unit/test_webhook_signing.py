"""Webhook signatures, stored secrets and the address rules (tier 1, no
services). Deliveries over HTTP to a real receiver: tests/integration/test_webhooks.py."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from shared.settings import Settings
from shared.webhooks import (
    RefusedEndpoint,
    address_refusal,
    backoff,
    check_url,
    new_secret,
    resolve,
    seal,
    sign,
    signed_headers,
    unseal,
)
from workers.webhooks import pin


def test_the_signature_is_the_standard_webhooks_test_vector():
    # The example of the Standard Webhooks specification and its reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_signature_is_what_a_receiver_computes_from_the_published_algorithm():
    secret = new_secret()
    body = b'{"type":"batch.completed","data":{"id":7}}'
    headers = signed_headers([secret], "msg_1", 1700000000, body)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.digest(key, b"msg_1.1700000000." + body, hashlib.sha256)
    ).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert (headers["webhook-id"], headers["webhook-timestamp"]) == ("msg_1", "1700000000")


def test_during_a_rotation_both_secrets_sign_the_new_one_first():
    new, old = new_secret(), new_secret()
    header = signed_headers([new, old], "msg_1", 1, b"{}")["webhook-signature"]
    assert header.split(" ") == [sign(new, "msg_1", 1, b"{}"), sign(old, "msg_1", 1, b"{}")]


def test_a_secret_is_24_to_32_random_bytes_behind_whsec():
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 32
    assert new_secret() != secret


def test_a_sealed_secret_opens_with_its_key_only():
    secret = new_secret()
    sealed = seal("k" * 32, secret)
    assert secret not in sealed and secret.removeprefix("whsec_") not in sealed
    assert unseal(["other" * 8, "k" * 32], sealed) == secret
    with pytest.raises(ValueError, match="rotate-secret"):
        unseal(["other" * 8], sealed)
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(ValueError):
        unseal(["k" * 32], tampered)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "private"),  # "this host": reaches loopback on Linux
        ("100.64.0.1", "reserved"),
        ("224.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("::ffff:169.254.169.254", "metadata"),
    ],
)
def test_addresses_webhooks_may_not_reach(address, why):
    assert why in (address_refusal(address, allow_private=False) or "")


def test_allowing_private_addresses_never_allows_the_metadata_service():
    assert address_refusal("127.0.0.1", allow_private=True) is None
    assert address_refusal("10.0.0.1", allow_private=True) is None
    assert "metadata" in address_refusal("169.254.169.254", allow_private=True)
    assert "metadata" in address_refusal("fd00:ec2::254", allow_private=True)
    assert address_refusal("93.184.215.14", allow_private=False) is None


def test_a_name_that_resolves_to_a_refused_address_is_refused():
    with pytest.raises(RefusedEndpoint, match="loopback"):
        resolve("localhost", 443, allow_private=False)
    assert "127.0.0.1" in resolve("localhost", 443, allow_private=True)


@pytest.mark.parametrize(
    ("url", "allow_http", "error"),
    [
        ("http://example.org/hook", False, "https://"),
        ("ftp://example.org/hook", True, "https://"),
        ("https:///hook", False, "no host"),
        ("https://user:pw@example.org/hook", False, "user or password"),
        ("https://example.org:99999/hook", False, "not a URL"),
        ("https://example.org/" + "a" * 2048, False, "2048"),
    ],
)
def test_urls_that_are_refused_name_the_fix(url, allow_http, error):
    with pytest.raises(RefusedEndpoint, match=error):
        check_url(url, allow_http)


def test_urls_that_are_taken():
    assert check_url("https://example.org/hook", False) == ("example.org", 443)
    assert check_url("http://example.org:8080/hook", True) == ("example.org", 8080)


def test_the_request_goes_to_the_checked_address_under_the_urls_name():
    url, headers, extensions = pin("https://hooks.example.org:8443/in?x=1", "203.0.113.9")
    assert str(url) == "https://203.0.113.9:8443/in?x=1"
    assert headers == {"host": "hooks.example.org:8443"}
    assert extensions == {"sni_hostname": "hooks.example.org"}
    url, headers, extensions = pin("http://localhost/in", "::1")
    assert (str(url), headers, extensions) == ("http://[::1]/in", {"host": "localhost"}, {})


def test_the_default_retry_schedule_spans_more_than_a_day():
    settings = Settings()
    waits = [backoff(settings, n) for n in range(1, settings.webhook_max_attempts)]
    assert waits[0].total_seconds() == settings.webhook_backoff_min_seconds
    assert waits == sorted(waits)
    assert sum(w.total_seconds() for w in waits) >= 24 * 3600


def test_a_secret_no_key_opens_fails_the_attempt_without_a_request():
    from workers.webhooks import Target, send

    target = Target("batch.completed", "msg_1", b"{}", "https://example.org/hook", secrets=[])
    assert send(target, Settings()).error == "secret_unreadable"


def test_the_request_goes_to_the_address_that_was_checked_not_a_later_dns_answer(monkeypatch):
    """DNS rebinding: the name resolves to an allowed address for the check
    and to another one afterwards; the request still goes to the first."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from workers.webhooks import Target, send

    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["content-length"]))
            seen.append((self.headers["host"], self.headers["webhook-id"]))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"])

    def rebinding(host, *args, **kwargs):
        if host == "hooks.example":  # first the checked address, then a different one
            address = next(answers, "203.0.113.7")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    settings = Settings(
        webhook_allow_http=True, webhook_allow_private_addresses=True, webhook_timeout_seconds=2
    )
    target = Target(
        "batch.completed", "msg_1", b"{}", f"http://hooks.example:{port}/h", [new_secret()]
    )
    try:
        attempt = send(target, settings)
    finally:
        server.shutdown()
    assert (attempt.status_code, attempt.error) == (200, None)
    assert seen == [(f"hooks.example:{port}", "msg_1")]
