"""What the auditor sent the running API (docs/SECURITY.md, audit of
2026-11-29, items 9 to 15), on PostgreSQL: refused with the right code and a
field, or read one way only; and the body cap and the token check of a real
`batchctl serve`, with chunked bodies."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from batchctl.seed import seed_school
from producer.tokens import issue_token
from shared.models import Batch
from tests.support.factories import make_learner
from tests.support.services import Process, free_port, http_ok, wait_until


def app_with(database_url: str, **settings):
    """The API on a runtime of its own: these settings, no broker, no Redis
    (so its rate counters are its own)."""
    from producer.app import create_app
    from shared.runtime import Runtime
    from shared.settings import Settings

    runtime = Runtime(Settings(database_url=database_url, broker_url="", redis_url="", **settings))
    return create_app(runtime, dispatch=False)


@pytest.fixture
def seeded(session):
    school = seed_school(session, learners=30, groups=2, courses=2, name="Audited")
    session.commit()
    return school


@pytest.fixture
def api(database_url, seeded) -> Iterator[TestClient]:
    with TestClient(app_with(database_url)) as client:
        client.headers["Authorization"] = f"Bearer {seeded.token}"
        yield client


def batches_of(session, school) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).where(Batch.school_id == school.school_id))


def within_one_minute() -> None:
    """Rate limits count per clock minute: start a test of them well inside one."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def test_400000_copies_of_one_status_are_one_status(api) -> None:
    once = api.post(
        "/v1/batches",
        json={
            "action": "deactivate_learner",
            "selection": {"filter": {"status": ["active"]}},
            "dry_run": True,
        },
    ).json()
    body = {
        "action": "deactivate_learner",
        "selection": {"filter": {"status": ["active"] * 400_000}},
        "dry_run": True,
    }
    counted = api.post("/v1/batches", json=body)
    assert counted.status_code == 200, counted.text[:300]
    assert counted.json()["total"] == once["total"] > 0


def test_a_percent_sign_in_the_search_text_is_a_percent_sign(api, session, seeded) -> None:
    odd = make_learner(session, seeded.school_id, with_footprint=False)
    odd.name = "Ann 100% sure"
    session.commit()
    found = api.get("/v1/learners", params={"q": "%", "limit": 500}).json()["learners"]
    assert [learner["id"] for learner in found] == [odd.id]
    nul = api.get("/v1/learners", params={"q": "\x00"})
    assert nul.status_code == 422 and nul.json()["detail"][0]["loc"] == ["query", "q"]


def test_a_refused_submit_leaves_no_batch(api, session, seeded) -> None:
    before = batches_of(session, seeded)
    body = {
        "action": "deactivate_learner",
        "selection": {"filter": {"q": "no-such-learner"}},
        "expected_total": 0,
    }
    assert api.post("/v1/batches", json=body).status_code == 422
    assert batches_of(session, seeded) == before


def test_unknown_ids_count_against_the_schools_hourly_quota(database_url, session, seeded) -> None:
    unknown = [10**15 + n for n in range(40)]

    def submit(ids: list[int], dry_run: bool = False) -> httpx.Response:
        body = {
            "action": "delete_learner",
            "selection": {"learner_ids": ids},
            "dry_run": dry_run,
        }
        return api.post("/v1/batches", json=body)

    with TestClient(app_with(database_url, selected_learners_per_hour=100)) as api:
        api.headers["Authorization"] = f"Bearer {seeded.token}"
        assert [submit(unknown).status_code for _ in range(2)] == [202, 202]
        assert submit(unknown, dry_run=True).status_code == 200
        refused = submit(unknown)
        assert refused.status_code == 429, refused.text
        assert "limit is 100 an hour" in refused.json()["detail"]
        assert 3500 < int(refused.headers["Retry-After"]) <= 3600
        assert submit(unknown[:20]).status_code == 202
        assert submit(unknown[:1]).status_code == 429
    assert batches_of(session, seeded) == 3


def test_every_token_of_a_school_shares_the_schools_rate(database_url, session, seeded) -> None:
    second = issue_token(session, seeded.school_id, seeded.admin_id)
    session.commit()
    within_one_minute()
    with TestClient(
        app_with(database_url, api_rate_per_minute=100, school_rate_per_minute=4)
    ) as api:
        answers = [
            api.get("/v1/batches", headers={"Authorization": f"Bearer {token}"})
            for token in (seeded.token, seeded.token, second, second, second)
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429]
    assert "your school" in answers[-1].json()["detail"]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60


def test_failed_authentications_are_limited_per_address(database_url, seeded) -> None:
    within_one_minute()
    with TestClient(app_with(database_url, auth_failures_per_minute=3)) as api:
        failed = [
            api.get("/v1/batches", headers={"Authorization": f"Bearer guess-{n}"}) for n in range(3)
        ]
        failed.append(api.get("/v1/batches"))
        valid = api.get("/v1/batches", headers={"Authorization": f"Bearer {seeded.token}"})
    assert [a.status_code for a in failed] == [401, 401, 401, 429]
    assert "failed authentications" in failed[-1].json()["detail"]
    # Guessing right does not help until the minute is over.
    assert valid.status_code == 429


@pytest.fixture
def server(database_url, tmp_path) -> Iterator[str]:
    """A real `batchctl serve` with a 64 KiB body cap."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BROKER_URL": "",
        "REDIS_URL": "",
        "SIGNING_KEY": "",
        "SMTP_URL": "",
        "MAILBOX_PATH": str(tmp_path / "mailbox.txt"),
        "MAX_BODY_BYTES": str(64 * 1024),
        "METRICS_PORT": str(free_port()),
        "PRODUCER_METRICS_PORT": str(free_port()),
    }
    process = Process.batchctl(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{base}/healthz"), 60, "batchctl serve", process)
        yield base
    finally:
        process.stop()


def chunked(total: int) -> Iterator[bytes]:
    """A JSON body of about `total` bytes, sent without Content-Length."""
    ids = ",".join(str(10**12 + n) for n in range(total // 14))
    body = b'{"action":"deactivate_learner","selection":{"learner_ids":[%s]}}' % ids.encode()
    for start in range(0, len(body), 8192):
        yield body[start : start + 8192]


def test_a_chunked_body_over_the_cap_is_413_and_a_stranger_gets_401(server, seeded) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        too_big = client.post(
            "/v1/batches",
            content=chunked(100 * 1024),
            headers={"Authorization": f"Bearer {seeded.token}", "Content-Type": "application/json"},
        )
        assert too_big.status_code == 413, too_big.text
        assert "filter" in too_big.json()["detail"]
        stranger = client.post(
            "/v1/batches",
            content=chunked(100 * 1024),
            headers={"Authorization": "Bearer not-a-token", "Content-Type": "application/json"},
        )
        assert stranger.status_code == 401, stranger.text
        fits = client.post(
            "/v1/batches",
            content=chunked(16 * 1024),
            headers={"Authorization": f"Bearer {seeded.token}", "Content-Type": "application/json"},
        )
        assert fits.status_code == 202, fits.text
