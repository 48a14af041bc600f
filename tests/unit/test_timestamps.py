"""Every moment the API shows carries its UTC offset, on the embedded SQLite
database too (PostgreSQL's timestamptz always did): a client comparing an
item's finish with its batch's must not guess a timezone (issue #12 item 27)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from shared.batches import cancel_step
from tests.support.factories import learner_ids
from tests.support.parked import park_batch


@pytest.fixture
def api(school) -> TestClient:
    from producer.app import create_app

    client = TestClient(create_app(dispatch=False))
    client.headers["Authorization"] = f"Bearer {school.token}"
    return client


def offset_of(moment: str) -> timedelta | None:
    return datetime.fromisoformat(moment).utcoffset()


def test_item_and_batch_timestamps_are_utc_with_an_offset(api: TestClient, session, school):
    chosen = learner_ids(session, school.school_id, status="active")[:2]
    # Parked: on PostgreSQL a stack of the same test run may be running, and
    # its dispatch loop would publish a submitted batch before the cancel.
    batch_id = park_batch(session, school.school_id, school.admin_id, "deactivate_learner", chosen)
    session.commit()
    assert api.post(f"/v1/batches/{batch_id}/cancel").status_code == 202
    while cancel_step(session, batch_id):
        pass
    session.commit()

    items = api.get(f"/v1/batches/{batch_id}/items").json()["items"]
    batch = api.get(f"/v1/batches/{batch_id}").json()

    assert [i["outcome"] for i in items] == ["cancelled", "cancelled"]
    assert [offset_of(i["finished_at"]) for i in items] == [timedelta(0), timedelta(0)]
    assert offset_of(batch["finished_at"]) == timedelta(0)
    assert offset_of(batch["created_at"]) == timedelta(0)
    drift = abs(
        datetime.fromisoformat(items[0]["finished_at"])
        - datetime.fromisoformat(batch["finished_at"])
    )
    assert drift < timedelta(minutes=1), "an item and its batch finish on the same clock"
