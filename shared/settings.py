"""All configuration, read once from the environment (or a `.env` file).

One class so that every process (producer, worker, reconciler, CLI) agrees on
the same names; they are part of the contract in DESIGN.md.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Embedded mode: a SQLite file in the working directory.
    database_url: str = "sqlite:///batch_actions.db"
    # Empty means Dramatiq's in-process broker (embedded mode).
    broker_url: str = ""
    # Empty means no Redis: progress and rate limits fall back to the database.
    redis_url: str = ""
    # Empty means invitations are appended to a local mailbox file.
    smtp_url: str = ""
    mailbox_path: str = "mailbox.txt"
    # Invitation emails per second, shared by every worker through Redis.
    smtp_rate_per_second: int = Field(default=50, ge=1)
    smtp_from: str = "no-reply@batch-actions.invalid"
    # HMAC key for broker messages and invitation links; while rotating, the
    # old key goes in SIGNING_KEY_PREVIOUS (accepted, never used to sign).
    signing_key: str = ""
    signing_key_previous: str = ""
    dispatch_window: int = Field(default=2000, ge=1)
    deletion_grace_seconds: int = Field(default=60, ge=0)
    # Reconciler: how often it runs, when in-flight items count as lost, and
    # how late a purge may be before the reconciler does it itself.
    reconcile_interval_seconds: float = Field(default=5.0, gt=0)
    stale_after_seconds: int = Field(default=120, ge=1)
    deletion_overdue_seconds: int = Field(default=30, ge=0)
    # HTTP API limits.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    api_rate_per_minute: int = Field(default=600, ge=1)
    max_active_batches_per_school: int = Field(default=10, ge=1)
    # Workers' and the reconciler's Prometheus endpoint. Two worker pools on one
    # host need two ports (each gets its own multiprocess directory too).
    # Transient failures: retries with exponential backoff (milliseconds).
    retry_max: int = Field(default=10, ge=0)
    retry_min_backoff_ms: int = Field(default=500, ge=1)
    retry_max_backoff_ms: int = Field(default=300_000, ge=1)
    # A message redelivered this many times after killing its worker (no ack)
    # is given up: its item ends `failed` and it goes to the dead letters.
    max_deliveries: int = Field(default=5, ge=1)
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9191, ge=0, le=65535)

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, url: str) -> str:
        # Plain postgresql:// would make SQLAlchemy look for psycopg2, which we do not ship.
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
