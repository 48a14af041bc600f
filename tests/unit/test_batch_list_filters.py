"""`GET /v1/batches?status=&action=`: an upstream service lists the batches it
cares about without paging through the school's whole history."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update

from producer.app import create_app
from shared.models import Batch
from shared.runtime import Runtime
from shared.settings import Settings
from tests.support.factories import learner_ids


def test_batches_are_listed_by_status_and_action(session, school):
    api = TestClient(create_app(Runtime(Settings()), dispatch=False))
    api.headers["Authorization"] = f"Bearer {school.token}"
    some = learner_ids(session, school.school_id)[:2]
    body = {"action": "resend_invitation", "selection": {"learner_ids": some}}
    made = []
    for key in ("first", "second"):
        answer = api.post("/v1/batches", json=body, headers={"Idempotency-Key": key})
        assert answer.status_code == 202, answer.text
        made.append(answer.json()["id"])
    first, second = made
    session.execute(update(Batch).where(Batch.id == first).values(status="cancelled"))
    session.commit()

    def listed(**query: str) -> list[int]:
        answer = api.get("/v1/batches", params=query)
        assert answer.status_code == 200, answer.text
        return [b["id"] for b in answer.json()["batches"]]

    assert listed() == [second, first]
    assert listed(status="cancelled") == [first]
    assert listed(action="resend_invitation", status="cancelled") == [first]
    assert listed(action="delete_learner") == []
    refused = api.get("/v1/batches", params={"status": "finished"})
    assert refused.status_code == 422
    assert "status" in refused.text
