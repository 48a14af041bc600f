"""Apply the Alembic migrations from code (`batchctl migrate`, tests, the demo)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

import shared
from shared.settings import Settings

MIGRATIONS = Path(shared.__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url or Settings().database_url)
    return config


def upgrade(url: str | None = None, revision: str = "head") -> str:
    """Migrate `url` (default: DATABASE_URL) and say which database that was."""
    url = url or Settings().database_url
    command.upgrade(alembic_config(url), revision)
    return describe(url)


def describe(url: str) -> str:
    """The database `url` names, fit to print: never its password, and a
    SQLite file as its absolute path (a relative one depends on the cwd)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return f"the SQLite file {Path(parsed.database).resolve()}"
    return parsed.render_as_string(hide_password=True)
