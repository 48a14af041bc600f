"""SMTP credentials only ever travel encrypted, to a server whose certificate
names it (docs/SECURITY.md, audit of 2026-11-29, item 6). A real aiosmtpd
server with AUTH, STARTTLS or implicit TLS, and certificates made here."""

from __future__ import annotations

import ssl
import subprocess
import threading
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from shared.settings import Settings
from tests.support.services import Inbox, free_port
from workers.errors import TransientError
from workers.mail import SmtpMailer, build_mailer


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for `name` (a DNS name or an IP address)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    san = f"IP:{name}" if name[0].isdigit() else f"DNS:{name}"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"]
        + ["-addext", f"subjectAltName={san}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class Server:
    """An SMTP server that requires a login and records every attempt."""

    def __init__(self, cert: Path | None, key: Path | None, implicit_tls: bool = False):
        self.inbox = Inbox()
        self.logins: list[tuple[bool, str]] = []  # (over TLS, mechanism)
        self.lock = threading.Lock()
        self.port = free_port()
        tls = None
        if cert is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(cert, key)
        options = {"ssl_context": tls} if implicit_tls else {"tls_context": tls}
        self.controller = Controller(
            self.inbox,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self.authenticate,
            auth_require_tls=False,  # let a careless client try
            **options,
        )
        self.controller.start()

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        encrypted = server.transport.get_extra_info("ssl_object") is not None
        with self.lock:
            self.logins.append((encrypted or session.ssl is not None, mechanism))
        return AuthResult(success=True)

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def certs(tmp_path):
    return {name: certificate(tmp_path, name) for name in ("127.0.0.1", "impostor.example")}


def email() -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@b.test", "learner@school.test", "hi"
    message.set_content("hello")
    return message


def test_starttls_to_a_server_with_another_names_certificate_sends_no_login(certs):
    cert, key = certs["impostor.example"]
    server = Server(cert, key)
    try:
        url = f"smtp+starttls://user:secret@127.0.0.1:{server.port}"
        for ca_file in ("", str(cert)):  # untrusted, then trusted but for another name
            mailer = build_mailer(Settings(smtp_url=url, smtp_ca_file=ca_file))
            with pytest.raises(TransientError):
                mailer.send(email(), lambda: True)
        assert server.logins == [] and server.inbox.messages == []
    finally:
        server.stop()


def test_starttls_with_a_private_ca_logs_in_encrypted_and_delivers(certs):
    cert, key = certs["127.0.0.1"]
    server = Server(cert, key)
    try:
        url = f"smtp+starttls://user:secret@127.0.0.1:{server.port}"
        mailer = build_mailer(Settings(smtp_url=url, smtp_ca_file=str(cert)))
        assert mailer.send(email(), lambda: True)
        assert server.logins and all(over_tls for over_tls, _ in server.logins)
        assert server.inbox.recipients() == {"learner@school.test": 1}
    finally:
        server.stop()


def test_smtps_is_tls_from_the_first_byte(certs):
    cert, key = certs["127.0.0.1"]
    server = Server(cert, key, implicit_tls=True)
    try:
        url = f"smtps://user:secret@127.0.0.1:{server.port}"
        mailer = build_mailer(Settings(smtp_url=url, smtp_ca_file=str(cert)))
        assert mailer.send(email(), lambda: True)
        assert server.logins and all(over_tls for over_tls, _ in server.logins)
        assert server.inbox.recipients() == {"learner@school.test": 1}
    finally:
        server.stop()


def test_a_login_is_never_sent_over_an_unencrypted_connection():
    """Settings refuse `smtp://user:...@`; the mailer refuses it too."""
    server = Server(None, None)
    try:
        mailer = SmtpMailer(f"smtp://user:secret@127.0.0.1:{server.port}")
        with pytest.raises(TransientError):
            mailer.send(email(), lambda: True)
        assert server.logins == [] and server.inbox.messages == []
    finally:
        server.stop()
