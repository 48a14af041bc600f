"""Many schools share one producer, broker and worker pool: an admin of one
school never reaches another school's learners, and limits answer clearly."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update

from batchctl.seed import seed_school
from producer import limits
from producer.app import create_app
from producer.schemas import BatchRequest
from producer.submit import submit
from producer.tokens import READ_SCOPE, hash_token, issue_token
from shared.actions import Actor
from shared.dispatch import item_message
from shared.models import ApiToken, Batch, BatchItem, Group, Learner, WebhookEndpoint
from shared.publish import ConfirmedPublisher
from shared.runtime import current
from tests.support.factories import learner_ids, make_learner
from tests.support.services import wait_until


@pytest.fixture
def two_schools(session):
    mine = seed_school(session, learners=30, groups=2, courses=2, name="Mine")
    theirs = seed_school(session, learners=30, groups=2, courses=2, name="Theirs")
    session.commit()
    return mine, theirs


@pytest.fixture
def api(database_url):
    with TestClient(create_app(dispatch=False)) as client:
        yield client


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def first_id(session, model, school_id):
    return session.scalar(select(model.id).where(model.school_id == school_id).order_by(model.id))


def test_tokens_are_checked_scoped_and_only_read_from_the_header(api, session, two_schools):
    mine, _ = two_schools
    assert api.get("/v1/batches").status_code == 401
    assert api.get("/v1/batches", headers={"Authorization": "Token abc"}).status_code == 401
    assert api.get("/v1/batches", headers={"Authorization": "Bearer "}).status_code == 401
    assert api.get(f"/v1/batches?token={mine.token}").status_code == 401
    assert api.get("/v1/batches", cookies={"token": mine.token}).status_code == 401
    assert api.get("/v1/batches", headers=auth(mine.token)).status_code == 200
    assert (
        session.scalar(
            select(ApiToken.token_hash).where(ApiToken.token_hash == hash_token(mine.token))
        )
        != mine.token
    )

    reader = issue_token(session, mine.school_id, mine.admin_id, scopes=READ_SCOPE)
    learner = make_learner(session, mine.school_id)
    not_admin = issue_token(session, mine.school_id, learner.id)
    revoked = issue_token(session, mine.school_id, mine.admin_id)
    session.execute(
        update(ApiToken)
        .where(ApiToken.token_hash == hash_token(revoked))
        .values(revoked_at=datetime.now(UTC))
    )
    session.commit()
    body = {"action": "deactivate_learner", "selection": {"learner_ids": [learner.id]}}
    assert api.get("/v1/batches", headers=auth(reader)).status_code == 200
    refused = api.post("/v1/batches", json=body, headers=auth(reader))
    assert refused.status_code == 403 and "batches:write" in refused.json()["detail"]
    assert api.get("/v1/batches", headers=auth(not_admin)).status_code == 403
    assert api.get("/v1/batches", headers=auth(revoked)).status_code == 401


@pytest.mark.parametrize(
    "selection",
    [
        lambda admin: {"learner_ids": [admin, admin, admin]},
        lambda admin: {"filter": {"status": ["active"]}},
        lambda admin: {"filter": {"q": "admin@"}, "exclude_ids": []},
    ],
    ids=["repeated-id", "filter", "search"],
)
def test_an_admin_cannot_deactivate_or_delete_themselves_however_phrased(
    api, session, two_schools, selection
):
    mine, _ = two_schools
    for action in ("deactivate_learner", "delete_learner"):
        body = {"action": action, "selection": selection(mine.admin_id), "dry_run": True}
        counts = api.post("/v1/batches", json=body, headers=auth(mine.token)).json()["counts"]
        assert counts["reasons"].get("self") == 1
    assert session.scalar(select(Learner.status).where(Learner.id == mine.admin_id)) == "active"


def _walk(api, schema, token, ids):
    """Every operation of the OpenAPI document, path ids filled from `ids`."""
    answers = {}
    for path, operations in schema["paths"].items():
        for method in operations:
            url = re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), path)
            kwargs = {}
            if method == "post" and path == "/v1/batches":
                kwargs["json"] = {
                    "action": "add_to_group",
                    "params": {"group_ids": [ids["group_id"]]},
                    "selection": {"learner_ids": [ids["learner_id"]]},
                    "dry_run": True,
                }
            params = {"group_id": ids["group_id"]} if path == "/v1/learners" else None
            response = api.request(
                method.upper(), url, headers=auth(token), params=params, **kwargs
            )
            body = re.sub(r"\d+", "N", response.text)  # only the ids may differ
            answers[f"{method.upper()} {path}"] = (response.status_code, body)
    return answers


def test_another_schools_ids_behave_exactly_like_missing_ids_on_every_route(
    api, session, two_schools
):
    mine, theirs = two_schools
    their_learner = first_id(session, Learner, theirs.school_id)
    request = BatchRequest.model_validate(
        {"action": "deactivate_learner", "selection": {"learner_ids": [their_learner]}}
    )
    their_batch = submit(session, Actor(theirs.school_id, theirs.admin_id), request).batch.id
    their_endpoint = WebhookEndpoint(
        school_id=theirs.school_id,
        url="https://hooks.example.org/batches",
        events="batch.completed",
        secret="sealed",
    )
    session.add(their_endpoint)
    session.commit()
    schema = api.get("/openapi.json").json()
    foreign = {
        "batch_id": their_batch,
        "learner_id": their_learner,
        "group_id": first_id(session, Group, theirs.school_id),
        "token_id": first_id(session, ApiToken, theirs.school_id),
        "endpoint_id": their_endpoint.id,
    }
    missing = {
        "batch_id": 10**12,
        "learner_id": 10**12 + 1,
        "group_id": 10**12 + 2,
        "token_id": 10**12 + 3,
        "endpoint_id": 10**12 + 4,
    }
    with_foreign = _walk(api, schema, mine.token, foreign)
    with_missing = _walk(api, schema, mine.token, missing)
    assert with_foreign == with_missing
    assert len(with_foreign) == sum(len(ops) for ops in schema["paths"].values()) >= 7
    statuses = {k: v[0] for k, v in with_foreign.items()}
    assert statuses["GET /v1/batches/{batch_id}"] == 404
    assert statuses["DELETE /v1/tokens/{token_id}"] == 404
    assert statuses["DELETE /v1/webhooks/{endpoint_id}"] == 404
    assert statuses["POST /v1/batches"] == 422  # a group of another school is "no such group"
    # The cancel attempt with the wrong school's token changed nothing.
    assert session.scalar(select(Batch.status).where(Batch.id == their_batch)) in (
        "running",
        "completed",
    )


def test_a_worker_finds_another_schools_learner_not_found_and_leaves_it_alone(stack, session):
    mine = seed_school(session, learners=5, groups=1, courses=1, name="Worker Mine")
    theirs = seed_school(session, learners=5, groups=1, courses=1, name="Worker Theirs")
    session.commit()
    own = first_id(session, Learner, mine.school_id)
    request = BatchRequest.model_validate(
        {"action": "deactivate_learner", "selection": {"learner_ids": [own]}}
    )
    batch = submit(session, Actor(mine.school_id, mine.admin_id), request).batch
    stranger = make_learner(session, theirs.school_id).id
    # An item naming another school's learner, as a bug or a forged row would.
    session.execute(insert(BatchItem).values(batch_id=batch.id, learner_id=stranger))
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id)
        .values(total=2, dispatch_cursor=10**12, dispatched_at=batch.created_at + timedelta(days=1))
    )
    session.commit()
    broker = stack.broker()
    publisher = ConfirmedPublisher(broker)
    publisher.publish([item_message("deactivate_learner", batch.id, stranger)])
    publisher.close()
    broker.close()

    def finished():
        session.expire_all()
        item = session.execute(
            select(BatchItem.outcome, BatchItem.reason).where(
                BatchItem.batch_id == batch.id, BatchItem.learner_id == stranger
            )
        ).one()
        return None if item.outcome == "pending" else item

    item = wait_until(finished, 30, "the stranger's item to finish")
    assert tuple(item) == ("skipped", "not_found")
    assert session.scalar(select(Learner.status).where(Learner.id == stranger)) == "active"


def test_limits_answer_413_and_429_with_retry_after(api, session, two_schools, monkeypatch):
    mine, _ = two_schools
    huge = {"action": "deactivate_learner", "selection": {"learner_ids": list(range(1, 700_000))}}
    too_big = api.post("/v1/batches", json=huge, headers=auth(mine.token))
    assert too_big.status_code == 413 and "filter" in too_big.json()["detail"]

    monkeypatch.setattr(current().settings, "max_active_batches_per_school", 2)
    ids = learner_ids(session, mine.school_id)
    codes = []
    for n in range(3):
        body = {"action": "deactivate_learner", "selection": {"learner_ids": ids[n : n + 1]}}
        codes.append(api.post("/v1/batches", json=body, headers=auth(mine.token)))
    assert [r.status_code for r in codes] == [202, 202, 429]
    assert codes[2].headers["Retry-After"] and "limit is 2" in codes[2].json()["detail"]

    five = limits.RequestRate(5, None, "test", "token", "requests a minute with this token")
    monkeypatch.setattr(api.app.state.rate, "token", five)
    answers = [api.get("/v1/batches", headers=auth(mine.token)) for _ in range(7)]
    limited = [r for r in answers if r.status_code == 429]
    assert limited and int(limited[0].headers["Retry-After"]) <= 60
    assert "requests a minute" in limited[0].json()["detail"]
    assert httpx.codes.is_success(answers[0].status_code)
