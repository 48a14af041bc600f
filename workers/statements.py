"""The per-learner hot path on PostgreSQL: one statement, one round trip.

For each action, one `WITH ...` statement, built from the action's
`shared.rules.Rule`, claims the item (locks it if it is still pending and its
batch is running), applies the rule's effect, writes the item's outcome, and
returns the outcome. The item is the record of the change; its audit row is
copied from it later, set-based (`shared.audit.record_finished_items`). It
runs on an autocommit connection, so the statement is its own transaction:
one round trip per learner, commit included.

Why it is as safe as the generic path (`shared.actions.apply_action`):

- `claimed` is `SELECT ... FOR UPDATE` of the item. Everything that changes
  something reads from it, so nothing is applied unless this statement holds
  the item. A duplicate delivered at the same moment waits on that lock, then
  finds the item no longer pending (READ COMMITTED re-checks the row) and
  does nothing at all.
- The effect is the rule's own statement; the skip reason is the rule's CASE
  over the learner's status. tests/integration/test_rules.py runs both paths
  and the dry run over every status and compares.
- Every statement carries the school; another school's learner is `not_found`.

The statement is compiled once per action and prepared on each connection
(psycopg's prepare_threshold 0), so PostgreSQL parses and plans it once per
connection; per learner only the parameters travel.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from functools import cache
from typing import Any

import psycopg
from psycopg.types.numeric import Int8
from sqlalchemy import (
    BigInteger,
    Interval,
    String,
    bindparam,
    case,
    exists,
    func,
    literal,
    null,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import psycopg as pg_dialect

from shared.batches import BatchContext
from shared.contract import Action
from shared.db import libpq_conninfo
from shared.models import Batch, BatchItem, BatchStatus, ItemOutcome, Learner
from shared.outcomes import Outcome, Reason
from shared.rules import RULES, Change, Rule

BATCH = bindparam("batch", type_=BigInteger, required=False)
LEARNER = bindparam("learner", type_=BigInteger, required=False)
SCHOOL = bindparam("school", type_=BigInteger, required=False)
ACTOR = bindparam("actor", type_=BigInteger, required=False)
ACTION = bindparam("action", type_=String, required=False)
TARGETS = bindparam("targets", type_=ARRAY(BigInteger), required=False)
TOKEN = bindparam("token", type_=String, required=False)
GRACE = bindparam("grace", type_=Interval, required=False)
COOLDOWN = bindparam("cooldown", type_=Interval, required=False)


def build(rule: Rule) -> Any:
    """The rule as one statement: claim, effect, revocations, outcome."""
    running = exists().where(Batch.id == BATCH, Batch.status == BatchStatus.RUNNING.value)
    claimed = (
        select(BatchItem.learner_id)
        .where(
            BatchItem.batch_id == BATCH,
            BatchItem.learner_id == LEARNER,
            BatchItem.outcome == ItemOutcome.PENDING.value,
            running,
        )
        .with_for_update(of=BatchItem)
        .cte("claimed")
    )
    learner = (
        select(Learner.id, Learner.status)
        .join(claimed, claimed.c.learner_id == Learner.id)
        .where(Learner.school_id == SCHOOL)
        .cte("learner")
    )
    is_self = func.coalesce(ACTOR, 0) == LEARNER
    eligible_ids = select(learner.c.id).where(learner.c.status.in_(sorted(rule.applies_to)))
    if rule.refuses_self:
        eligible_ids = eligible_ids.where(~is_self)
    # A cooldown of 0 is off: `last_invited_at > now()` alone would skip a
    # learner stamped by a transaction that started after this one.
    cooldown_on = literal(timedelta(0), Interval) < COOLDOWN
    change = Change(
        learner_ids=eligible_ids,
        still_eligible=(Learner.school_id == SCHOOL) & Learner.status.in_(sorted(rule.applies_to)),
        school_id=SCHOOL,
        batch_id=BATCH,
        targets=TARGETS,
        token_hash=TOKEN,
        now=func.now(),
        deletion_due=func.now() + GRACE,
        recently_invited=cooldown_on
        & Learner.last_invited_at.is_not(None)
        & (Learner.last_invited_at > func.now() - COOLDOWN),
        dialect="postgresql",
    )
    applied = rule.effect(change).cte("applied")
    side_effects = []
    if rule.then is not None:
        side_effects = [
            statement.cte(f"then_{n}")
            for n, statement in enumerate(rule.then(select(applied.c[0]), change))
        ]
    did = exists(select(applied.c[0]))
    status = select(learner.c.status).scalar_subquery()
    result = (
        select(
            case((did, ItemOutcome.APPLIED.value), else_=ItemOutcome.SKIPPED.value).label(
                "outcome"
            ),
            case((did, null()), else_=rule.reason_case(status, is_self)).label("reason"),
        )
        .select_from(claimed)
        .cte("result")
    )
    written = (
        update(BatchItem)
        .where(
            BatchItem.batch_id == BATCH,
            BatchItem.learner_id == LEARNER,
            result.c.outcome.is_not(None),
        )
        .values(
            outcome=result.c.outcome,
            reason=result.c.reason,
            finished_at=func.now(),
            attempts=BatchItem.attempts + 1,
        )
        .returning(result.c.outcome, result.c.reason)
        .cte("written")
    )
    return select(written.c.outcome, written.c.reason).add_cte(applied, *side_effects)


@cache
def compiled(action: Action) -> tuple[str, dict[str, Any]]:
    """The action's statement as SQL for psycopg, with the values of its
    constant parameters (status names and the like)."""
    sql = build(RULES[action]).compile(
        dialect=pg_dialect.dialect(), compile_kwargs={"render_postcompile": True}
    )
    return str(sql), {name: _plain(value) for name, value in sql.params.items()}


def _plain(value: Any) -> Any:
    # Status enums are str subclasses; psycopg wants the plain value.
    return value.value if isinstance(value, Enum) else value


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch's statement with what every learner of it shares written in
    as literals, so that per learner only the learner id (and a resend's
    token) travels as a parameter: dumping the twenty shared values for
    every learner cost the worker about 11 us each time."""

    sql: str


# Per learner; every other parameter is the batch's and written in.
PER_LEARNER = ("learner", "token")


def prepare(ctx: BatchContext, grace_seconds: float, cooldown_seconds: float = 0) -> Prepared:
    action = Action(ctx.action)
    sql, constants = compiled(action)
    values = {
        **constants,
        "batch": ctx.batch_id,
        "school": ctx.school_id,
        "actor": ctx.actor_id,
        "action": action.value,
        "targets": [int(t) for t in ctx.params.get(action.param_name or "", [])],
        "grace": timedelta(seconds=grace_seconds),
        "cooldown": timedelta(seconds=cooldown_seconds),
    }
    written = {name: _sql_literal(value) for name, value in values.items()}
    written.update({name: f"%({name})s" for name in PER_LEARNER})
    return Prepared(sql % written)


def _sql_literal(value: Any) -> str:
    """A batch constant as SQL. Only whole numbers, id lists, intervals and
    the rules' own status and reason names (never user input) reach here."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, timedelta):
        return f"make_interval(secs => {value.total_seconds()!r})"
    if isinstance(value, list):
        return "ARRAY[{}]".format(", ".join(str(int(v)) for v in value))
    if isinstance(value, str):
        return "'{}'".format(value.replace("'", "''"))
    raise TypeError(f"no SQL literal for a {type(value).__name__}")


class Connections:
    """One autocommit connection per worker thread, opened on first use and
    dropped when it breaks (the message is retried on a fresh one)."""

    def __init__(self, database_url: str) -> None:
        self.conninfo = libpq_conninfo(database_url)  # several hosts too (a failover pair)
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


_shared: dict[str, Connections] = {}
_shared_lock = threading.Lock()


def connections_for(database_url: str) -> Connections:
    """The process's per-thread connections to `database_url`, shared by the
    item statements, the invitation outbox and the purge, so that a worker
    thread holds one connection whatever it runs."""
    conninfo = libpq_conninfo(database_url)
    with _shared_lock:
        if conninfo not in _shared:
            _shared[conninfo] = Connections(database_url)
        return _shared[conninfo]


def execute(
    connections: Connections, sql: str, params: dict[str, Any]
) -> psycopg.Cursor[tuple[Any, ...]]:
    """One statement on the thread's autocommit connection (its own
    transaction, one round trip). Driver errors are raised as SQLAlchemy's,
    so `workers.errors` classifies them as on the generic path."""
    connection = None
    try:
        connection = connections.get()
        return connection.execute(sql, params)
    except psycopg.Error as exc:
        # Cannot connect, or the connection broke: transient, retried on a new one.
        broken = (
            isinstance(exc, psycopg.OperationalError) or connection is None or connection.broken
        )
        if broken:
            connections.discard()
        raise sa_exc.DBAPIError.instance(
            sql, None, exc, psycopg.Error, connection_invalidated=broken
        ) from exc


@cache
def _compiled_statement(statement: Any) -> tuple[str, dict[str, Any]]:
    sql = statement.compile(
        dialect=pg_dialect.dialect(), compile_kwargs={"render_postcompile": True}
    )
    return str(sql), {name: _plain(value) for name, value in sql.params.items()}


def execute_statement(
    connections: Connections, statement: Any, params: dict[str, Any]
) -> psycopg.Cursor[tuple[Any, ...]]:
    """A SQLAlchemy statement (a module constant with named bind parameters),
    compiled once, run by `execute` with `params` and its own constants."""
    sql, constants = _compiled_statement(statement)
    return execute(connections, sql, {**constants, **params})


def run(
    connections: Connections, prepared: Prepared, learner_id: int, token: str | None = None
) -> Outcome | None:
    """Apply the batch's action to one learner; None if the item is not
    pending or the batch is not running."""
    params: dict[str, Any] = {"learner": Int8(learner_id)}
    if token is not None:
        params["token"] = token
    row = execute(connections, prepared.sql, params).fetchone()
    if row is None:
        return None
    outcome, reason = row
    if outcome == ItemOutcome.APPLIED:
        return Outcome.applied()
    return Outcome.skipped(Reason(reason))
