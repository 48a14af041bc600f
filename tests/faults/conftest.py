"""Fixtures of the fault-injection suite, and its report: one table row per
scenario, printed at the end of the run and kept in tests/faults/last-run.txt.

These tests stop and start the machine's RabbitMQ and Redis and kill
database connections: run them under `flock /tmp/batch-actions-machine.lock`
(`make faults` and `make test` on a shared machine)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FaultStack, Row, format_table, start_stack
from tests.support.services import create_database, drop_database

ROWS = pytest.StashKey[list[Row]]()
LAST_RUN = Path(__file__).with_name("last-run.txt")


@pytest.fixture(scope="package")
def database_url() -> Iterator[str]:
    """A database of the suite's own. Every producer and reconciler dispatches
    every running batch of its database, so a stack of another test (the
    session `stack`) sharing it would take this suite's batches to its own
    broker and SMTP server, and the other way round."""
    from batchctl.migrate import upgrade

    name = f"batch_actions_faults_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    upgrade(url)
    yield url
    drop_database(name)


@pytest.fixture
def make_stack(database_url: str, tmp_path: Path) -> Iterator[Callable[..., FaultStack]]:
    """Start a stack for this scenario: `make_stack(pods=2, modules=(), queues=(), env={})`."""
    stacks: list[FaultStack] = []

    def make(**options) -> FaultStack:
        stack = start_stack(database_url, tmp_path, **options)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[Row], None]:
    """Record the scenario's row, then fail the test if the row says so."""

    def record(row: Row) -> None:
        request.config.stash.setdefault(ROWS, []).append(row)
        assert row.ok, f"{row.scenario}: {'; '.join(row.problems)}"

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    table = format_table(rows)
    terminalreporter.section("fault injection: nothing lost, nothing done twice")
    terminalreporter.write_line(table)
    LAST_RUN.write_text(table + "\n")
