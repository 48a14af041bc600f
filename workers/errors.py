"""Which failures are worth retrying, and how to describe one without PII.

Transient: the database or SMTP server unreachable, a connection dropped, a
lock or statement timeout, a serialization failure or deadlock, a standby
refusing a write (during a failover). Everything else is permanent:
retrying would fail the same way, so the item is marked `failed` at once.
Error texts from drivers can quote row values (an email in a unique-violation
detail), so only the exception type and SQLSTATE are kept.
"""

from __future__ import annotations

import smtplib

from sqlalchemy import exc as sa_exc

# SQLSTATE classes and codes that a retry can fix.
TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "25006",  # read_only_sql_transaction (a standby, or a primary being demoted)
    "55P03",  # lock_not_available (lock_timeout)
    "57014",  # query_canceled (statement_timeout)
    "57P01",  # admin_shutdown (pg_terminate_backend)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
}
TRANSIENT_SQLSTATE_CLASSES = {"08"}  # connection exceptions


class TransientError(Exception):
    """Raised by our own code for a failure a retry can fix."""


class PermanentFailure(Exception):
    """The item is recorded `failed`; raised so the message is not retried
    and lands in the dead-letter queue for inspection."""


def sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(exc, "sqlstate", None)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError):
            return True
        code = sqlstate(exc)
        if not code:
            return False
        return code in TRANSIENT_SQLSTATES or code[:2] in TRANSIENT_SQLSTATE_CLASSES
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError | TimeoutError)


def describe(exc: BaseException) -> str:
    """A PII-free description: type, and SQLSTATE or SMTP code when there is one."""
    code = sqlstate(exc) or getattr(exc, "smtp_code", None)
    return f"{type(exc).__name__}" + (f" ({code})" if code else "")
