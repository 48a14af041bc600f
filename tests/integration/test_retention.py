"""Retention (issue #14 section 7): finished batches and their items go
BATCH_RETENTION_DAYS after they finished, audit rows AUDIT_RETENTION_DAYS after
they were written, removed by the reconciler a bounded number of short chunks
a pass; the audit trail of a removed batch stays readable until its own
retention; a running or recent batch is never touched; 0 keeps forever."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import func, insert, select, update

from batchctl.migrate import upgrade
from shared.models import AuditEntry, Batch, BatchItem, Invitation, School
from shared.publish import ConfirmedPublisher
from shared.settings import Settings
from tests.support.environment import sessions_for
from tests.support.factories import learner_ids, make_group
from tests.support.parked import park_batch
from tests.support.services import wait_until
from workers import retention
from workers.reconcile import reconcile_once

LONG_AGO = datetime.now(UTC) - timedelta(days=400)


@pytest.fixture
def small_chunks(monkeypatch):
    """15 rows a chunk, 2 chunks a pass: what the bound looks like at test size."""
    monkeypatch.setattr(retention, "CHUNK_ROWS", 15)
    monkeypatch.setattr(retention, "CHUNKS_PER_PASS", 2)
    monkeypatch.setattr(retention, "SECONDS_PER_PASS", 600)  # a loaded machine: still 2


@pytest.fixture
def reconcile(stack):
    """One reconciler pass on `database_url` with retention of `batch_days` and
    `audit_days`, as `batchctl reconcile` runs it."""
    broker = stack.broker()
    publisher = ConfirmedPublisher(broker)

    def run(database_url: str, batch_days: int, audit_days: int):
        settings = Settings(
            database_url=database_url,
            broker_url=stack.vhost.url,
            signing_key=stack.env["SIGNING_KEY"],
            batch_retention_days=batch_days,
            audit_retention_days=audit_days,
        )
        return reconcile_once(sessions_for(database_url), publisher, settings)

    yield run
    publisher.close()
    broker.close()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def run_batch(stack, token: str, ids: list[int], group_id: int) -> int:
    answer = httpx.post(
        f"{stack.base_url}/v1/batches",
        json={
            "action": "add_to_group",
            "selection": {"learner_ids": ids},
            "params": {"group_ids": [group_id]},
        },
        headers=auth(token),
    )
    assert answer.status_code == 202, answer.text
    batch_id = answer.json()["id"]
    wait_until(
        lambda: batch(stack, token, batch_id).json()["status"] == "completed", 120, "the batch"
    )
    return batch_id


def batch(stack, token: str, batch_id: int) -> httpx.Response:
    return httpx.get(f"{stack.base_url}/v1/batches/{batch_id}", headers=auth(token))


def trail(stack, token: str, batch_id: int) -> list[dict]:
    answer = httpx.get(
        f"{stack.base_url}/v1/audit",
        params={"batch_id": batch_id, "limit": 500},
        headers=auth(token),
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["entries"]


def reconcile_by_hand(stack, database_url: str) -> str:
    """`batchctl reconcile --once`, and what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "batchctl", "reconcile", "--once"],
        env={**stack.env, "DATABASE_URL": database_url, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def items_of(session, batch_id: int) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).where(BatchItem.batch_id == batch_id))


def test_expired_batches_go_in_bounded_chunks_and_their_trail_stays_readable(
    stack, session, school, database_url, reconcile, small_chunks
):
    group_id, _, _ = make_group(session, school.school_id)
    session.commit()
    ids = learner_ids(session, school.school_id)
    assert len(ids) == 40
    old = run_batch(stack, school.token, ids, group_id)
    recent = run_batch(stack, school.token, ids[:5], group_id)
    running = park_batch(session, school.school_id, school.admin_id, "add_to_course", ids[:7])
    # A retry of the old batch, finished as long ago: removed too, without
    # waiting for its original (the foreign key unlinks whichever goes last).
    retry = park_batch(session, school.school_id, school.admin_id, "add_to_group", ids[:3])
    session.execute(
        update(Batch)
        .where(Batch.id.in_([old, retry]))
        .values(status="completed", finished_at=datetime.now(UTC) - timedelta(days=91))
    )
    session.execute(update(Batch).where(Batch.id == retry).values(retry_of=old))
    # Running since long ago (and a stale finished_at, as if reopened by a
    # dead-letter replay): its status, not its age, keeps it.
    session.execute(
        update(Batch).where(Batch.id == running).values(created_at=LONG_AGO, finished_at=LONG_AGO)
    )
    # An invitation of the old batch: unlinked, not lost.
    invitation = session.scalar(
        insert(Invitation)
        .values(
            school_id=school.school_id,
            learner_id=ids[0],
            batch_id=old,
            token_hash="retention-1",
            sent_at=datetime.now(UTC),
        )
        .returning(Invitation.id)
    )
    session.commit()
    before = trail(stack, school.token, old)
    assert len([e for e in before if e["learner_id"] is not None]) == 40

    # 0 keeps forever.
    assert not reconcile(database_url, 0, 0).removed
    assert items_of(session, old) == 40

    # One pass: two chunks of 15 rows, the rest waits for the next pass.
    first = reconcile(database_url, 90, 365).removed
    assert (first.items, first.batches) == (30, 0)
    assert items_of(session, old) == 10
    assert batch(stack, school.token, old).status_code == 200

    # The next passes, through the command an operator runs by hand (real
    # chunk sizes): its first chunk takes the old batch's last 10 items; the
    # rest (its invitation, its row, its retry) follows in the same pass
    # unless a loaded machine ends the pass first (SECONDS_PER_PASS).
    printed = reconcile_by_hand(stack, database_url)
    assert re.search(r"removed=Removed\(items=1[03], batches=[0-2], audit=0", printed), printed
    for _ in range(5):
        if batch(stack, school.token, retry).status_code == 404:
            break
        reconcile_by_hand(stack, database_url)

    assert items_of(session, old) == 0
    assert batch(stack, school.token, old).status_code == 404
    assert batch(stack, school.token, retry).status_code == 404
    assert session.get(Invitation, invitation).batch_id is None
    # What is recent or running stays, items and all.
    assert batch(stack, school.token, recent).json()["status"] == "completed"
    assert items_of(session, recent) == 5
    assert session.get(Batch, running).status == "running"
    assert items_of(session, running) == 7
    # The trail of the removed batch reads as it did, a batch_id that no longer exists.
    assert trail(stack, school.token, old) == before


def test_audit_rows_go_after_their_own_retention_oldest_first_in_bounded_chunks(
    fresh_pg_url, reconcile, small_chunks
):
    """Its own database: the sweep walks audit_log from its oldest id, and
    rows aged by hand behind other tests' fresh ones would never be reached
    (in production ids and times grow together)."""
    upgrade(fresh_pg_url)
    sessions = sessions_for(fresh_pg_url)
    with sessions() as session, session.begin():
        school_id = session.scalar(insert(School).values(name="Old Trail").returning(School.id))
        # A removed batch's trail, 400 days old, then a year-old and a fresh row.
        session.execute(
            insert(AuditEntry),
            [
                {
                    "school_id": school_id,
                    "learner_id": n,
                    "batch_id": 10**9,
                    "action": "add_to_group",
                    "outcome": "applied",
                    "created_at": LONG_AGO,
                }
                for n in range(50)
            ],
        )
        for days in (300, 0):
            session.execute(
                insert(AuditEntry).values(
                    school_id=school_id,
                    action="batch.submitted",
                    outcome="recorded",
                    created_at=datetime.now(UTC) - timedelta(days=days),
                )
            )

    def kept() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(AuditEntry))

    # Batches kept forever keep the trail forever.
    assert not reconcile(fresh_pg_url, 0, 0).removed
    assert kept() == 52
    first = reconcile(fresh_pg_url, 90, 365).removed
    assert first.audit == 30 and kept() == 22
    assert reconcile(fresh_pg_url, 90, 365).removed.audit == 20
    assert not reconcile(fresh_pg_url, 90, 365).removed
    with sessions() as session:
        left = session.scalars(select(AuditEntry.created_at).order_by(AuditEntry.id)).all()
    assert [(datetime.now(UTC) - at).days for at in left] == [300, 0]


@pytest.mark.parametrize(
    ("batch_days", "audit_days", "kept"),
    [(90, 30, "90 days"), (0, 365, "0 (batches kept forever)")],
)
def test_an_audit_retention_shorter_than_the_batches_is_refused_naming_both(
    batch_days, audit_days, kept
):
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, batch_retention_days=batch_days, audit_retention_days=audit_days)
    message = str(refused.value)
    assert f"AUDIT_RETENTION_DAYS ({audit_days})" in message
    assert f"BATCH_RETENTION_DAYS ({kept})" in message


def test_the_defaults_and_what_turns_retention_off_are_accepted():
    defaults = Settings(_env_file=None)
    assert (defaults.batch_retention_days, defaults.audit_retention_days) == (90, 365)
    for batch_days, audit_days in ((0, 0), (90, 0), (30, 30)):
        Settings(_env_file=None, batch_retention_days=batch_days, audit_retention_days=audit_days)


def test_the_embedded_mode_removes_the_same_way_on_sqlite(tmp_path, small_chunks):
    """SQLite (embedded mode, whose reconciler thread runs the same pass):
    the same statements, without row locks."""
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    sessions = sessions_for(url)
    expired = datetime.now(UTC) - timedelta(days=91)
    with sessions() as session, session.begin():
        school_id = session.scalar(insert(School).values(name="Embedded").returning(School.id))
        old, running = (
            session.scalar(
                insert(Batch)
                .values(school_id=school_id, action="add_to_group", status=status, finished_at=at)
                .returning(Batch.id)
            )
            for status, at in (("cancelled", expired), ("running", None))
        )
        for batch_id in (old, running):
            session.execute(
                insert(BatchItem), [{"batch_id": batch_id, "learner_id": n} for n in range(20)]
            )
        session.execute(
            insert(AuditEntry),
            [
                {"school_id": school_id, "action": "x", "outcome": "y", "created_at": at}
                for at in (LONG_AGO,) * 20 + (datetime.now(UTC),)
            ],
        )
    settings = Settings(_env_file=None, database_url=url)
    first = retention.remove_expired(sessions, settings)
    assert (first.items, first.batches, first.audit) == (20, 0, 20)
    second = retention.remove_expired(sessions, settings)
    assert (second.items, second.batches, second.audit) == (0, 1, 0)
    with sessions() as session:
        assert session.scalars(select(Batch.id)).all() == [running]
        assert session.scalar(select(func.count()).select_from(BatchItem)) == 20
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 1
