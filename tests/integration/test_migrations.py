from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from batchctl.migrate import upgrade
from shared.models import Base

CORE_TABLES = {
    "schools",
    "learners",
    "groups",
    "courses",
    "learning_paths",
    "group_memberships",
    "course_enrollments",
    "batches",
    "batch_items",
    "api_tokens",
    "audit_log",
}


def test_upgrade_head_creates_every_table_on_an_empty_database(fresh_pg_url):
    upgrade(fresh_pg_url)
    engine = create_engine(fresh_pg_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert tables >= CORE_TABLES
    assert set(Base.metadata.tables) <= tables


def test_migrations_and_models_agree(database_url):
    engine = create_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def test_embedded_sqlite_database_migrates(tmp_path):
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    engine = create_engine(url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()
