"""Engines, sessions and the one clock. The engine a process uses is its
runtime's (`shared.runtime`)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, create_engine, event


def now() -> datetime:
    """The one clock: timezone-aware UTC, also for values stored on SQLite."""
    return datetime.now(UTC)


def make_engine(url: str) -> Engine:
    """An engine for `url`; a process makes one (`shared.runtime`). Its errors
    never quote the statement's parameters (emails, names, search texts):
    they end up in logs and tracebacks."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, pool_size=10, max_overflow=20, pool_pre_ping=True, hide_parameters=True
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
