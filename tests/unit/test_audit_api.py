"""The audit trail and token routes on the embedded mode (SQLite): what an
admin reads, and what the OpenAPI document says about it. The real pipeline's
trail is tests/integration/test_audit_trail.py."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient

from batchctl.seed import seed_school
from tests.support.factories import learner_ids
from tests.support.parked import make_admin, park_batch


@pytest.fixture
def app():
    from producer.app import create_app

    return create_app(dispatch=False)


def as_admin(app, token: str) -> TestClient:
    client = TestClient(app)
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def test_a_cancel_and_a_revoked_token_are_in_the_trail_newest_first(app, session, school):
    chosen = learner_ids(session, school.school_id, status="active")[:3]
    parked = park_batch(session, school.school_id, school.admin_id, "deactivate_learner", chosen)
    other_admin, other_token = make_admin(session, school.school_id)
    session.commit()
    api = as_admin(app, school.token)

    assert as_admin(app, other_token).post(f"/v1/batches/{parked}/cancel").status_code == 202
    [other] = [t for t in api.get("/v1/tokens").json()["tokens"] if t["learner_id"] == other_admin]
    assert api.delete(f"/v1/tokens/{other['id']}").status_code == 204
    assert api.delete(f"/v1/tokens/{other['id']}").status_code == 204  # once is audited
    assert as_admin(app, other_token).get("/v1/batches").status_code == 401

    entries = api.get("/v1/audit").json()["entries"]
    assert [(e["action"], e["actor_id"]) for e in entries[:2]] == [
        ("token.revoked", school.admin_id),
        ("batch.cancelled", other_admin),
    ]
    assert entries[1]["batch_id"] == parked and entries[1]["reason"] == "cancelled_by_admin"
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert len([e for e in entries if e["action"] == "token.revoked"]) == 1

    rows = list(csv.DictReader(io.StringIO(api.get("/v1/audit?format=csv").text)))
    assert [int(r["id"]) for r in rows] == [e["id"] for e in entries]


def test_another_schools_ids_look_missing(app, session, school):
    theirs = seed_school(session, learners=3, groups=1, courses=1, name="Theirs")
    session.commit()
    api = as_admin(app, school.token)
    [their_token] = as_admin(app, theirs.token).get("/v1/tokens").json()["tokens"]

    assert api.delete(f"/v1/tokens/{their_token['id']}").status_code == 404
    assert api.delete(f"/v1/tokens/{2**62}").status_code == 404
    assert api.get(f"/v1/audit?learner_id={theirs.admin_id}").json()["entries"] == []
    assert their_token["id"] not in {t["id"] for t in api.get("/v1/tokens").json()["tokens"]}
    assert "token_hash" not in their_token and theirs.token not in str(their_token)


def test_the_openapi_document_describes_the_audit_and_token_routes(app):
    paths = TestClient(app).get("/openapi.json").json()["paths"]
    audit = paths["/v1/audit"]["get"]
    assert "text/csv" in audit["responses"]["200"]["content"]
    assert {p["name"] for p in audit["parameters"]} >= {
        "learner_id",
        "batch_id",
        "actor_id",
        "action",
        "since",
        "until",
        "cursor",
        "limit",
        "format",
    }
    assert "get" in paths["/v1/tokens"] and "delete" in paths["/v1/tokens/{token_id}"]


def test_batchctl_audit_and_token_commands(app, session, school, monkeypatch):
    import json

    from typer.testing import CliRunner

    from batch_actions_client import BatchClient
    from batchctl import cli

    chosen = learner_ids(session, school.school_id, status="active")[:2]
    parked = park_batch(session, school.school_id, school.admin_id, "deactivate_learner", chosen)
    other_admin, _ = make_admin(session, school.school_id)
    session.commit()
    monkeypatch.setattr(
        cli, "_client", lambda url, token: BatchClient("", token, http=TestClient(app))
    )

    def run(*args: str):
        result = CliRunner().invoke(cli.app, list(args), env={"BATCH_API_TOKEN": school.token})
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines()

    run("cancel", str(parked))
    [cancelled] = [json.loads(line) for line in run("audit", "--batch-id", str(parked))]
    assert (cancelled["action"], cancelled["actor_id"]) == ("batch.cancelled", school.admin_id)
    header, row = run("audit", "--batch-id", str(parked), "--csv")
    assert header.startswith("id,created_at,actor_id") and "batch.cancelled" in row
    assert len(run("audit", "--limit", "1")) == 1

    tokens = [json.loads(line) for line in run("token", "list")]
    [other] = [t for t in tokens if t["learner_id"] == other_admin]
    run("token", "revoke", str(other["id"]))
    assert [json.loads(line)["learner_id"] for line in run("token", "list")] == [school.admin_id]
    [revoked] = [json.loads(line) for line in run("audit", "--action", "token.revoked")]
    assert revoked["token_id"] == other["id"]


def test_moments_are_compared_in_utc_and_one_without_a_utc_equivalent_is_a_422(app, school):
    api = as_admin(app, school.token)
    assert api.get("/v1/audit", params={"since": "0001-01-01T00:00:00+23:59"}).status_code == 422
    everything = api.get("/v1/audit").json()["entries"]
    assert everything, "seeding issued a token"
    newest = everything[0]["created_at"]
    assert api.get("/v1/audit", params={"until": "2000-01-01T00:00:00"}).json()["entries"] == []
    since_then = api.get("/v1/audit", params={"since": "2000-01-01T01:00:00+01:00"}).json()
    assert since_then["entries"][0]["created_at"] == newest


def test_a_moment_that_is_not_a_date_is_a_422_naming_the_parameter(app, school):
    api = as_admin(app, school.token)
    answer = api.get("/v1/audit", params={"until": "0.5"})  # not seconds since 1970
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "until"]
