"""A batch row keeps neither the search text it was selected by nor the
client's Idempotency-Key in clear: both are often an email or a name, and the
batch outlives the learner's erasure (issue #12 item 1). Retries are still
recognised, also while SIGNING_KEY is rotated."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from producer.app import create_app
from producer.schemas import BatchRequest
from producer.submit import request_hash
from shared.models import Batch
from shared.runtime import Runtime
from shared.settings import Settings
from tests.support.factories import make_learner

OLD_KEY, NEW_KEY = "old-signing-key-" + "o" * 32, "new-signing-key-" + "n" * 32


def api_for(school, **settings: str) -> TestClient:
    client = TestClient(create_app(Runtime(Settings(**settings)), dispatch=False))
    client.headers["Authorization"] = f"Bearer {school.token}"
    return client


@pytest.fixture
def learner(session, school):
    learner = make_learner(session, school.school_id, status="active")
    session.commit()
    return learner


def test_the_search_text_and_the_key_are_not_stored(session, school, learner):
    api = api_for(school, signing_key=NEW_KEY)
    body = {
        "action": "deactivate_learner",
        "selection": {"filter": {"q": learner.email}},
        "expected_total": 1,
    }
    key = f"deactivate {learner.email}"

    answer = api.post("/v1/batches", json=body, headers={"Idempotency-Key": key})

    assert answer.status_code == 202, answer.text
    batch = session.scalar(select(Batch).where(Batch.id == answer.json()["id"]))
    assert batch.total == 1
    assert batch.selection["filter"]["q"] == "[not kept]"
    stored = repr((batch.selection, batch.idempotency_key, batch.params, batch.request_hash))
    assert learner.email not in stored and learner.email.split("@")[0] not in stored
    assert len(batch.idempotency_key) == 64
    # Not a plain hash either, which would confirm a guessed email.
    plain_body_hash = request_hash(BatchRequest.model_validate(body))
    assert batch.request_hash not in (None, plain_body_hash)


def test_a_retry_is_recognised_by_its_key_across_a_signing_key_rotation(session, school, learner):
    body = {"action": "deactivate_learner", "selection": {"learner_ids": [learner.id]}}
    key = {"Idempotency-Key": f"retry {learner.name}"}
    first = api_for(school, signing_key=OLD_KEY).post("/v1/batches", json=body, headers=key)
    rotating = api_for(school, signing_key=NEW_KEY, signing_key_previous=OLD_KEY)

    again = rotating.post("/v1/batches", json=body, headers=key)
    other_body = rotating.post(
        "/v1/batches", json={**body, "action": "delete_learner"}, headers=key
    )

    assert first.status_code == 202
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["id"] == first.json()["id"]
    assert other_body.status_code == 409
