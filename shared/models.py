"""The relational model: one school's people, content, access paths and batches.

Every table that holds something of a school carries `school_id` (directly or
through its learner) so that every query can be scoped to one tenant. Statuses
are stored as short strings with CHECK constraints: readable in ops queries and
portable between PostgreSQL and the embedded SQLite mode.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    column,
    func,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator):
    """A moment, always timezone-aware UTC when read, on both databases.

    PostgreSQL stores `timestamptz`; SQLite has no timezone type and hands back
    naive values (including those its CURRENT_TIMESTAMP wrote, which are UTC).
    Values are converted to UTC before they are stored, so SQLite's text
    comparisons order them correctly."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UtcDateTime()}


class LearnerStatus(enum.StrEnum):
    INVITED = "invited"
    ACTIVE = "active"
    DEACTIVATED = "deactivated"
    DELETING = "deleting"
    DELETED = "deleted"


class BatchStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED = "failed"


# A batch still has work to do (counts against the school's cap) or is over.
ACTIVE_BATCH_STATUSES = (BatchStatus.PENDING, BatchStatus.RUNNING, BatchStatus.CANCELLING)
CANCELLABLE_BATCH_STATUSES = (BatchStatus.PENDING, BatchStatus.RUNNING)
FINISHED_BATCH_STATUSES = (BatchStatus.COMPLETED, BatchStatus.CANCELLED, BatchStatus.FAILED)


class ItemOutcome(enum.StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _one_of(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


def _now() -> Mapped[datetime]:
    return mapped_column(server_default=text("CURRENT_TIMESTAMP"))


def _school_fk() -> Mapped[int]:
    return mapped_column(BigId, ForeignKey("schools.id", ondelete="CASCADE"))


def _learner_fk() -> Mapped[int]:
    return mapped_column(BigId, ForeignKey("learners.id", ondelete="CASCADE"))


class School(Base):
    __tablename__ = "schools"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now()


class Learner(Base):
    """A person of one school. After finalize deletion only a tombstone is left:
    the id (pseudonymous once the PII is gone), the school, and the status."""

    __tablename__ = "learners"
    __table_args__ = (
        UniqueConstraint("school_id", "email", name="uq_learners_school_email"),
        UniqueConstraint("school_id", "external_id", name="uq_learners_school_external_id"),
        # `{"emails": [...]}` selections match case-insensitively (producer/selection.py).
        Index("ix_learners_school_email_lower", "school_id", func.lower(column("email"))),
        Index("ix_learners_school_status_id", "school_id", "status", "id"),
        Index("ix_learners_deletion_due", "deletion_due_at"),
        CheckConstraint(_one_of("status", LearnerStatus), name="status"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    school_id: Mapped[int] = _school_fk()
    email: Mapped[str | None] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    # The school's own identifier (its student information system's id).
    external_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=LearnerStatus.INVITED)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    activated_at: Mapped[datetime | None]
    deactivated_at: Mapped[datetime | None]
    deletion_due_at: Mapped[datetime | None]
    # Its `finalize_deletion` message is out until then (workers/deletion.py);
    # still `deleting` after it, the reconciler purges the learner itself.
    deletion_leased_until: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    # Set by resend_invitation; a new one within INVITE_COOLDOWN_SECONDS is skipped.
    last_invited_at: Mapped[datetime | None]


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    school_id: Mapped[int] = _school_fk()
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now()


class Course(Base):
    __tablename__ = "courses"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    school_id: Mapped[int] = _school_fk()
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now()


class LearningPath(Base):
    __tablename__ = "learning_paths"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    school_id: Mapped[int] = _school_fk()
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now()


class GroupCourse(Base):
    """A course that membership in the group grants."""

    __tablename__ = "group_courses"
    group_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    course_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class GroupLearningPath(Base):
    """A learning path that membership in the group grants."""

    __tablename__ = "group_learning_paths"
    group_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    learning_path_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("learning_paths.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class GroupMembership(Base):
    __tablename__ = "group_memberships"
    learner_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("learners.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = _now()


class CourseEnrollment(Base):
    __tablename__ = "course_enrollments"
    learner_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("learners.id", ondelete="CASCADE"), primary_key=True
    )
    course_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = _now()


class LearningPathEnrollment(Base):
    __tablename__ = "learning_path_enrollments"
    learner_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("learners.id", ondelete="CASCADE"), primary_key=True
    )
    learning_path_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("learning_paths.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = _now()


class LearnerSettings(Base):
    __tablename__ = "learner_settings"
    learner_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("learners.id", ondelete="CASCADE"), primary_key=True
    )
    locale: Mapped[str] = mapped_column(String(16), default="en")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    preferences: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = _now()


class CourseProgress(Base):
    """Analytics: how far a learner is in a course."""

    __tablename__ = "course_progress"
    learner_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("learners.id", ondelete="CASCADE"), primary_key=True
    )
    course_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True
    )
    percent_complete: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = _now()


class ActivityEvent(Base):
    """Analytics: one thing a learner did."""

    __tablename__ = "activity_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    learner_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("learners.id", ondelete="CASCADE"), index=True
    )
    course_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("courses.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[datetime] = _now()


class SharedLink(Base):
    """A link that opens one course or learning path for one learner without a
    password, e.g. from an SSO portal. It is a way in, so it dies with access."""

    __tablename__ = "shared_links"
    __table_args__ = (
        CheckConstraint("(course_id IS NULL) <> (learning_path_id IS NULL)", name="one_target"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    school_id: Mapped[int] = _school_fk()
    learner_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("learners.id", ondelete="CASCADE"), index=True
    )
    course_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("courses.id", ondelete="CASCADE")
    )
    learning_path_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("learning_paths.id", ondelete="CASCADE")
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    via_sso: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None]


class LearnerSession(Base):
    """A signed-in browser session."""

    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    learner_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("learners.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_agent: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime]


class Invitation(Base):
    """Outbox row: one invitation email to send. At most one per learner per batch,
    which is what makes a redelivered message unable to send a second one."""

    __tablename__ = "invitations"
    __table_args__ = (
        UniqueConstraint("batch_id", "learner_id", name="uq_invitations_batch_learner"),
        Index("ix_invitations_unsent", "sent_at", "id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    school_id: Mapped[int] = _school_fk()
    learner_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("learners.id", ondelete="CASCADE"), index=True
    )
    batch_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("batches.id", ondelete="SET NULL")
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _now()
    sending_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class ApiToken(Base):
    """A bearer token for the HTTP API. Only the SHA-256 of the token is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    school_id: Mapped[int] = _school_fk()
    learner_id: Mapped[int] = _learner_fk()
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    scopes: Mapped[str] = mapped_column(String(200), default="batches:read batches:write")
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None]


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("school_id", "idempotency_key", name="uq_batches_school_idem"),
        Index("ix_batches_school_id", "school_id", "id"),
        Index("ix_batches_status", "status"),
        # Removing a batch (retention) unlinks its retries: a lookup, not a scan.
        Index("ix_batches_retry_of", "retry_of"),
        CheckConstraint(_one_of("status", BatchStatus), name="status"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    school_id: Mapped[int] = _school_fk()
    actor_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("learners.id", ondelete="SET NULL")
    )
    action: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    selection: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.PENDING)
    total: Mapped[int] = mapped_column(Integer, default=0)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Dispatch keyset: every pending item with learner_id <= dispatch_cursor has
    # been published; the window is the count of those still pending.
    dispatch_cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    dispatched_at: Mapped[datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Why a batch was cancelled (`shared.batches.CancelReason`); None otherwise.
    cancel_reason: Mapped[str | None] = mapped_column(String(32))
    # The batch whose failed items this one retries (POST /v1/batches/{id}/retry).
    retry_of: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("batches.id", ondelete="SET NULL")
    )
    # The audit trail holds every finished item with learner_id up to this one
    # (`shared.audit.record_finished_items`). NULL for batches from before
    # migration 0010, whose workers wrote the rows themselves.
    audited_through: Mapped[int | None] = mapped_column(BigInteger, server_default=text("0"))


class BatchItem(Base):
    """One selected learner of one batch, frozen at submit time; its outcome is
    written in the same transaction as the change it describes."""

    __tablename__ = "batch_items"
    __table_args__ = (
        # Only pending items: finishing an item adds no entry here, and the
        # dispatcher's window, keyset, cancel and completion read what is left.
        # Queries must write `outcome = 'pending'` as a literal (`PENDING_ITEM`)
        # for a prepared statement's generic plan to use a partial index.
        Index(
            "ix_batch_items_pending",
            "batch_id",
            "learner_id",
            postgresql_where=text("outcome = 'pending'"),
            sqlite_where=text("outcome = 'pending'"),
        ),
        CheckConstraint(_one_of("outcome", ItemOutcome), name="outcome"),
    )
    batch_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    learner_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16), default=ItemOutcome.PENDING)
    reason: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    published_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


# "The item is pending", with 'pending' written into the SQL: a bound parameter
# would keep PostgreSQL's generic plan of a prepared statement (psycopg
# prepares after five runs) from using `ix_batch_items_pending`.
PENDING_ITEM = BatchItem.outcome == literal_column(f"'{ItemOutcome.PENDING.value}'")


class AuditEntry(Base):
    """Who did what to which learner. Learners appear by id only, so the trail
    stays pseudonymous once a deleted learner's PII is purged."""

    __tablename__ = "audit_log"
    # The API's keyset order is (school, id DESC), alone or within a learner
    # or a batch (`producer/audit.py`); each is an index lookup then.
    __table_args__ = (
        Index("ix_audit_log_school_learner", "school_id", "learner_id", "id"),
        Index("ix_audit_log_school_id", "school_id", "id"),
        Index("ix_audit_log_batch_id", "batch_id", "id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    school_id: Mapped[int] = _school_fk()
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    learner_id: Mapped[int | None] = mapped_column(BigInteger)
    batch_id: Mapped[int | None] = mapped_column(BigInteger)
    # The API token a `token.*` event is about (`shared/audit.py`).
    token_id: Mapped[int | None] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = _now()


class DeliveryStatus(enum.StrEnum):
    """A webhook delivery: being tried (`pending`), or over."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt failed: given up


class WebhookEndpoint(Base):
    """A school's URL that hears when its batches end (`shared/webhooks.py`).
    The signing secret is stored sealed (it must be recoverable to sign,
    unlike a token); after a rotation the previous one signs too until
    `previous_secret_until`."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_school_id", "school_id", "id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    school_id: Mapped[int] = _school_fk()
    url: Mapped[str] = mapped_column(String(2048))
    # Space-separated event names (`batch.completed batch.cancelled`).
    events: Mapped[str] = mapped_column(String(200))
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None]
    created_by: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _now()


class WebhookEvent(Base):
    """A batch ended, for a school with an endpoint that listens: written in
    the transaction that ends the batch. `message_id` is the `webhook-id`
    every attempt at every endpoint carries; `body` is frozen by the first
    attempt, so every attempt sends the same bytes."""

    __tablename__ = "webhook_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    school_id: Mapped[int] = _school_fk()
    batch_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("batches.id", ondelete="CASCADE"), index=True
    )
    type: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()


class WebhookDelivery(Base):
    """One event to one endpoint. The retry schedule lives here
    (`next_attempt_at`); the reconciler publishes a delivery when it is due."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
        Index("ix_webhook_deliveries_endpoint_id", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        CheckConstraint(_one_of("status", DeliveryStatus), name="status"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("webhook_events.id", ondelete="CASCADE")
    )
    endpoint_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = _now()
    # A worker holds the delivery until then (a killed one lets go by itself).
    locked_until: Mapped[datetime | None]
    claimed_at: Mapped[datetime | None]
    published_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: the answer's status code, or the
    error's kind (never the receiver's body)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery_id", "delivery_id", "id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempted_at: Mapped[datetime] = _now()
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(64))
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
