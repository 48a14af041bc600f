"""The audit trail and API tokens as an admin reads them (issue #14 sections 2
and 6), through the real producer and workers: `GET /v1/audit` and `batchctl
audit` (newest first, paginated, CSV), the batch events with who cancelled,
`GET|DELETE /v1/tokens` and `batchctl token list|revoke`, and another
school's ids behaving like missing ones."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import httpx
from sqlalchemy import select

from batchctl.seed import seed_school
from shared.models import ApiToken
from tests.support.factories import learner_ids, make_group, make_learner
from tests.support.parked import make_admin, park_batch
from tests.support.services import wait_until


def batchctl(stack, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {**stack.env, "BATCH_API_URL": stack.base_url, "BATCH_API_TOKEN": token}
    done = subprocess.run(
        [sys.executable, "-m", "batchctl", *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_one_learners_trail_across_two_batches_newest_first_paged_and_as_csv(
    stack, session, school
):
    group_id, _, _ = make_group(session, school.school_id)
    session.commit()
    learner, other = learner_ids(session, school.school_id, status="active")[:2]
    with stack.client(school.token) as client:
        first = client.submit(
            "add_to_group", {"learner_ids": [learner, other]}, {"group_ids": [group_id]}
        )
        client.wait(first["id"], timeout=120)
        second = client.submit("deactivate_learner", {"learner_ids": [learner]})
        client.wait(second["id"], timeout=120)

        trail = list(client.audit(learner_id=learner))
    assert [(e["batch_id"], e["action"], e["outcome"]) for e in trail] == [
        (second["id"], "deactivate_learner", "applied"),
        (first["id"], "add_to_group", "applied"),
    ]
    assert trail[0]["id"] > trail[1]["id"]
    assert {e["actor_id"] for e in trail} == {school.admin_id}

    # One entry a page: the cursor walks the same trail.
    pages, cursor = [], None
    while True:
        params = {"learner_id": learner, "limit": 1, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{stack.base_url}/v1/audit", params=params, headers=auth(school.token))
        assert page.status_code == 200, page.text
        pages += page.json()["entries"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert [e["id"] for e in pages] == [e["id"] for e in trail]

    # CSV, asked for either way; learners by id only (no email, no name).
    for how in ({"headers": {"Accept": "text/csv"}}, {"params": {"format": "csv"}}):
        headers = {**auth(school.token), **how.get("headers", {})}
        answer = httpx.get(
            f"{stack.base_url}/v1/audit",
            params={"learner_id": learner, **how.get("params", {})},
            headers=headers,
        )
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(answer.text)))
        assert [int(r["id"]) for r in rows] == [e["id"] for e in trail]
        assert rows[0]["action"] == "deactivate_learner" and rows[0]["learner_id"] == str(learner)
        assert "@" not in answer.text

    # The command line shows the same trail.
    lines = batchctl(stack, school.token, "audit", "--learner-id", str(learner)).stdout
    assert [json.loads(line)["id"] for line in lines.splitlines()] == [e["id"] for e in trail]
    as_csv = batchctl(stack, school.token, "audit", "--learner-id", str(learner), "--csv").stdout
    assert as_csv.splitlines()[0].startswith("id,created_at,actor_id,learner_id,batch_id")
    assert len(as_csv.splitlines()) == 1 + len(trail)

    # A batch's events: submitted by whom, finished how.
    with stack.client(school.token) as client:
        events = [
            (e["action"], e["actor_id"], e["outcome"])
            for e in client.audit(batch_id=first["id"])
            if e["learner_id"] is None
        ]
    assert events == [
        ("batch.finished", None, "completed"),
        ("batch.submitted", school.admin_id, "recorded"),
    ]


def test_a_cancelled_batch_says_who_cancelled_it(stack, session, school):
    chosen = learner_ids(session, school.school_id, status="active")[:5]
    parked = park_batch(session, school.school_id, school.admin_id, "deactivate_learner", chosen)
    other_admin, other_token = make_admin(session, school.school_id)
    session.commit()

    with stack.client(other_token) as client:
        client.cancel(parked)
        wait_until(lambda: client.batch(parked)["status"] == "cancelled", 60, "the cancel")
        events = [(e["action"], e["actor_id"], e["reason"]) for e in client.audit(batch_id=parked)]
        by_action = list(client.audit(action="batch.cancelled", actor_id=other_admin))
    assert events == [
        ("batch.finished", None, None),
        ("batch.cancelled", other_admin, "cancelled_by_admin"),
    ]
    assert [e["batch_id"] for e in by_action] == [parked]


def test_tokens_are_listed_without_secrets_revoked_and_audited(stack, session, school):
    second_admin, second_token = make_admin(session, school.school_id)
    theirs = seed_school(session, learners=5, groups=1, courses=1, name="Another School")
    their_learner = make_learner(session, theirs.school_id).id
    their_token_id = session.scalar(
        select(ApiToken.id).where(ApiToken.school_id == theirs.school_id)
    )
    session.commit()
    with stack.client(theirs.token) as client:
        their_batch = client.submit("deactivate_learner", {"learner_ids": [their_learner]})["id"]

    listed = httpx.get(f"{stack.base_url}/v1/tokens", headers=auth(school.token))
    assert listed.status_code == 200
    tokens = listed.json()["tokens"]
    assert {t["learner_id"] for t in tokens} == {school.admin_id, second_admin}
    assert their_token_id not in {t["id"] for t in tokens}
    for secret in (school.token, second_token):
        assert secret not in listed.text
    assert all(
        set(t) == {"id", "learner_id", "label", "scopes", "created_at", "revoked_at"}
        for t in tokens
    )

    [second] = [t for t in tokens if t["learner_id"] == second_admin]
    lines = batchctl(stack, school.token, "token", "list").stdout.splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(t["id"] for t in tokens)
    batchctl(stack, school.token, "token", "revoke", str(second["id"]))
    assert httpx.get(f"{stack.base_url}/v1/batches", headers=auth(second_token)).status_code == 401

    with stack.client(school.token) as client:
        assert [t["learner_id"] for t in client.tokens()] == [school.admin_id]
        revoked = [t for t in client.tokens(include_revoked=True) if t["id"] == second["id"]]
        assert revoked[0]["revoked_at"] is not None
        [entry] = client.audit(action="token.revoked")
        issued = {e["token_id"] for e in client.audit(action="token.issued")}
        # Another school's ids look exactly like missing ones.
        assert list(client.audit(batch_id=their_batch)) == []
        assert list(client.audit(learner_id=their_learner)) == []
    assert (entry["actor_id"], entry["learner_id"], entry["token_id"]) == (
        school.admin_id,
        second_admin,
        second["id"],
    )
    assert second["id"] in issued
    missing = httpx.delete(f"{stack.base_url}/v1/tokens/{2**62}", headers=auth(school.token))
    foreign = httpx.delete(
        f"{stack.base_url}/v1/tokens/{their_token_id}", headers=auth(school.token)
    )
    assert (missing.status_code, foreign.status_code) == (404, 404)
    assert foreign.json()["detail"].replace(str(their_token_id), "N") == missing.json()[
        "detail"
    ].replace(str(2**62), "N")
    assert httpx.get(f"{stack.base_url}/v1/batches", headers=auth(theirs.token)).status_code == 200


def test_the_old_token_command_still_issues_one(stack, school):
    issued = batchctl(
        stack,
        school.token,
        "token",
        "--school-id",
        str(school.school_id),
        "--learner-id",
        str(school.admin_id),
        "--label",
        "old form",
    ).stdout.strip()
    assert httpx.get(f"{stack.base_url}/v1/batches", headers=auth(issued)).status_code == 200
    again = batchctl(
        stack,
        school.token,
        "token",
        "issue",
        "--school-id",
        str(school.school_id),
        "--learner-id",
        str(school.admin_id),
    ).stdout.strip()
    assert again != issued and again.startswith("bat_")
