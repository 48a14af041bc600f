"""Settings come from the environment or a `.env` file in the working
directory (shared/settings.py, README's table); a value out of range is
refused at start, naming the variable. The refusals that protect security
are tests/unit/test_security_settings.py's."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import Settings

CONFIGURED = ("DATABASE_URL", "BROKER_URL", "REDIS_URL", "SMTP_URL", "MAILBOX_PATH")


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no `.env` and none of tier 1's variables set."""
    monkeypatch.chdir(tmp_path)
    for name in CONFIGURED:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_with_nothing_set_it_is_the_embedded_mode(bare: Path) -> None:
    settings = Settings()
    assert settings.database_url == "sqlite:///batch_actions.db"
    assert (settings.broker_url, settings.redis_url, settings.smtp_url) == ("", "", "")
    assert settings.dispatch_window == 2000
    assert settings.metrics_port == 9191


def test_variables_of_the_environment_are_read_and_typed(
    bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_WINDOW", "500")
    monkeypatch.setenv("RECONCILE_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/3")
    settings = Settings()
    assert settings.dispatch_window == 500
    assert settings.reconcile_interval_seconds == 0.5
    assert settings.redis_url == "redis://cache:6379/3"


def test_a_dot_env_file_is_read_and_the_environment_wins_over_it(
    bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (bare / ".env").write_text("DISPATCH_WINDOW=300\nDELETION_GRACE_SECONDS=5\n")
    monkeypatch.setenv("DELETION_GRACE_SECONDS", "7")
    settings = Settings()
    assert settings.dispatch_window == 300
    assert settings.deletion_grace_seconds == 7


@pytest.mark.parametrize("scheme", ["postgresql://", "postgres://"])
def test_a_plain_postgresql_url_uses_psycopg_3(
    bare: Path, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"{scheme}app@db.internal/batch_actions")
    assert Settings().database_url == "postgresql+psycopg://app@db.internal/batch_actions"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DISPATCH_WINDOW", "0"),
        ("DISPATCH_WINDOW", "many"),
        ("METRICS_PORT", "70000"),
        ("RECONCILE_INTERVAL_SECONDS", "0"),
        ("SMTP_RATE_PER_SECOND", "0"),
        ("MAX_BODY_BYTES", "100"),
        ("MAX_DELIVERIES", "0"),
    ],
)
def test_a_value_out_of_range_is_refused_naming_the_variable(
    bare: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert variable.lower() in str(refused.value)
