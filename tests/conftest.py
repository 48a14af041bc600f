"""Fixtures shared by the tiers: tests/unit (no services: SQLite and the
in-process broker, see its conftest), tests/integration (the real local
PostgreSQL, RabbitMQ and Redis) and tests/faults.

Each test run gets its own PostgreSQL database, migrated with Alembic. Tests do
not truncate: each builds its own school, and every query is school-scoped,
which is also what the product promises.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from tests.support.environment import environment
from tests.support.services import (
    Process,
    RabbitVhost,
    SmtpServer,
    create_database,
    drop_database,
    free_port,
    http_ok,
    stack_env,
    wait_until,
)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head, also exported as DATABASE_URL
    so that subprocesses (workers, producer) started by tests use it."""
    from batchctl.migrate import upgrade

    name = f"batch_actions_test_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    upgrade(url)
    with environment(DATABASE_URL=url):
        yield url
    drop_database(name)


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    """A session in a transaction that commits at the end of the test."""
    from tests.support.environment import sessions_for

    with sessions_for(database_url)() as session:
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
    yield create_database(name)
    drop_database(name)


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
        from batch_actions_client import BatchClient

        return BatchClient(self.base_url, token)


@pytest.fixture(scope="session")
def stack(database_url: str, tmp_path_factory) -> Iterator[Stack]:
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
    producer = Process.batchctl(["serve", "--port", str(port)], env, logs / "producer.log")
    worker = Process.batchctl(
        ["worker", "--processes", "1", "--threads", "8"], env, logs / "worker.log"
    )
    running = Stack(env, f"http://127.0.0.1:{port}", vhost, smtp, producer, worker)
    try:
        wait_until(lambda: http_ok(f"{running.base_url}/healthz"), 30, "the producer", producer)
        wait_until(lambda: vhost.queues.consumers("add_to_group"), 60, "the worker", worker)
        metrics = f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"
        wait_until(lambda: http_ok(metrics), 30, "the worker's metrics", worker)
        yield running
    finally:
        producer.stop()
        worker.stop()
        smtp.stop()
        vhost.delete()


@pytest.fixture
def deletions_finalized(stack: Stack, database_url: str) -> Iterator[None]:
    """The reconciler's deletion duty while the test runs: every 0.3 s the
    due deletions are claimed and their `finalize_deletion` messages
    published to the stack's workers (`workers.deletion.claim_due`). The
    stack runs no reconciler: its other duties (webhooks, retention) would
    race the tests that run them."""
    from shared.publish import ConfirmedPublisher
    from tests.support.environment import sessions_for
    from workers.deletion import claim_due

    sessions = sessions_for(database_url)
    broker = stack.broker()
    stop = threading.Event()

    def claim() -> None:
        publisher = ConfirmedPublisher(broker)
        while not stop.wait(0.3):
            try:
                claim_due(sessions, publisher, timedelta(seconds=30))
            except Exception:
                logging.getLogger(__name__).exception("claiming due deletions")
        publisher.close()

    claimer = threading.Thread(target=claim, name="deletions-finalized", daemon=True)
    claimer.start()
    yield
    stop.set()
    claimer.join(timeout=10)
    broker.close()
