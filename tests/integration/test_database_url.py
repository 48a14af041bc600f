"""DATABASE_URL naming a primary and a standby (libpq multi-host, SQLAlchemy's
query form), and the pool settings every engine is built with.

The failover itself is a fault scenario (tests/faults/test_pg_failover.py);
here: the URL is accepted or refused with a clear error, it reaches the
database through the engine and through the workers' own connections, a
connection that reached a standby is replaced, and the producer answers 503
while no database accepts connections."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url

from batchctl.migrate import describe
from producer.app import create_app
from shared.db import libpq_conninfo, make_engine
from shared.runtime import Runtime
from shared.settings import Settings
from workers import statements
from workers.errors import is_transient
from workers.runtime import WorkerRuntime

PAIR = (
    "postgresql://app:s3cret@/batches?host=10.0.0.1:5432&host=10.0.0.2:5433"
    "&target_session_attrs=read-write"
)
CLOSED = "127.0.0.1:1"  # nothing listens there: connections are refused at once


def _multi_host(database_url: str, *hosts: str) -> str:
    """The test database's URL naming `hosts` in the query form."""
    url = make_url(database_url)
    query = "&".join(f"host={host}" for host in hosts)
    return f"postgresql+psycopg://{url.username}@/{url.database}?{query}&target_session_attrs=read-write"


def _reachable(database_url: str) -> str:
    url = make_url(database_url)
    return f"{url.host or '127.0.0.1'}:{url.port or 5432}"


def test_a_pair_in_the_query_form_is_accepted_and_read_as_libpq_does():
    settings = Settings(database_url=PAIR)
    assert settings.database_url.startswith("postgresql+psycopg://")

    conninfo = libpq_conninfo(settings.database_url)

    assert "host=10.0.0.1,10.0.0.2" in conninfo
    assert "port=5432,5433" in conninfo
    assert "target_session_attrs=read-write" in conninfo


def test_several_hosts_without_read_write_are_refused_naming_the_fix():
    without = PAIR.replace("&target_session_attrs=read-write", "")
    with pytest.raises(ValidationError) as refused:
        Settings(database_url=without)
    message = str(refused.value)
    assert "DATABASE_URL" in message and "target_session_attrs=read-write" in message
    assert "s3cret" not in message


def test_the_libpq_comma_form_is_refused_pointing_at_the_query_form():
    with pytest.raises(ValidationError) as refused:
        Settings(database_url="postgresql://app:s3cret@10.0.0.1:5432,10.0.0.2:5433/batches")
    message = str(refused.value)
    assert "?host=HOST1:5432&host=HOST2:5432" in message
    assert "s3cret" not in message


def test_migrate_names_a_pair_without_its_password():
    said = describe(Settings(database_url=PAIR).database_url)
    assert "s3cret" not in said
    assert "10.0.0.1" in said and "10.0.0.2" in said


def test_the_engine_and_the_workers_connections_reach_the_host_that_answers(database_url):
    # The first host refuses, as a dead primary does; libpq tries the next.
    url = Settings(database_url=_multi_host(database_url, CLOSED, _reachable(database_url)))
    engine = make_engine(url.database_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()

    connections = statements.Connections(url.database_url)
    try:
        assert connections.get().execute("SELECT 1").fetchone() == (1,)
    finally:
        connections.discard()


def test_every_engine_of_a_process_takes_the_pool_settings(database_url):
    settings = Settings(
        database_url=database_url, database_pool_size=3, database_max_overflow=1, broker_url=""
    )
    runtime = Runtime(settings)
    try:
        assert runtime.engine.pool.size() == 3
        assert runtime.engine.pool._max_overflow == 1  # type: ignore[attr-defined]
    finally:
        runtime.close()


@pytest.mark.parametrize(
    ("kind", "pool", "expected"),
    [
        (Runtime, {}, (10, 20)),
        (WorkerRuntime, {}, (2, 0)),  # its threads hold their own connections
        (WorkerRuntime, {"database_pool_size": 6, "database_max_overflow": 3}, (6, 3)),
    ],
)
def test_a_worker_process_keeps_a_small_pool_unless_told_otherwise(
    database_url, kind, pool, expected
):
    settings = Settings(
        database_url=database_url,
        broker_url="amqp://guest:guest@127.0.0.1:5672/%2F",
        signing_key="k" * 32,
        **pool,
    )
    runtime = kind(settings)
    try:
        assert (runtime.engine.pool.size(), runtime.engine.pool._max_overflow) == expected  # type: ignore[attr-defined]
    finally:
        runtime.close()


def test_pool_settings_refuse_nonsense_naming_the_setting():
    with pytest.raises(ValidationError, match="database_pool_size"):
        Settings(database_pool_size=0)


def test_a_connection_that_reached_a_read_only_server_is_replaced(database_url):
    """A standby (or a demoted primary) refuses writes with SQLSTATE 25006;
    the pool must drop that connection, and the error is worth a retry."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            with pytest.raises(sa_exc.DBAPIError) as refused:
                connection.execute(text("CREATE TABLE never_created (id int)"))
        assert refused.value.connection_invalidated
        assert is_transient(refused.value)
        with engine.connect() as connection:  # a new connection, writable again
            assert connection.execute(text("SHOW transaction_read_only")).scalar_one() == "off"
    finally:
        engine.dispose()


def test_the_producer_answers_503_while_no_database_accepts_connections():
    settings = Settings(
        database_url=f"postgresql+psycopg://root@/nowhere?host={CLOSED}&host={CLOSED}"
        "&target_session_attrs=read-write",
        broker_url="",
        redis_url="",
    )
    runtime = Runtime(settings)
    try:
        with TestClient(create_app(runtime, dispatch=False)) as client:
            # The token check before the body, then a route's own query.
            posted = client.post(
                "/v1/batches",
                headers={"Authorization": "Bearer some-token"},
                json={"action": "resend_invitation", "selection": {"learner_ids": [1]}},
            )
            listed = client.get("/v1/batches", headers={"Authorization": "Bearer some-token"})
    finally:
        runtime.close()

    for answer in (posted, listed):
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "2"
        assert "retry" in answer.json()["detail"]
