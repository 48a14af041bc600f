"""Invitation delivery from the outbox.

The guarantee: at most one email per learner per batch. The invitation row is
marked `sending_at` and committed once the SMTP server has accepted sender
and recipient and *before* the message itself (DATA) is handed over, and
`sent_at` after the server accepted it; a row already marked is never sent
again. So a worker that dies between handing the message over and recording
it cannot cause a second email. The price is a row left in doubt (marked, not
sent) when a worker dies during DATA: that invitation may not have gone out,
and a new batch is how an admin resends it. Everything before DATA (rate
limit, connection, MAIL, RCPT) happens unmarked, so a crash there costs
nothing: the redelivered message sends the email. A server that refuses the
message for now (4xx) clears the mark, so the message retries.

An invitation that cannot be written as an email at all (a line break in the
address or the school's name) is given up: its row is marked, its item,
already `applied`, ends `failed` with the reason, and no exception escapes,
so neither the worker nor the reconciler's pass over other schools stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import re
import smtplib
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email import quoprimime
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import unquote, urlencode, urlparse

import redis
from psycopg.rows import namedtuple_row
from sqlalchemy import Executable, Update, bindparam, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from shared.batches import complete_if_finished, counts_from_items, move_item
from shared.db import now
from shared.models import (
    FINISHED_BATCH_STATUSES,
    AuditEntry,
    Batch,
    Invitation,
    ItemOutcome,
    Learner,
    LearnerStatus,
    School,
    UtcDateTime,
)
from shared.progress import NoProgress, Progress
from shared.settings import Settings
from workers import statements
from workers.errors import TransientError, is_transient

RATE_LIMIT_WAIT_SECONDS = 30
SMTP_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
UNWRITABLE = "invitation not sendable: line break in the email address or school name"


class Mailer(Protocol):
    def send(self, message: Outgoing | EmailMessage, commit: Callable[[], bool]) -> bool:
        """Hand the message over unless `commit()`, called at the last moment
        before that, returns False. True when it was handed over."""


class SmtpMailer:
    """SMTP with one connection per thread, reopened when the server drops it.

    `smtps://` is TLS from the first byte, `smtp+starttls://` upgrades with
    STARTTLS; both verify the server's certificate and name (against
    `SMTP_CA_FILE` when set). A login is only ever sent encrypted (settings
    refuse one on `smtp://`, and this checks again)."""

    def __init__(self, url: str, ca_file: str = "") -> None:
        parsed = urlparse(url)
        self.scheme = parsed.scheme
        self.host = parsed.hostname or "localhost"
        self.port = parsed.port or SMTP_PORTS.get(parsed.scheme, 25)
        self.user = unquote(parsed.username or "")
        self.password = unquote(parsed.password or "")
        self.tls = ssl.create_default_context(cafile=ca_file or None)
        self.local = threading.local()

    def _client(self) -> smtplib.SMTP:
        client = getattr(self.local, "client", None)
        if client is None:
            try:
                client = self._connect()
            except (OSError, smtplib.SMTPException) as exc:
                # The server or our configuration, not this invitation: retry.
                raise TransientError(f"SMTP connection failed: {type(exc).__name__}") from exc
            self.local.client = client
        return client

    def _connect(self) -> smtplib.SMTP:
        if self.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host, self.port, timeout=10, context=self.tls
            )
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=10)
        try:
            if self.scheme == "smtp+starttls":
                client.starttls(context=self.tls)
            if self.user:
                if not isinstance(client.sock, ssl.SSLSocket):
                    raise smtplib.SMTPException("refusing to log in over an unencrypted connection")
                client.login(self.user, self.password)
        except BaseException:
            client.close()
            raise
        return client

    def send(self, message: Outgoing | EmailMessage, commit: Callable[[], bool]) -> bool:
        outgoing = message if isinstance(message, Outgoing) else Outgoing.of(message)
        sender, recipient = outgoing.sender, outgoing.recipient
        try:
            client = self._client()
            client.ehlo_or_helo_if_needed()
            code, reply = client.mail(sender)
            if code != 250:
                self._reset(client)
                raise smtplib.SMTPSenderRefused(code, reply, sender)
            code, reply = client.rcpt(recipient)
            if code not in (250, 251):
                self._reset(client)
                raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
            try:
                committed = commit()
            except BaseException:
                self._reset(client)
                raise
            if not committed:
                self._reset(client)
                return False
            code, reply = client.data(outgoing.data)
            if code != 250:
                self._reset(client)
                raise smtplib.SMTPDataError(code, reply)
        except (smtplib.SMTPServerDisconnected, OSError):
            self.local.client = None
            raise
        return True

    def _reset(self, client: smtplib.SMTP) -> None:
        """Abandon the SMTP transaction; drop the connection if that fails too."""
        try:
            client.rset()
        except (smtplib.SMTPException, OSError):
            self.local.client = None


class MailboxMailer:
    """Embedded mode: append each email to a local mailbox file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def send(self, message: Outgoing | EmailMessage, commit: Callable[[], bool]) -> bool:
        outgoing = message if isinstance(message, Outgoing) else Outgoing.of(message)
        if not commit():
            return False
        with open(self.path, "a", encoding="utf-8") as mailbox:
            fcntl.flock(mailbox, fcntl.LOCK_EX)
            text = outgoing.data.decode("utf-8", "replace").replace("\r\n", "\n")
            mailbox.write(f"From batch-actions {time.ctime()}\n{text}\n")
        return True


class LocalRateLimiter:
    """Per-process fallback when Redis is not configured or not answering."""

    def __init__(self, per_second: int) -> None:
        self.interval = 1.0 / per_second
        self.lock = threading.Lock()
        self.next_at = 0.0

    def wait(self) -> None:
        with self.lock:
            at = max(self.next_at, time.monotonic())
            self.next_at = at + self.interval
        time.sleep(max(0.0, at - time.monotonic()))


class SharedRateLimiter:
    """At most `per_second` emails in any one wall-clock second across every
    worker: one Redis counter per second (`smtp-invitations@<unix second>`).

    A process takes permits a block at a time with one `INCRBY` (a round
    trip, no WATCH/MULTI retries when many threads ask at once) and hands them
    to its threads until that second ends; permits it does not use by then
    expire unused, so the budget is never exceeded, only sometimes not all
    used. The block is 1 at the default rates, larger only when the limit is
    high enough that one round trip per email would be what limits."""

    def __init__(
        self, per_second: int, client: redis.Redis | None, key: str = "smtp-invitations"
    ) -> None:
        self.per_second = per_second
        self.key = key
        self.block = max(1, per_second // 200)
        self.fallback = LocalRateLimiter(per_second)
        self.client = client
        self.lock = threading.Lock()
        self.second = 0
        self.left = 0

    def wait(self) -> None:
        if self.client is None:
            return self.fallback.wait()
        deadline = time.monotonic() + RATE_LIMIT_WAIT_SECONDS
        while True:
            second = int(time.time())
            with self.lock:
                if self.second == second and self.left > 0:
                    self.left -= 1
                    return None
            try:
                granted = self._reserve(second)
            except Exception:  # Redis down: keep sending, limited per process
                return self.fallback.wait()
            if granted:
                with self.lock:
                    if self.second != second:
                        self.second, self.left = second, 0
                    self.left += granted - 1
                return None
            if time.monotonic() >= deadline:
                raise TransientError("email rate limit busy")
            time.sleep(max(0.001, second + 1 - time.time()))  # this second's budget is spent

    def _reserve(self, second: int) -> int:
        """Permits this process gets for `second` (0 when its budget is spent)."""
        assert self.client is not None
        key = f"{self.key}@{second}"
        pipe = self.client.pipeline(transaction=False)
        pipe.incrby(key, self.block)
        pipe.pexpire(key, 2000)
        taken = int(pipe.execute()[0])
        return max(0, min(self.block, self.per_second - (taken - self.block)))


def build_mailer(settings: Settings) -> Mailer:
    if settings.smtp_url:
        return SmtpMailer(settings.smtp_url, settings.smtp_ca_file)
    return MailboxMailer(settings.mailbox_path)


def link_keys(settings: Settings) -> list[bytes]:
    """The key invitation links are signed with, then any other they are
    accepted with. `INVITE_LINK_KEY` when set, so rotating the broker key
    leaves links alone; else keys derived from SIGNING_KEY (and the previous
    one, while rotating), never the broker key itself."""
    if settings.invite_link_key:
        return [settings.invite_link_key.encode()]
    broker_keys = [k for k in (settings.signing_key, settings.signing_key_previous) if k] or [""]
    return [hmac.digest(k.encode(), b"invitation links", hashlib.sha256) for k in broker_keys]


def _link_mac(key: bytes, token_hash: str, expires: int) -> str:
    return hmac.new(key, f"{token_hash}:{expires}".encode(), hashlib.sha256).hexdigest()


def invitation_link(settings: Settings, token_hash: str, issued_at: float | None = None) -> str:
    """`INVITE_URL_BASE/<mac>?expires=<unix time>`; the MAC covers the expiry."""
    issued_at = time.time() if issued_at is None else issued_at
    expires = int(issued_at) + settings.invite_link_ttl_hours * 3600
    mac = _link_mac(link_keys(settings)[0], token_hash, expires)
    return f"{settings.invite_url_base}/{mac}?{urlencode({'expires': expires})}"


def link_is_valid(
    settings: Settings, token_hash: str, mac: str, expires: int, at: float | None = None
) -> bool:
    """What the page a link opens checks: signed for this invitation, not expired."""
    if (time.time() if at is None else at) > expires:
        return False
    return any(
        hmac.compare_digest(mac, _link_mac(key, token_hash, expires)) for key in link_keys(settings)
    )


def _invitation_text(
    settings: Settings, name: str, school: str, token_hash: str
) -> tuple[str, str, str]:
    """Subject, Message-ID and body of an invitation."""
    # Stable, so a receiving server can drop a duplicate if one ever left us;
    # a hash of the invitation's secret, so it reveals nothing of the link.
    message_id = hashlib.sha256(f"message-id:{token_hash}".encode()).hexdigest()[:32]
    body = (
        f"Hello {name},\n\n{school} invites you to start learning.\n"
        f"Accept the invitation: {invitation_link(settings, token_hash)}\n"
    )
    return f"You are invited to {school}", f"<invitation-{message_id}@batch-actions>", body


def invitation_email(
    settings: Settings, to: str, name: str, school: str, token_hash: str
) -> EmailMessage:
    """Raises ValueError for a header with a line break (address, school)."""
    subject, message_id, body = _invitation_text(settings, name, school, token_hash)
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content(body)
    return message


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An email as the SMTP conversation needs it: envelope and message (CRLF)."""

    sender: str
    recipient: str
    data: bytes

    @classmethod
    def of(cls, message: EmailMessage) -> Outgoing:
        data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        return cls(str(message["From"]), str(message["To"]), data)


# Addresses `invitation_outgoing` writes itself; any other goes through the
# email package (which encodes or refuses what needs it).
PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+\Z")


def invitation_outgoing(
    settings: Settings, to: str, name: str, school: str, token_hash: str
) -> Outgoing:
    """The invitation as `invitation_email` writes it, byte for byte, without
    the email package's header parsing and content manager for the usual
    case (plain addresses, ASCII text, a short subject): they were a fifth
    of a worker's time per invitation. Anything else takes the email
    package's path. Raises ValueError for a line break in the address or
    the school's name, as `invitation_email` does."""
    if "\r" in to or "\n" in to or "\r" in school or "\n" in school:
        raise ValueError("a header value may not contain a line break")
    subject, message_id, body = _invitation_text(settings, name, school, token_hash)
    plain = (
        PLAIN_ADDRESS.match(to)
        and PLAIN_ADDRESS.match(settings.smtp_from)
        and subject.isascii()
        and body.isascii()
        and len(subject) <= 78 - len("Subject: ")
        and max(len(line) for line in body.splitlines()) > 78  # the link: quoted-printable
    )
    if not plain:
        return Outgoing.of(invitation_email(settings, to, name, school, token_hash))
    text = (
        f"From: {settings.smtp_from}\nTo: {to}\nSubject: {subject}\nMessage-ID: {message_id}\n"
        'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: quoted-printable\n'
        f"MIME-Version: 1.0\n\n{quoprimime.body_encode(body, 78)}"
    )
    return Outgoing(settings.smtp_from, to, text.replace("\n", "\r\n").encode("ascii"))


# The outbox's reads and marks, each one statement (see `Outbox`).
UNSENT = (
    select(
        Invitation.id,
        Learner.email,
        Learner.name,
        Learner.status,
        School.name.label("school"),
        Invitation.token_hash,
        Invitation.batch_id,
        Invitation.learner_id,
    )
    .join(Learner, Learner.id == Invitation.learner_id)
    .join(School, School.id == Invitation.school_id)
    .where(Invitation.sending_at.is_(None), Invitation.sent_at.is_(None))
)
# Not "id": on SQLite a parameter named like a column of the UPDATEd table is
# taken for a SET value ("bindparam() name 'id' is reserved").
UNSENT_BY_ID = UNSENT.where(Invitation.id == bindparam("invitation"))
UNSENT_FOR_ITEM = UNSENT.where(
    Invitation.batch_id == bindparam("batch"), Invitation.learner_id == bindparam("learner")
)
# Mark an unmarked row as being sent (and sent, when `sent_at` is given).
MARK = (
    update(Invitation)
    .where(
        Invitation.id == bindparam("invitation"),
        Invitation.sending_at.is_(None),
        Invitation.sent_at.is_(None),
    )
    .values(
        sending_at=bindparam("stamp", type_=UtcDateTime()),
        sent_at=bindparam("sent_at", type_=UtcDateTime()),
        attempts=Invitation.attempts + 1,
    )
)
MARK_SENT = (
    update(Invitation)
    .where(Invitation.id == bindparam("invitation"))
    .values(sent_at=bindparam("stamp", type_=UtcDateTime()))
)
UNMARK = update(Invitation).where(Invitation.id == bindparam("invitation")).values(sending_at=None)


class Outbox:
    """The invitation rows' reads and marks. On PostgreSQL each is one
    statement on the thread's own autocommit connection (one round trip,
    its own transaction: no pool checkout, ping, BEGIN or COMMIT around it);
    on SQLite, the embedded mode, a session transaction."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        on_postgresql = make_url(settings.database_url).get_backend_name() == "postgresql"
        self.connections = (
            statements.connections_for(settings.database_url) if on_postgresql else None
        )

    def row(self, query: Executable, params: dict[str, Any]) -> Any:
        if self.connections is None:
            with self.sessions() as session:
                return session.execute(query, params).first()
        cursor = statements.execute_statement(self.connections, query, params)
        cursor.row_factory = namedtuple_row
        return cursor.fetchone()

    def write(self, statement: Update, params: dict[str, Any]) -> int:
        """Run the UPDATE in its own transaction; the rows it changed."""
        if self.connections is None:
            with self.sessions() as session, session.begin():
                return session.connection().execute(statement, params).rowcount
        return statements.execute_statement(self.connections, statement, params).rowcount


class InvitationSender:
    """Sends outbox invitations: one per process (`workers.runtime`, the
    reconciler). Without a Redis client the rate limit is per process and
    progress is counted from the database only."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        settings: Settings,
        client: redis.Redis | None = None,
        progress: Progress | None = None,
    ):
        self.sessions = session_factory
        self.settings = settings
        self.progress = progress or NoProgress()
        self.mailer = build_mailer(self.settings)
        self.rate = SharedRateLimiter(self.settings.smtp_rate_per_second, client)
        self.outbox = Outbox(session_factory, settings)

    def deliver(self, invitation_id: int) -> bool:
        """Send one outbox invitation unless it is sent or being sent. True if sent now."""
        return self._send(self.outbox.row(UNSENT_BY_ID, {"invitation": invitation_id}))

    def deliver_for_item(self, batch_id: int, learner_id: int) -> bool:
        """The same for the invitation a batch's item wrote, found in the same query."""
        return self._send(
            self.outbox.row(UNSENT_FOR_ITEM, {"batch": batch_id, "learner": learner_id})
        )

    def _send(self, row: Any) -> bool:
        if row is None:
            return False
        invitation_id = row.id
        if row.status != LearnerStatus.INVITED or not row.email:
            self._mark(invitation_id, sent=True)  # activated or removed since: nothing to send
            return False
        try:
            message = invitation_outgoing(
                self.settings, row.email, row.name or "", row.school, row.token_hash
            )
        except ValueError:  # no retry can send it: give it up, and say so on its item
            self._mark(invitation_id, sent=True)
            if row.batch_id is not None:
                fail_applied_item(
                    self.sessions, self.progress, row.batch_id, row.learner_id, UNWRITABLE
                )
            return False
        self.rate.wait()
        marked = False

        def mark() -> bool:
            nonlocal marked
            marked = self._mark(invitation_id)
            return marked

        try:
            if not self.mailer.send(message, mark):
                return False  # another worker (or the reconciler) has it
        except Exception as exc:
            if not marked and not is_transient(exc):
                self._mark(invitation_id)  # refused for good: never try again
            elif marked and _refused_for_now(exc):
                self._unmark(invitation_id)  # the server did not take it: retry
            raise
        self.outbox.write(MARK_SENT, {"invitation": invitation_id, "stamp": now()})
        return True

    def _mark(self, invitation_id: int, sent: bool = False) -> bool:
        """Mark an unmarked row as being sent (and sent, with `sent`)."""
        stamp = now()
        params = {"invitation": invitation_id, "stamp": stamp, "sent_at": stamp if sent else None}
        return bool(self.outbox.write(MARK, params))

    def _unmark(self, invitation_id: int) -> None:
        with contextlib.suppress(Exception):
            self.outbox.write(UNMARK, {"invitation": invitation_id})


def fail_applied_item(
    sessions: sessionmaker[Session],
    progress: Progress,
    batch_id: int,
    learner_id: int,
    error: str,
) -> bool:
    """An `applied` invitation item whose email cannot be sent ends `failed`.
    The item is already counted `applied` (in Redis, and in the batch's final
    counts if it has finished), so both move to `failed`.

    The batch row is locked first: a completion that wrote its counts before
    is recomputed here, and one under way (counted before this commit) waits
    for the lock and finds the batch completed here, with the right counts."""
    with sessions() as session, session.begin():
        batch = (
            session.connection()
            .execute(
                select(
                    Batch.status,
                    Batch.school_id,
                    Batch.actor_id,
                    Batch.action,
                    Batch.audited_through,
                )
                .where(Batch.id == batch_id)
                .with_for_update()
            )
            .first()
        )
        status = batch.status if batch is not None else None
        changed = move_item(
            session,
            batch_id,
            learner_id,
            ItemOutcome.APPLIED,
            outcome=ItemOutcome.FAILED,
            error=error,
            finished_at=now(),
        )
        copied = batch is not None and (
            batch.audited_through is None or learner_id <= batch.audited_through
        )
        if changed and batch is not None and copied:
            # The trail says `applied` already; it says what the item says now.
            # (An item not copied yet is copied as `failed`.)
            session.connection().execute(
                insert(AuditEntry).values(
                    school_id=batch.school_id,
                    actor_id=batch.actor_id,
                    learner_id=learner_id,
                    batch_id=batch_id,
                    action=batch.action,
                    outcome=ItemOutcome.FAILED,
                )
            )
        if changed and status in FINISHED_BATCH_STATUSES:
            counts = counts_from_items(session, batch_id)
            session.connection().execute(
                update(Batch).where(Batch.id == batch_id).values(counts=counts)
            )
        elif changed:
            complete_if_finished(session, batch_id)
    if changed:
        moved = Counter({str(ItemOutcome.APPLIED): -1, str(ItemOutcome.FAILED): 1})
        progress.add_many({batch_id: moved})
    return bool(changed)


def _refused_for_now(exc: BaseException) -> bool:
    """The server answered the message itself with a temporary refusal: it
    did not take it. (A dropped connection during DATA leaves it in doubt.)"""
    return isinstance(exc, smtplib.SMTPDataError) and 400 <= exc.smtp_code < 500
