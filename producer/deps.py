"""Request-scoped dependencies: the database session."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.orm import Session

from shared.db import get_sessionmaker


def get_session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session
