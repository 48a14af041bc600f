"""The one place the tests reach into the process-wide singletons (cached
settings, the broker, the progress counter): switching this process to
other settings means setting the environment and forgetting all three."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def forget_settings() -> None:
    """Drop everything built from the settings, so the next use reads the environment."""
    from shared.broker import reset_broker
    from shared.progress import reset_progress
    from shared.settings import get_settings

    get_settings.cache_clear()
    reset_broker()
    reset_progress()


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
