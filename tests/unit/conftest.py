"""Tier 1: the fast tests, with no services at all.

Every test here runs as the embedded mode does: DATABASE_URL is a SQLite file
(migrated once per run; `session` and `school` work on it), BROKER_URL is
empty (Dramatiq's StubBroker), REDIS_URL is empty (no Redis) and invitations
go to a mailbox file in the test's tmp_path. A test that reaches for
PostgreSQL, RabbitMQ or Redis anyway fails, naming what it tried: it belongs
in tests/integration.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.environment import environment

SERVICE_PORTS = {
    5432: "PostgreSQL",
    5672: "RabbitMQ",
    15672: "RabbitMQ management",
    15692: "RabbitMQ metrics",
    6379: "Redis",
}
MOVE_IT = "tier 1 (tests/unit) runs without services; move this test to tests/integration"


class ServiceUsed(RuntimeError):
    """A tier-1 test tried to reach a real service."""


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tier 1's database: a SQLite file migrated to head, as `batchctl demo` uses."""
    from batchctl.migrate import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'batch_actions.db'}"
    upgrade(url)
    return url


@pytest.fixture
def fresh_pg_url() -> str:
    pytest.fail(f"fresh_pg_url needs PostgreSQL: {MOVE_IT}")


@pytest.fixture
def stack() -> None:
    pytest.fail(f"stack needs PostgreSQL, RabbitMQ and Redis: {MOVE_IT}")


@pytest.fixture(autouse=True)
def no_services(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """The embedded settings, and a refusal for any connection to a service.

    The refusal is an exception where the connection is made, and a failure
    of the test at teardown too, in case the code under test swallowed it
    (Redis errors, for one, are meant to be survivable)."""
    tried: list[str] = []

    def refuse(service: str) -> ServiceUsed:
        tried.append(service)
        return ServiceUsed(f"connected to {service}: {MOVE_IT}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def checked(address) -> None:
        port = address[1] if isinstance(address, tuple) and len(address) >= 2 else None
        if port in SERVICE_PORTS:
            raise refuse(f"{SERVICE_PORTS[port]} (port {port})")

    def connect(sock: socket.socket, address) -> None:
        checked(address)
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address) -> int:
        checked(address)
        return real_connect_ex(sock, address)

    def connect_postgresql(*args, **kwargs):
        raise refuse("PostgreSQL")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(psycopg, "connect", connect_postgresql)
    with environment(
        DATABASE_URL=database_url,
        BROKER_URL="",
        REDIS_URL="",
        SMTP_URL="",
        MAILBOX_PATH=str(tmp_path / "mailbox.txt"),
    ):
        yield
    if tried:
        pytest.fail(f"connected to {', '.join(sorted(set(tried)))}: {MOVE_IT}")
