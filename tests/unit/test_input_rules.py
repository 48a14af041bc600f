"""Input the API must refuse, or read one way only (docs/SECURITY.md, audit of
2026-11-29, items 9, 10, 11, 12, 14, 15, 23, 24, 25): on the embedded
database, through the app itself."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from batchctl import cli
from shared.db import now
from shared.models import Batch, BatchItem
from tests.support.factories import learner_ids, make_learner


def app_with(**settings):
    """The app on a runtime of its own, with `settings` over the environment's."""
    from producer.app import create_app
    from shared.runtime import Runtime
    from shared.settings import Settings

    return create_app(Runtime(Settings(**settings)), dispatch=False)


@pytest.fixture
def api(school) -> TestClient:
    from producer.app import create_app

    client = TestClient(create_app(dispatch=False))
    client.headers["Authorization"] = f"Bearer {school.token}"
    return client


def batches_of(session, school) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).where(Batch.school_id == school.school_id))


def field_of(response) -> str:
    assert response.status_code == 422, response.text
    return ".".join(str(part) for part in response.json()["detail"][0]["loc"][1:])


def dry_run(selection: dict) -> dict:
    return {"action": "deactivate_learner", "selection": selection, "dry_run": True}


# 15


def test_a_selection_that_matches_no_one_leaves_no_batch_behind(api, session, school) -> None:
    before = batches_of(session, school)
    body = {
        "action": "deactivate_learner",
        "selection": {"filter": {"q": "nobody-by-this-name"}},
        "expected_total": 0,
    }
    refused = api.post("/v1/batches", json=body)
    assert refused.status_code == 422, refused.text
    assert "matches no learners" in refused.json()["detail"][0]["msg"]
    assert batches_of(session, school) == before


# 9


def test_a_status_given_many_times_counts_once(api, school) -> None:
    once = api.post("/v1/batches", json=dry_run({"filter": {"status": ["active"]}})).json()
    counted = api.post("/v1/batches", json=dry_run({"filter": {"status": ["active"] * 40_000}}))
    assert counted.status_code == 200, counted.text
    assert counted.json()["total"] == once["total"] > 0
    unknown = api.post("/v1/batches", json=dry_run({"filter": {"status": ["active", "gone"]}}))
    assert field_of(unknown) == "selection.filter.filter.status.1"
    for many in ([f"s{n}" for n in range(10_000)], list(range(10_000)), [[]] * 10_000):
        refused = api.post("/v1/batches", json=dry_run({"filter": {"status": many}}))
        assert field_of(refused) == "selection.filter.filter.status"
        assert len(refused.json()["detail"]) == 1


# 11


def test_the_search_text_matches_itself_not_a_pattern(api, session, school) -> None:
    odd = make_learner(session, school.school_id, with_footprint=False)
    odd.name = "Ann 50%_off"
    session.commit()
    everyone = api.get("/v1/learners", params={"limit": 500}).json()["learners"]
    for text in ("%", "_", "50%_off"):
        found = api.get("/v1/learners", params={"q": text, "limit": 500}).json()["learners"]
        assert odd.id in {learner["id"] for learner in found}, text
        assert len(found) < len(everyone), text
        assert all(text in f"{le['email']} {le['name']}" for le in found), text
    selected = api.post("/v1/batches", json=dry_run({"filter": {"q": "%_"}}))
    assert selected.status_code == 200 and selected.json()["total"] == 1


@pytest.mark.parametrize("text", ["\x00", "\x00ann", "ann\nbob", "tab\there"])
def test_control_characters_in_the_search_text_are_refused(api, school, text) -> None:
    listed = api.get("/v1/learners", params={"q": text})
    assert listed.status_code == 422, listed.text
    assert listed.json()["detail"][0]["loc"] == ["query", "q"]
    assert "control characters" in listed.json()["detail"][0]["msg"]
    selected = api.post("/v1/batches", json=dry_run({"filter": {"q": text}}))
    assert field_of(selected) == "selection.filter.filter.q"


# 14


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(
            {"action": "deactivate_learner", "selection": {"learner_ids": [True]}},
            "selection.learner_ids.learner_ids.0",
            id="learner_ids",
        ),
        pytest.param(
            {"action": "deactivate_learner", "selection": {"learner_ids": ["7"]}},
            "selection.learner_ids.learner_ids.0",
            id="learner_ids-string",
        ),
        pytest.param(
            {
                "action": "deactivate_learner",
                "selection": {"filter": {"status": ["active"]}, "exclude_ids": [True]},
            },
            "selection.filter.exclude_ids.0",
            id="exclude_ids",
        ),
        pytest.param(
            {"action": "deactivate_learner", "selection": {"filter": {"group_id": True}}},
            "selection.filter.filter.group_id",
            id="group_id",
        ),
        pytest.param(
            {
                "action": "add_to_group",
                "params": {"group_ids": [True]},
                "selection": {"learner_ids": [1]},
            },
            "params.group_ids.0",
            id="group_ids",
        ),
        pytest.param(
            {
                "action": "add_to_course",
                "params": {"course_ids": [1.0]},
                "selection": {"learner_ids": [1]},
            },
            "params.course_ids.0",
            id="course_ids",
        ),
    ],
)
def test_ids_are_integers_not_booleans_or_strings(api, body, field) -> None:
    assert field_of(api.post("/v1/batches", json=body)) == field


def test_a_list_of_bad_ids_is_one_error_naming_the_first(api) -> None:
    ids = ["x"] * 300_000
    body = {"action": "deactivate_learner", "selection": {"learner_ids": [5, 0, *ids]}}
    refused = api.post("/v1/batches", json=body)
    assert field_of(refused) == "selection.learner_ids.learner_ids.1"
    assert len(refused.json()["detail"]) == 1


# 24


def test_the_same_ids_in_another_order_replay_the_same_batch(api, session, school) -> None:
    a, b = learner_ids(session, school.school_id)[:2]
    key = {"Idempotency-Key": "order-does-not-matter"}
    body = {"action": "deactivate_learner", "selection": {"learner_ids": [a, b]}}
    first = api.post("/v1/batches", json=body, headers=key)
    assert first.status_code == 202, first.text
    body["selection"]["learner_ids"] = [b, a, b]
    again = api.post("/v1/batches", json=body, headers=key)
    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


# 25


def test_the_rate_counts_learners_worked_on_not_cancelled_ones(api, session, school) -> None:
    ids = learner_ids(session, school.school_id)[:30]
    body = {"action": "deactivate_learner", "selection": {"learner_ids": ids}}
    batch_id = api.post("/v1/batches", json=body).json()["id"]
    # Ten learners applied and ten cancelled in the batch's first 10 seconds.
    for outcome, some in (("applied", ids[:10]), ("cancelled", ids[10:20])):
        session.execute(
            update(BatchItem)
            .where(BatchItem.batch_id == batch_id, BatchItem.learner_id.in_(some))
            .values(outcome=outcome, finished_at=now())
        )
    session.execute(
        update(Batch).where(Batch.id == batch_id).values(started_at=now() - timedelta(seconds=10))
    )
    session.commit()
    view = api.get(f"/v1/batches/{batch_id}").json()
    assert view["counts"]["cancelled"] == 10 and view["counts"]["pending"] == 10
    assert view["rate_per_second"] == pytest.approx(1.0, abs=0.15)
    assert view["eta_seconds"] == pytest.approx(10, abs=2)


# 10


def test_a_school_selects_at_most_its_hourly_quota(session, school) -> None:
    api = TestClient(app_with(selected_learners_per_hour=50))
    api.headers["Authorization"] = f"Bearer {school.token}"
    unknown = [10**15 + n for n in range(30)]
    first = api.post(
        "/v1/batches",
        json={"action": "deactivate_learner", "selection": {"learner_ids": unknown}},
    )
    assert first.status_code == 202, first.text
    assert first.json()["counts"]["reasons"] == {"not_found": 30}
    dry = api.post("/v1/batches", json=dry_run({"learner_ids": unknown}))
    assert dry.status_code == 200
    over = api.post(
        "/v1/batches",
        json={"action": "deactivate_learner", "selection": {"learner_ids": unknown[:21]}},
    )
    assert over.status_code == 429, over.text
    assert "50" in over.json()["detail"] and 3500 < int(over.headers["Retry-After"]) <= 3600
    fits = api.post(
        "/v1/batches",
        json={"action": "deactivate_learner", "selection": {"learner_ids": unknown[:20]}},
    )
    assert fits.status_code == 202, fits.text
    assert batches_of(session, school) == 2


# 12


def test_a_body_is_not_read_before_the_token_is_checked(school) -> None:
    from producer.app import create_app

    app = create_app(dispatch=False)
    chunks = [b"x" * 1_000_000] * 5
    read = []
    sent: list[dict] = []

    async def receive() -> dict:
        read.append(1)
        return {"type": "http.request", "body": chunks[0], "more_body": len(read) < len(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/batches",
        "raw_path": b"/v1/batches",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 401
    assert read == []


# 23


@pytest.mark.parametrize(
    "flags",
    [
        ["--learner-ids", "1,2", "--status", "active"],
        ["--learner-ids", "1,2", "--all-not-activated"],
        ["--all-not-activated", "--status", "active"],
        ["--all-not-activated", "--q", "ann"],
        ["--learner-ids", "1", "--exclude-ids", "2"],
    ],
)
def test_the_cli_refuses_two_ways_of_selecting(flags, monkeypatch) -> None:
    def no_client(*_args):
        raise AssertionError("nothing may be sent")

    monkeypatch.setattr(cli, "_client", no_client)
    result = CliRunner().invoke(
        cli.app, ["submit", "deactivate_learner", *flags], env={"BATCH_API_TOKEN": "t"}
    )
    assert result.exit_code == 2, result.output
    assert "use only one" in result.output
