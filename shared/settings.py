"""All configuration, read once from the environment (or a `.env` file).

One class so that every process (producer, worker, reconciler, CLI) agrees on
the same names; they are part of the contract in docs/CONTRACT.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# HMAC keys shorter than this are refused (`openssl rand -hex 32` gives 64 characters).
MIN_KEY_BYTES = 32


class LogSettings(BaseSettings):
    """How a process logs (shared/logs.py): read on their own first, so that a
    process can log why the rest of its settings are refused."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    # `json`: one JSON object per line (for a log shipper); `text`: for people.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip()
        return value.upper() if info.field_name == "log_level" else value.lower()


class Settings(LogSettings):
    # Errors never echo a value: settings hold keys and passwords.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    # Embedded mode: a SQLite file in the working directory.
    database_url: str = "sqlite:///batch_actions.db"
    # Each process's pool of database connections (PostgreSQL): kept open,
    # and opened beyond it under load, then closed. Unset, each kind of
    # process sizes its own (`Runtime.pool`): 10 + 20 for the producer and
    # the reconciler, 2 + 0 for a worker process, whose threads each run the
    # hot path on a connection of their own. Every process's pool together,
    # and each worker thread's connection, must fit max_connections.
    database_pool_size: int | None = Field(default=None, ge=1)
    database_max_overflow: int | None = Field(default=None, ge=0)
    # Empty means Dramatiq's in-process broker (embedded mode). The nodes of a
    # RabbitMQ cluster are separated by `;`, tried in order on every connect.
    broker_url: str = ""
    # How every queue is declared: `classic` (priority queues, one node) or
    # `quorum` (replicated over a cluster). A queue never changes type: see
    # docs/OPERATIONS.md, "Moving to quorum queues".
    queue_type: Literal["classic", "quorum"] = "classic"
    # Empty means no Redis: progress and rate limits fall back to the database.
    redis_url: str = ""
    # Empty means invitations are appended to a local mailbox file.
    smtp_url: str = ""
    mailbox_path: str = "mailbox.txt"
    # Invitation emails per second, shared by every worker through Redis.
    smtp_rate_per_second: int = Field(default=50, ge=1)
    smtp_from: str = "no-reply@batch-actions.invalid"
    # A learner invited less than this ago is skipped (`recently_invited`),
    # across batches too; 0 turns the cooldown off.
    invite_cooldown_seconds: int = Field(default=3600, ge=0)
    # HMAC key for broker messages and invitation links; while rotating, the
    # old key goes in SIGNING_KEY_PREVIOUS (accepted, never used to sign).
    signing_key: str = ""
    signing_key_previous: str = ""
    dispatch_window: int = Field(default=2000, ge=1)
    deletion_grace_seconds: int = Field(default=60, ge=0)
    # Reconciler: how often it runs, when in-flight items count as lost, and
    # how long a `finalize_deletion` message it published has before it purges
    # the learners still not purged itself.
    reconcile_interval_seconds: float = Field(default=5.0, gt=0)
    stale_after_seconds: int = Field(default=120, ge=1)
    deletion_overdue_seconds: int = Field(default=30, ge=0)
    # Retention, enforced by the reconciler (workers/retention.py): finished
    # batches and their items go this many days after they finished, audit rows
    # this many days after they were written; 0 keeps them forever. The trail
    # never goes before the batches it describes (checked below).
    batch_retention_days: int = Field(default=90, ge=0)
    audit_retention_days: int = Field(default=365, ge=0)
    # HTTP API limits.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    api_rate_per_minute: int = Field(default=600, ge=1)
    # Every token of a school together, and failed authentications per client
    # address (guessing tokens, or a stranger's load).
    school_rate_per_minute: int = Field(default=1200, ge=1)
    auth_failures_per_minute: int = Field(default=30, ge=1)
    max_active_batches_per_school: int = Field(default=10, ge=1)
    # Learners one school may select in any hour (sum of its batches' totals),
    # so one token cannot fill the database with batches that finish at once.
    selected_learners_per_hour: int = Field(default=10_000_000, ge=1)
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
    # The producer's, apart from its API port (docs/SECURITY.md, audit item 19).
    producer_metrics_port: int = Field(default=9192, ge=0, le=65535)

    # Message integrity, SMTP and invitation links (docs/SECURITY.md, audit of
    # 2026-11-29). Signed messages older than this are rejected. The oldest
    # legitimate one is a message retried RETRY_MAX times (about 14 minutes of
    # backoff at the defaults) with a 60 s time limit per attempt, about 26
    # minutes in all, plus DELETION_GRACE_SECONDS for a `finalize_deletion`
    # message published before #16 (delayed, one per learner); an hour leaves
    # room for a backlog. One rejected as too old is late, not lost: the
    # reconciler republishes its item (or its deletion chunk) anew.
    message_max_age_seconds: int = Field(default=3600, ge=60)
    # CA bundle (PEM) to verify the SMTP server by, for a private CA; empty
    # means the system's trusted CAs.
    smtp_ca_file: str = ""
    # Where invitation links point; each link appends its token to it.
    invite_url_base: str = "https://learn.example/invitations"
    # An invitation link stops working this long after its email is written.
    invite_link_ttl_hours: int = Field(default=168, ge=1)
    # HMAC key of invitation links (32+ bytes), so that rotating SIGNING_KEY
    # leaves outstanding links working. Empty: derived from SIGNING_KEY (and
    # SIGNING_KEY_PREVIOUS is accepted for links too while rotating).
    invite_link_key: str = ""

    # Completion webhooks (docs/SECURITY.md, "Webhooks"). Endpoints that
    # resolve to loopback, private, link-local or reserved addresses, and
    # plain http:// URLs, are refused unless allowed (local development and
    # tests); cloud metadata addresses are refused always.
    webhook_allow_private_addresses: bool = False
    webhook_allow_http: bool = False
    # One attempt's HTTP timeout (connect, send, each read).
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # Retries: WEBHOOK_BACKOFF_MIN_SECONDS doubling to WEBHOOK_BACKOFF_MAX_SECONDS,
    # WEBHOOK_MAX_ATTEMPTS attempts in all (the defaults span about 32 hours).
    webhook_max_attempts: int = Field(default=15, ge=1, le=100)
    webhook_backoff_min_seconds: float = Field(default=30.0, gt=0)
    webhook_backoff_max_seconds: float = Field(default=6 * 3600.0, gt=0)
    # After a secret rotation, deliveries carry a signature with the old
    # secret too for this long, so receivers can switch without a gap.
    webhook_secret_grace_hours: float = Field(default=24.0, ge=0)
    # Key (32+ bytes) that encrypts the stored signing secrets of endpoints.
    # Empty: derived from SIGNING_KEY (secrets sealed with SIGNING_KEY_PREVIOUS
    # still open while rotating). Without either, as in the embedded demo,
    # secrets are stored under a fixed key: obscured, not protected.
    webhook_secret_key: str = ""

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, url: str) -> str:
        # Plain postgresql:// would make SQLAlchemy look for psycopg2, which we do not ship.
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @field_validator("broker_url")
    @classmethod
    def _every_node_is_amqp(cls, url: str) -> str:
        nodes = url.split(";")
        if len(nodes) > 1 and not all(n.startswith(("amqp://", "amqps://")) for n in nodes):
            raise ValueError(
                "BROKER_URL lists several nodes: separate amqp:// URLs with `;`, e.g. "
                "amqp://user:pw@rabbit-0:5672/vhost;amqp://user:pw@rabbit-1:5672/vhost"
            )
        return url

    @field_validator("database_url")
    @classmethod
    def _several_hosts_reach_the_primary(cls, url: str) -> str:
        # The messages never quote the URL: it can hold a password.
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            raise ValueError(
                "DATABASE_URL cannot be read as a database URL (several hosts go in its "
                "query, not before the database name); for a primary and a standby use "
                "postgresql+psycopg://user:password@/db?host=HOST1:5432&host=HOST2:5432"
                "&target_session_attrs=read-write"
            ) from None
        given = parsed.query.get("host", ())
        hosts = [given] if isinstance(given, str) else list(given)
        several = len(hosts) > 1 or any("," in h for h in [*hosts, parsed.host or ""])
        attrs = parsed.query.get("target_session_attrs")
        if several and attrs not in ("read-write", "primary"):
            raise ValueError(
                "DATABASE_URL names several hosts without target_session_attrs=read-write: "
                "connections could reach the standby, which refuses every write; add "
                "&target_session_attrs=read-write"
            )
        return url

    @field_validator("smtp_url")
    @classmethod
    def _no_password_in_clear(cls, url: str) -> str:
        if not url:
            return url
        parsed = urlparse(url)
        if parsed.scheme not in ("smtp", "smtp+starttls", "smtps"):
            raise ValueError(
                "SMTP_URL must start with smtps:// (TLS, port 465), smtp+starttls:// "
                "(STARTTLS, port 587) or smtp:// (unencrypted, no login)"
            )
        if parsed.scheme == "smtp" and parsed.username:
            raise ValueError(
                "SMTP_URL has a login on an unencrypted smtp:// connection, which would "
                "send the password in clear; use smtps://user:password@host:465 or "
                "smtp+starttls://user:password@host:587"
            )
        return url

    @field_validator("smtp_ca_file")
    @classmethod
    def _ca_file_exists(cls, path: str) -> str:
        if path and not Path(path).is_file():
            raise ValueError("SMTP_CA_FILE names no readable file; give the PEM bundle's path")
        return path

    @field_validator("invite_url_base")
    @classmethod
    def _link_base_is_a_url(cls, base: str) -> str:
        if urlparse(base).scheme not in ("https", "http") or not urlparse(base).hostname:
            raise ValueError(
                "INVITE_URL_BASE must be a URL, e.g. https://learn.example/invitations"
            )
        return base.rstrip("/")

    @model_validator(mode="after")
    def _keys_are_long_enough(self) -> Settings:
        if self.broker_url.startswith("amqp") and not self.signing_key:
            raise ValueError(
                "SIGNING_KEY is required with a RabbitMQ BROKER_URL (workers would act on "
                "anyone's messages): give every process the same 32+ byte key, "
                "e.g. `openssl rand -hex 32`"
            )
        for name in (
            "signing_key",
            "signing_key_previous",
            "invite_link_key",
            "webhook_secret_key",
        ):
            if 0 < len(getattr(self, name).encode()) < MIN_KEY_BYTES:
                raise ValueError(
                    f"{name.upper()} must be at least {MIN_KEY_BYTES} bytes; "
                    "generate one with `openssl rand -hex 32`"
                )
        return self

    @model_validator(mode="after")
    def _audit_outlives_batches(self) -> Settings:
        batch, audit = self.batch_retention_days, self.audit_retention_days
        if audit and (not batch or audit < batch):
            kept = f"{batch} days" if batch else "0 (batches kept forever)"
            raise ValueError(
                f"AUDIT_RETENTION_DAYS ({audit}) must not be shorter than BATCH_RETENTION_DAYS "
                f"({kept}): the audit trail of a batch must outlive it; raise "
                "AUDIT_RETENTION_DAYS (0 keeps the trail forever) or lower BATCH_RETENTION_DAYS"
            )
        return self

    @model_validator(mode="after")
    def _old_messages_are_legitimate_until_max_age(self) -> Settings:
        backoff_ms = sum(
            min(2 * self.retry_min_backoff_ms * 2**n, self.retry_max_backoff_ms)
            for n in range(self.retry_max)
        )
        needed = self.deletion_grace_seconds + backoff_ms // 1000
        if self.message_max_age_seconds <= needed:
            raise ValueError(
                f"MESSAGE_MAX_AGE_SECONDS must be more than DELETION_GRACE_SECONDS plus the "
                f"longest retry backoff ({needed} s here), or legitimate messages are "
                f"rejected; set it to at least {needed + 600}"
            )
        return self
