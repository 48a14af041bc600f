"""The per-learner hot path on PostgreSQL: one statement, one round trip.

For each action, one `WITH ...` statement claims the item (locks it if it is
still pending and its batch is running), applies the action exactly as the
domain function in `shared.actions` does, writes the item's outcome and the
audit row, and returns the outcome. It runs on an autocommit connection, so
the statement is its own transaction: one round trip per learner, commit
included, where the generic path (`workers.items`, kept for SQLite and the
rare cases below) takes seven.

Why it is the same as the domain functions, and as safe:

- `claimed` is `SELECT ... FOR UPDATE` of the item. Everything that changes
  something reads from it, so nothing is applied unless this statement holds
  the item. A duplicate delivered at the same moment waits on that lock, then
  finds the item no longer pending (READ COMMITTED re-checks the row) and does
  nothing at all, as the claim `UPDATE` of the generic path does.
- The change is the domain function's applied-path statement, with the same
  conditions; the reason for a skip is the same CASE over the learner's status
  that the domain functions compute with their second query. A test runs both
  paths over every case and compares (tests/test_statements.py).
- Every statement carries the school; another school's learner is `not_found`.

An admin acting on themselves (`self`) takes the generic path: it is one
learner per batch at most.

The statements are prepared on each connection (psycopg's prepare_threshold
0), so PostgreSQL parses and plans each of them once per connection.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import psycopg
from psycopg.types.numeric import Int8
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from shared.batches import BatchContext
from shared.contract import Action
from shared.models import ItemOutcome, LearnerStatus
from shared.outcomes import Outcome, Reason

GONE = f"('{LearnerStatus.DELETING}', '{LearnerStatus.DELETED}')"
LIVE = f"('{LearnerStatus.INVITED}', '{LearnerStatus.ACTIVE}')"
STATUS = "(SELECT status FROM learner)"

CLAIM = """
WITH claimed AS (
    SELECT i.learner_id FROM batch_items i
    WHERE i.batch_id = %(batch)s AND i.learner_id = %(learner)s AND i.outcome = 'pending'
      AND EXISTS (SELECT 1 FROM batches b WHERE b.id = %(batch)s AND b.status = 'running')
    FOR UPDATE OF i
),
learner AS (
    SELECT l.id, l.status FROM learners l JOIN claimed c ON c.learner_id = l.id
    WHERE l.school_id = %(school)s
),
"""

RECORD = """,
result AS (
    SELECT CASE WHEN EXISTS (SELECT 1 FROM applied) THEN 'applied' ELSE 'skipped' END AS outcome,
           CASE WHEN EXISTS (SELECT 1 FROM applied) THEN NULL ELSE {reason} END AS reason
    FROM claimed
),
written AS (
    UPDATE batch_items i
    SET outcome = r.outcome, reason = r.reason, finished_at = now(), attempts = i.attempts + 1
    FROM result r
    WHERE i.batch_id = %(batch)s AND i.learner_id = %(learner)s
    RETURNING r.outcome, r.reason
),
audit AS (
    INSERT INTO audit_log (school_id, actor_id, learner_id, batch_id, action, outcome, reason)
    SELECT %(school)s, %(actor)s, %(learner)s, %(batch)s, %(action)s, outcome, reason
    FROM written
)
SELECT outcome, reason FROM written
"""

# Closing every way in (shared.actions.revoke_access), for the learner just changed.
REVOKE = """,
revoked_sessions AS (
    DELETE FROM sessions WHERE learner_id IN (SELECT id FROM applied)
),
revoked_links AS (
    UPDATE shared_links SET revoked_at = now()
    WHERE learner_id IN (SELECT id FROM applied) AND revoked_at IS NULL
),
revoked_tokens AS (
    UPDATE api_tokens SET revoked_at = now()
    WHERE learner_id IN (SELECT id FROM applied) AND revoked_at IS NULL
)"""


def _reason(*cases: tuple[str, Reason], otherwise: Reason) -> str:
    """A SQL CASE naming why nothing changed, from the learner's status."""
    whens = " ".join(f"WHEN {condition} THEN '{reason}'" for condition, reason in cases)
    return f"CASE WHEN {STATUS} IS NULL THEN '{Reason.NOT_FOUND}' {whens} ELSE '{otherwise}' END"


def _grant(link_table: str, link_column: str, target_table: str, when_present: Reason) -> str:
    apply = f"""applied AS (
    INSERT INTO {link_table} (learner_id, {link_column})
    SELECT l.id, t.id FROM learner l
    JOIN {target_table} t ON t.school_id = %(school)s AND t.id = ANY(%(targets)s)
    WHERE l.status NOT IN {GONE}
    ON CONFLICT DO NOTHING
    RETURNING 1
)"""
    reason = _reason((f"{STATUS} IN {GONE}", Reason.ALREADY_DELETED), otherwise=when_present)
    return CLAIM + apply + RECORD.format(reason=reason)


RESEND_INVITATION = (
    CLAIM
    + f"""applied AS (
    INSERT INTO invitations (school_id, learner_id, batch_id, token_hash, attempts)
    SELECT %(school)s, l.id, %(batch)s, %(token)s, 0 FROM learner l
    WHERE l.status = '{LearnerStatus.INVITED}'
    ON CONFLICT DO NOTHING
    RETURNING 1
)"""
    + RECORD.format(
        reason=_reason(
            (f"{STATUS} = '{LearnerStatus.ACTIVE}'", Reason.ALREADY_ACTIVE),
            (f"{STATUS} IN {GONE}", Reason.ALREADY_DELETED),
            (f"{STATUS} = '{LearnerStatus.DEACTIVATED}'", Reason.ALREADY_DEACTIVATED),
            otherwise=Reason.ALREADY_INVITED,
        )
    )
)

DEACTIVATE_LEARNER = (
    CLAIM
    + f"""applied AS (
    UPDATE learners l
    SET status = '{LearnerStatus.DEACTIVATED}', deactivated_at = now(), updated_at = now()
    FROM learner c
    WHERE l.id = c.id AND l.school_id = %(school)s AND l.status IN {LIVE}
    RETURNING l.id
)"""
    + REVOKE
    + RECORD.format(
        reason=_reason(
            (f"{STATUS} IN {GONE}", Reason.ALREADY_DELETED),
            otherwise=Reason.ALREADY_DEACTIVATED,
        )
    )
)

DELETE_LEARNER = (
    CLAIM
    + f"""applied AS (
    UPDATE learners l
    SET status = '{LearnerStatus.DELETING}', deactivated_at = now(), updated_at = now(),
        deletion_due_at = now() + make_interval(secs => %(grace)s)
    FROM learner c
    WHERE l.id = c.id AND l.school_id = %(school)s AND l.status NOT IN {GONE}
    RETURNING l.id
)"""
    + REVOKE
    + RECORD.format(reason=_reason(otherwise=Reason.ALREADY_DELETED))
)

STATEMENTS: dict[str, str] = {
    Action.RESEND_INVITATION: RESEND_INVITATION,
    Action.ADD_TO_GROUP: _grant("group_memberships", "group_id", "groups", Reason.ALREADY_MEMBER),
    Action.ADD_TO_COURSE: _grant(
        "course_enrollments", "course_id", "courses", Reason.ALREADY_ENROLLED
    ),
    Action.DEACTIVATE_LEARNER: DEACTIVATE_LEARNER,
    Action.DELETE_LEARNER: DELETE_LEARNER,
}
ACTS_ON_SELF = {Action.DEACTIVATE_LEARNER, Action.DELETE_LEARNER}


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch's statement, with what every learner of it shares written in
    as literals (whole numbers and enum values only), so that per learner
    only the learner id (and a resend's token) is sent as a parameter."""

    sql: str


def _bigint(value: int | None) -> str:
    return "NULL::bigint" if value is None else f"{int(value)}::bigint"


def prepare(ctx: BatchContext, grace_seconds: int) -> Prepared:
    shared = {
        "batch": _bigint(ctx.batch_id),
        "school": _bigint(ctx.school_id),
        "actor": _bigint(ctx.actor_id),
        "action": f"'{Action(ctx.action).value}'",
        "learner": "%(learner)s",
        "token": "%(token)s",
    }
    name = Action(ctx.action).param_name
    if name:
        shared["targets"] = "ARRAY[{}]::bigint[]".format(
            ", ".join(str(int(t)) for t in ctx.params[name])
        )
    if ctx.action == Action.DELETE_LEARNER:
        shared["grace"] = f"{float(grace_seconds)}::float8"
    return Prepared(STATEMENTS[ctx.action] % shared)


def uses_one_statement(ctx: BatchContext, learner_id: int) -> bool:
    return not (ctx.action in ACTS_ON_SELF and learner_id == ctx.actor_id)


class Connections:
    """One autocommit connection per worker thread, opened on first use and
    dropped when it breaks (the message is retried on a fresh one)."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)
        self.local = threading.local()

    def get(self) -> psycopg.Connection:
        connection = getattr(self.local, "connection", None)
        if connection is None or connection.closed:
            connection = psycopg.connect(
                self.conninfo, autocommit=True, prepare_threshold=0, connect_timeout=10
            )
            self.local.connection = connection
        return connection

    def discard(self) -> None:
        connection = getattr(self.local, "connection", None)
        self.local.connection = None
        if connection is not None:
            with contextlib.suppress(psycopg.Error):
                connection.close()


def run(
    connections: Connections, prepared: Prepared, learner_id: int, token: str | None = None
) -> Outcome | None:
    """Apply the batch's action to one learner; None if the item is not
    pending or the batch is not running. Driver errors are raised as
    SQLAlchemy's, so `workers.errors` classifies them as on the generic path."""
    params = {"learner": Int8(learner_id)}
    if token is not None:
        params["token"] = token
    connection = None
    try:
        connection = connections.get()
        row = connection.execute(prepared.sql, params).fetchone()
    except psycopg.Error as exc:
        # Cannot connect, or the connection broke: transient, retried on a new one.
        broken = (
            isinstance(exc, psycopg.OperationalError) or connection is None or connection.broken
        )
        if broken:
            connections.discard()
        raise sa_exc.DBAPIError.instance(
            prepared.sql, None, exc, psycopg.Error, connection_invalidated=broken
        ) from exc
    if row is None:
        return None
    outcome, reason = row
    if outcome == ItemOutcome.APPLIED:
        return Outcome.applied()
    return Outcome.skipped(Reason(reason))
