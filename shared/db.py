"""Engines, sessions and the one clock. The engine a process uses is its
runtime's (`shared.runtime`)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import ExceptionContext, make_url

# SQLSTATEs after which a pooled connection is useless: it reached a standby
# (read_only_sql_transaction, a DATABASE_URL without target_session_attrs),
# or its server is going away. The pool replaces it (and, as for any
# disconnect, every connection checked out before), and the error is
# transient (`workers.errors`), so the message is retried on a new one.
REPLACE_CONNECTION_SQLSTATES = {"25006", "57P01", "57P02", "57P03"}


def now() -> datetime:
    """The one clock: timezone-aware UTC, also for values stored on SQLite."""
    return datetime.now(UTC)


def make_engine(url: str, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """An engine for `url`; a process makes one (`shared.runtime`), its pool
    sized by DATABASE_POOL_SIZE and DATABASE_MAX_OVERFLOW. Its errors never
    quote the statement's parameters (emails, names, search texts): they end
    up in logs and tracebacks. Connections are pinged on checkout, so those a
    failover broke are replaced instead of failing the next transaction."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        hide_parameters=True,
    )
    event.listen(engine, "handle_error", _replace_connection)
    return engine


def _replace_connection(context: ExceptionContext) -> None:
    code = getattr(context.original_exception, "sqlstate", None)
    if code in REPLACE_CONNECTION_SQLSTATES:
        context.is_disconnect = True


def libpq_conninfo(url: str) -> str:
    """The libpq connection string for a PostgreSQL DATABASE_URL, as
    SQLAlchemy's psycopg dialect reads it: the multi-host query form
    (`?host=a:5432&host=b:5432`) becomes `host=a,b port=5432,5432`, which
    the URL rendered back as text would not (libpq keeps the last `host`)."""
    parsed = make_url(url).set(drivername="postgresql+psycopg")
    _, params = PGDialect_psycopg().create_connect_args(parsed)
    params.pop("context", None)  # the dialect's adapters, not a connection parameter
    return psycopg.conninfo.make_conninfo(**params)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
