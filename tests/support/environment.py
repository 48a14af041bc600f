"""The one place the tests switch this process's runtime (`shared.runtime`:
settings, engine, broker, Redis, progress): set the environment and stop the
runtime, so the next use builds one from it."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

from sqlalchemy.orm import Session, sessionmaker


def forget_settings() -> None:
    """Drop everything built from the settings, so the next use reads the environment."""
    from shared import runtime

    runtime.stop()


@contextlib.contextmanager
def environment(**variables: str) -> Iterator[None]:
    """This process runs with `variables` in its environment (DATABASE_URL=...,
    BROKER_URL=...), then with the environment it had before."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    forget_settings()
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        forget_settings()


@functools.cache
def sessions_for(url: str) -> sessionmaker[Session]:
    """Sessions on a database of the test's choosing, one engine per URL."""
    from shared.db import make_engine

    return sessionmaker(make_engine(url), expire_on_commit=False)
