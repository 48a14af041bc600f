"""A malformed `POST /v1/batches` body is a 422 whose detail names the field
(producer/schemas.py), answered by the app itself on the embedded database."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

GOOD = {"action": "deactivate_learner", "selection": {"learner_ids": [1, 2]}}
MAX_ID = 2**63 - 1


@pytest.fixture
def api(school) -> TestClient:
    from producer.app import create_app

    client = TestClient(create_app(dispatch=False))
    client.headers["Authorization"] = f"Bearer {school.token}"
    return client


def field_of(response) -> str:
    return ".".join(str(part) for part in response.json()["detail"][0]["loc"][1:])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({**GOOD, "action": "promote"}, "action", id="unknown-action"),
        pytest.param({"selection": GOOD["selection"]}, "action", id="no-action"),
        pytest.param({"action": "deactivate_learner"}, "selection", id="no-selection"),
        pytest.param({**GOOD, "dryrun": True}, "dryrun", id="typo-in-a-field"),
        pytest.param({**GOOD, "dry_run": "maybe"}, "dry_run", id="dry-run-not-a-bool"),
        pytest.param(
            {**GOOD, "selection": {"learner_ids": []}},
            "selection.learner_ids.learner_ids",
            id="no-ids",
        ),
        pytest.param(
            {**GOOD, "selection": {"learner_ids": [1, "abc"]}},
            "selection.learner_ids.learner_ids.1",
            id="id-not-a-number",
        ),
        pytest.param(
            {**GOOD, "selection": {"learner_ids": [0]}},
            "selection.learner_ids.learner_ids.0",
            id="id-zero",
        ),
        pytest.param(
            {**GOOD, "selection": {"learner_ids": [MAX_ID + 1]}},
            "selection.learner_ids.learner_ids.0",
            id="id-beyond-bigint",
        ),
        pytest.param(
            {**GOOD, "selection": {"filter": {"status": ["archived"]}}},
            "selection.filter.filter.status.0",
            id="unknown-status",
        ),
        pytest.param(
            {**GOOD, "selection": {"filter": {"q": "x" * 201}}},
            "selection.filter.filter.q",
            id="query-too-long",
        ),
        pytest.param(
            {**GOOD, "selection": {"filter": {}, "exclude_ids": [-1]}},
            "selection.filter.exclude_ids.0",
            id="negative-excluded-id",
        ),
        pytest.param(
            {**GOOD, "selection": {"all_not_activated": False}},
            "selection.all_not_activated.all_not_activated",
            id="all-not-activated-false",
        ),
        pytest.param(
            {**GOOD, "action": "add_to_group", "params": {"groups": [1]}},
            "params.groups",
            id="unknown-param",
        ),
        pytest.param(
            {**GOOD, "action": "add_to_group", "params": {"group_ids": list(range(1, 102))}},
            "params.group_ids",
            id="too-many-groups",
        ),
    ],
)
def test_a_bad_body_is_a_422_naming_the_field(api: TestClient, body: dict, field: str) -> None:
    response = api.post("/v1/batches", json=body)
    assert response.status_code == 422, response.text
    assert field_of(response) == field, response.json()


def test_a_selection_of_no_known_shape_says_which_shapes_there_are(api: TestClient) -> None:
    response = api.post("/v1/batches", json={**GOOD, "selection": {"ids": [1]}})
    assert response.status_code == 422
    assert "selection must be {learner_ids: [...]}" in response.text


def test_a_body_that_is_not_json_is_a_422(api: TestClient) -> None:
    response = api.post(
        "/v1/batches", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


def test_a_good_body_is_accepted(api: TestClient, session, school) -> None:
    from tests.support.factories import learner_ids

    chosen = learner_ids(session, school.school_id)[:2]
    body = {**GOOD, "selection": {"learner_ids": chosen}, "dry_run": True}
    response = api.post("/v1/batches", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 2
