"""Test fixtures. Tests run against the real local PostgreSQL, RabbitMQ and Redis.

Each test run gets its own PostgreSQL database, migrated with Alembic. Tests do
not truncate: each builds its own school, and every query is school-scoped,
which is also what the product promises.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

PG_ADMIN_URL = os.environ.get(
    "TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1/postgres"
)


def _create_database(name: str) -> str:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_database(name: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head, also exported as DATABASE_URL
    so that subprocesses (workers, producer) started by tests use it."""
    from batchctl.migrate import upgrade
    from shared.settings import get_settings

    name = f"batch_actions_test_{uuid.uuid4().hex[:8]}"
    url = _create_database(name)
    upgrade(url)
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    yield url
    _drop_database(name)


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    """A session in a transaction that commits at the end of the test."""
    from shared.db import get_sessionmaker

    with get_sessionmaker(database_url)() as session:
        yield session
        session.commit()


@pytest.fixture
def school(session: Session):
    """A small seeded school: 40 learners, 3 groups, 6 courses."""
    from batchctl.seed import seed_school

    seeded = seed_school(session, learners=40, groups=3, courses=6, name="Test School")
    session.commit()
    return seeded


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database, dropped after the test."""
    name = f"batch_actions_empty_{uuid.uuid4().hex[:8]}"
    yield _create_database(name)
    _drop_database(name)


# End-to-end: real RabbitMQ, Redis, SMTP, producer and worker processes.


class Stack:
    """The producer and workers running as in production, on their own vhost."""

    def __init__(self, env: dict, base_url: str, vhost, smtp, producer, worker) -> None:
        self.env, self.base_url, self.vhost, self.smtp = env, base_url, vhost, smtp
        self.producer, self.worker = producer, worker

    def broker(self):
        """A RabbitMQ broker on the stack's vhost that signs like the stack does."""
        from shared.broker import build_broker
        from shared.settings import Settings

        return build_broker(
            Settings(broker_url=self.vhost.url, signing_key=self.env["SIGNING_KEY"])
        )

    def client(self, token: str):
        from producer.client import BatchClient

        return BatchClient(self.base_url, token)


@pytest.fixture(scope="session")
def stack(database_url: str, tmp_path_factory) -> Iterator[Stack]:
    from tests.support.services import (
        Process,
        RabbitVhost,
        SmtpServer,
        free_port,
        stack_env,
        wait_for_consumers,
        wait_http,
    )

    logs = tmp_path_factory.mktemp("stack-logs")
    vhost = RabbitVhost()
    smtp = SmtpServer()
    port = free_port()
    env = stack_env(
        database_url,
        vhost,
        smtp,
        SIGNING_KEY_PREVIOUS="test-old-signing-key-" + uuid.uuid4().hex,
        DISPATCH_WINDOW="200",
        DELETION_GRACE_SECONDS="1",
        SMTP_RATE_PER_SECOND="500",
    )
    producer = Process(["serve", "--port", str(port)], env, logs / "producer.log")
    worker = Process(["worker", "--processes", "1", "--threads", "8"], env, logs / "worker.log")
    running = Stack(env, f"http://127.0.0.1:{port}", vhost, smtp, producer, worker)
    try:
        wait_http(f"{running.base_url}/healthz", producer)
        wait_for_consumers(vhost, "add_to_group", worker)
        wait_http(f"http://127.0.0.1:{env['METRICS_PORT']}/metrics", worker)
        yield running
    finally:
        producer.stop()
        worker.stop()
        smtp.stop()
        vhost.delete()
