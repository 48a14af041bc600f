"""An admin who loses access stops acting through the batches they queued:
deactivating or deleting them cancels their unfinished batches in the same
transaction, with the reason shown (issue #12 item 18). Here on the generic
path (SQLite, the embedded mode); tests/integration/test_admin_lost_access.py
runs the PostgreSQL single statement through the real pipeline."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shared.actions import Actor, apply_action
from shared.batches import cancel_step
from shared.models import Batch, BatchItem, GroupMembership
from shared.runtime import current
from tests.support.factories import learner_ids, make_group
from tests.support.parked import make_admin, park_batch
from workers.items import Items


@pytest.fixture
def api(school) -> TestClient:
    from producer.app import create_app

    client = TestClient(create_app(dispatch=False))
    client.headers["Authorization"] = f"Bearer {school.token}"
    return client


@pytest.mark.parametrize("action", ["deactivate_learner", "delete_learner"])
def test_an_admin_who_loses_access_has_their_running_batches_cancelled(session, school, action):
    group_id, _, _ = make_group(session, school.school_id)
    chosen = learner_ids(session, school.school_id, status="active")[:5]
    queued = park_batch(
        session, school.school_id, school.admin_id, "add_to_group", chosen, group_ids=[group_id]
    )
    other_admin, _ = make_admin(session, school.school_id)
    session.commit()

    outcome = apply_action(
        session, action, Actor(school.school_id, other_admin), school.admin_id, grace_seconds=60
    )
    session.commit()
    assert outcome.kind == "applied"
    assert session.scalar(select(Batch.status).where(Batch.id == queued)) == "cancelling"

    # A message of the queued batch that arrives now changes nobody.
    assert Items(current()).process(queued, chosen[0]) is None
    while cancel_step(session, queued):
        pass
    session.commit()
    batch = session.get(Batch, queued)
    assert (batch.status, batch.cancel_reason) == ("cancelled", "admin_lost_access")
    outcomes = session.scalars(select(BatchItem.outcome).where(BatchItem.batch_id == queued))
    assert set(outcomes) == {"cancelled"}
    assert not session.scalar(select(GroupMembership).where(GroupMembership.group_id == group_id))


def test_a_cancel_through_the_api_records_that_an_admin_cancelled(api, session, school):
    chosen = learner_ids(session, school.school_id, status="active")[:2]
    body = {"action": "deactivate_learner", "selection": {"learner_ids": chosen}}
    batch_id = api.post("/v1/batches", json=body).json()["id"]

    view = api.post(f"/v1/batches/{batch_id}/cancel").json()

    assert (view["status"], view["cancel_reason"]) == ("cancelling", "cancelled_by_admin")
    assert api.get(f"/v1/batches/{batch_id}").json()["cancel_reason"] == "cancelled_by_admin"
