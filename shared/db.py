"""Engines and sessions. One engine per process and URL, created lazily."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import Engine, Insert, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import get_settings


def now() -> datetime:
    """The one clock: timezone-aware UTC, also for values stored on SQLite."""
    return datetime.now(UTC)


def get_engine(url: str | None = None) -> Engine:
    # Resolved before the cache, so a process that reads settings again
    # (tests, the demo) never gets an engine for a URL it no longer uses.
    return _engine(url or get_settings().database_url)


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    return _sessionmaker(url or get_settings().database_url)


@lru_cache(maxsize=8)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with get_sessionmaker(url)() as session, session.begin():
        yield session


def insert_ignoring_duplicates(session: Session, table: Table) -> Insert:
    """`INSERT ... ON CONFLICT DO NOTHING` for whichever database the session uses.

    Its rowcount says how many rows were new; SQLAlchemy keeps an INSERT's
    rowcount only when asked to.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing().execution_options(preserve_rowcount=True)
