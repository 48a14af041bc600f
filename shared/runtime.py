"""What a process holds for its whole life, in one object.

The command that starts a process (`batchctl serve`, `worker`, `reconcile`,
`demo`, ...) builds one `Runtime` from the settings with `start()` and
closes it at exit with `stop()`: the settings, the database engine and
sessions, the Dramatiq broker, the one Redis client and the progress counter
built on it. Worker processes extend it (`workers.runtime.WorkerRuntime`)
with the hot path's per-process state.

Code that runs outside a command (the migration environment, a test) gets a
runtime built from the environment on first use of `current()`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar, overload

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.broker import build_broker
from shared.db import make_engine
from shared.progress import NoProgress, Progress, RedisProgress
from shared.settings import Settings

R = TypeVar("R", bound="Runtime")


class Runtime:
    """One process's settings and connections. Nothing in it is per request
    or per message: it is built once and shared by every thread."""

    rabbitmq_class: type[RabbitmqBroker] = RabbitmqBroker

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        size, overflow = self.default_pool()
        if settings.database_pool_size is not None:
            size = settings.database_pool_size
        if settings.database_max_overflow is not None:
            overflow = settings.database_max_overflow
        self.engine: Engine = make_engine(settings.database_url, size, overflow)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)
        # Redis keys are scoped to the database they count for, so two
        # deployments (or test runs) sharing one Redis never mix batch ids.
        self.namespace = hashlib.sha256(settings.database_url.encode()).hexdigest()[:8]
        self.redis: redis.Redis | None = (
            redis.Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
            if settings.redis_url
            else None
        )
        self.progress: Progress = (
            RedisProgress(self.redis, self.namespace) if self.redis else NoProgress()
        )
        self.broker: dramatiq.Broker = build_broker(settings, self.rabbitmq_class)

    def default_pool(self) -> tuple[int, int]:
        """The database pool (connections kept, more opened under load) when
        DATABASE_POOL_SIZE and DATABASE_MAX_OVERFLOW are unset."""
        return (10, 20)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose transaction commits on success, rolls back on error."""
        with self.sessions() as session, session.begin():
            yield session

    def key(self, *parts: object) -> str:
        """A Redis key of this deployment: `batch-actions:<namespace>:<parts...>`."""
        return ":".join(["batch-actions", self.namespace, *map(str, parts)])

    def close(self) -> None:
        self.broker.close()
        self.engine.dispose()
        if self.redis is not None:
            self.redis.close()


_current: Runtime | None = None
_lock = threading.Lock()


@overload
def start(settings: Settings | None = None) -> Runtime: ...


@overload
def start(settings: Settings | None = None, *, kind: type[R]) -> R: ...


def start(settings: Settings | None = None, kind: type[Runtime] = Runtime) -> Runtime:
    """Build this process's runtime (closing any earlier one) and make its
    broker Dramatiq's global broker, which actors declared later bind to.
    `start()` builds a `Runtime`; `start(kind=WorkerRuntime)` a subclass."""
    global _current
    with _lock:
        if _current is not None:
            _current.close()
        runtime = kind(settings or Settings())
        dramatiq.set_broker(runtime.broker)
        _current = runtime
    return runtime


def current() -> Runtime:
    """This process's runtime; built from the environment on first use."""
    runtime = _current
    if runtime is None:
        with _lock:
            runtime = _current
        if runtime is None:
            runtime = start()
    return runtime


def stop() -> None:
    """Close this process's runtime; the next `current()` builds a new one."""
    global _current
    with _lock:
        if _current is not None:
            _current.close()
        _current = None
