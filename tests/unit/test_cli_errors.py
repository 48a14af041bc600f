"""`batchctl` says what went wrong in one line and exits non-zero: which
database `migrate` migrated, an API it cannot reach, a body the API refused
(issue #12 items 21 and 28)."""

from __future__ import annotations

from pathlib import Path

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
