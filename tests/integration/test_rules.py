"""On PostgreSQL, the three paths derived from `shared.rules` agree for every
action and every kind of learner: the generic path, the single statement the
workers run (same outcome, reason and effect), and the dry run."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from shared.audit import record_finished_items
from shared.contract import Action
from shared.models import AuditEntry, BatchItem
from shared.runtime import current
from tests.support.rules_check import Scene, reasons
from workers.items import Items


@pytest.fixture
def scene(session, school) -> Scene:
    return Scene(session, school)


@pytest.mark.parametrize("action", list(Action))
def test_the_single_statement_and_the_dry_run_match_the_generic_path(scene, session, action):
    items = Items(current())
    expected = scene.generic(action)
    predicted = scene.predicted(action)
    batch_id = scene.batches[action]
    assert items.one_statement(batch_id) is not None, "the one-statement path is in use"

    got = scene.through(action, items.process)

    assert got == expected
    assert predicted == reasons(expected)
    # Exactly once: a second delivery does nothing, and each item has one
    # audit row once the trail is copied (twice: the second copies nothing).
    assert all(items.process(batch_id, lid) is None for lid in scene.learners[action].values())
    session.rollback()
    for _ in range(2):
        with session.begin():
            record_finished_items(session, batch_id, until_done=True)
    audited = session.scalar(
        select(func.count()).where(
            AuditEntry.batch_id == batch_id, AuditEntry.learner_id.is_not(None)
        )
    )
    assert audited == len(scene.learners[action])
    attempts = session.scalars(select(BatchItem.attempts).where(BatchItem.batch_id == batch_id))
    assert set(attempts) == {1}
