"""`batchctl` says what went wrong in one line and exits non-zero: which
database `migrate` migrated, an API it cannot reach, a body the API refused
(issue #12 items 21 and 28)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchctl import cli
from batchctl.migrate import describe


def test_migrate_without_database_url_names_the_file_it_created(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["migrate"], env={"DATABASE_URL": None})

    assert result.exit_code == 0, result.output
    assert (tmp_path / "batch_actions.db").exists()
    assert f"the SQLite file {tmp_path / 'batch_actions.db'}" in result.output
    assert "DATABASE_URL is not set" in result.output


def test_the_database_migrate_names_never_shows_its_password():
    shown = describe("postgresql+psycopg://ba_app:s3cret-pw@db.internal:5432/batch_actions")
    assert "s3cret-pw" not in shown
    assert "ba_app" in shown and "db.internal:5432/batch_actions" in shown


@pytest.fixture
def in_process_api(school, monkeypatch: pytest.MonkeyPatch):
    """`batchctl` talks to the app itself, on the embedded database."""
    from fastapi.testclient import TestClient

    from batch_actions_client import BatchClient
    from producer.app import create_app

    app = create_app(dispatch=False)
    monkeypatch.setattr(
        cli, "_client", lambda url, token: BatchClient("", token, http=TestClient(app))
    )
    return school


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def test_an_unreachable_api_is_one_line_and_exit_code_1():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}"

    for args in (
        ["status", "7"],
        ["items", "7"],
        ["cancel", "7"],
        ["submit", "deactivate_learner", "--learner-ids", "1"],
    ):
        result = CliRunner().invoke(cli.app, [*args, "--url", url, "--token", "t"])

        assert result.exit_code == 1, args
        assert isinstance(result.exception, SystemExit), result.exception
        assert error_lines(result) == [
            f"error: cannot reach the API at {url}/ (ConnectError); start it "
            "(`batchctl serve`) or point --url or BATCH_API_URL at it"
        ]


def test_a_422_names_the_field_and_what_it_expects_in_one_line(in_process_api):
    result = CliRunner().invoke(
        cli.app,
        ["submit", "deactivate_learner", "--q", "x" * 201],
        env={"BATCH_API_TOKEN": in_process_api.token},
    )

    assert result.exit_code == 1
    assert error_lines(result) == [
        "error: HTTP 422: selection.filter.q: String should have at most 200 characters"
    ]


def test_a_refusal_of_the_api_itself_is_one_line_too(in_process_api):
    result = CliRunner().invoke(
        cli.app,
        ["submit", "add_to_group", "--status", "active", "--group-ids", "999999999"],
        env={"BATCH_API_TOKEN": in_process_api.token},
    )

    assert result.exit_code == 1
    [line] = error_lines(result)
    assert line.startswith("error: HTTP 422: params.group_ids: no such group in this school")
