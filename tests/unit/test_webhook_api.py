"""`/v1/webhooks` on the embedded mode (SQLite): registering, listing,
rotating, deleting; the secret shown once; another school's endpoint looks
missing; events written where a batch ends. Real deliveries over HTTP:
tests/integration/test_webhooks.py."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from batchctl.seed import seed_school
from shared.batches import cancel_step, complete_if_finished
from shared.models import BatchItem, WebhookDelivery, WebhookEvent
from tests.support.environment import environment
from tests.support.factories import learner_ids
from tests.support.parked import park_batch

HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
def app():
    from producer.app import create_app

    with environment(WEBHOOK_ALLOW_HTTP="true", WEBHOOK_ALLOW_PRIVATE_ADDRESSES="true"):
        yield create_app(dispatch=False)


def as_admin(app, token: str) -> TestClient:
    client = TestClient(app)
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def test_the_secret_is_answered_once_and_rotation_keeps_the_old_one_for_a_while(app, school):
    api = as_admin(app, school.token)
    created = api.post("/v1/webhooks", json={"url": HOOK, "events": ["batch.completed"]})
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["secret"].startswith("whsec_")
    assert endpoint["previous_secret_valid_until"] is None

    [listed] = api.get("/v1/webhooks").json()["endpoints"]
    assert "secret" not in listed and listed["events"] == ["batch.completed"]

    rotated = api.post(f"/v1/webhooks/{endpoint['id']}/rotate-secret").json()
    assert rotated["secret"] != endpoint["secret"]
    assert rotated["previous_secret_valid_until"] is not None

    assert api.delete(f"/v1/webhooks/{endpoint['id']}").status_code == 204
    assert api.get("/v1/webhooks").json()["endpoints"] == []
    assert api.delete(f"/v1/webhooks/{endpoint['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"url": HOOK, "events": ["batch.started"]}, "events", "batch.completed"),
        ({"url": HOOK, "events": []}, "events", "at least 1"),
        (
            {"url": "http://169.254.169.254/latest", "events": ["batch.completed"]},
            "url",
            "metadata",
        ),
        ({"url": "not a url", "events": ["batch.completed"]}, "url", "https://"),
    ],
)
def test_a_refused_endpoint_names_the_field(app, school, body, field, words):
    answer = as_admin(app, school.token).post("/v1/webhooks", json=body)
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"][:2] == ["body", field]
    assert words in error["msg"]


def test_private_addresses_and_plain_http_are_refused_by_default(school):
    from producer.app import create_app

    api = as_admin(create_app(dispatch=False), school.token)
    for url in ("http://example.org/hook", "https://127.0.0.1/hook", "https://10.0.0.1/hook"):
        answer = api.post("/v1/webhooks", json={"url": url, "events": ["batch.completed"]})
        assert answer.status_code == 422, url


def test_another_schools_endpoint_looks_missing(app, session, school):
    theirs = seed_school(session, learners=3, groups=1, courses=1, name="Theirs")
    session.commit()
    their_api = as_admin(app, theirs.token)
    endpoint = their_api.post("/v1/webhooks", json={"url": HOOK, "events": ["batch.completed"]})
    their_id = endpoint.json()["id"]
    api = as_admin(app, school.token)
    assert api.get("/v1/webhooks").json()["endpoints"] == []
    for answer in (
        api.delete(f"/v1/webhooks/{their_id}"),
        api.post(f"/v1/webhooks/{their_id}/rotate-secret"),
        api.get(f"/v1/webhooks/{their_id}/deliveries"),
    ):
        assert answer.status_code == 404
    assert their_api.get("/v1/webhooks").json()["endpoints"][0]["id"] == their_id


def test_the_batch_that_completes_writes_one_event_for_its_schools_listening_endpoints(
    app, session, school
):
    theirs = seed_school(session, learners=3, groups=1, courses=1, name="Theirs")
    session.commit()
    api = as_admin(app, school.token)
    listening = api.post("/v1/webhooks", json={"url": HOOK, "events": ["batch.completed"]})
    api.post("/v1/webhooks", json={"url": HOOK + "2", "events": ["batch.cancelled"]})
    as_admin(app, theirs.token).post(
        "/v1/webhooks", json={"url": HOOK, "events": ["batch.completed"]}
    )
    chosen = learner_ids(session, school.school_id, status="active")[:2]
    batch_id = park_batch(session, school.school_id, school.admin_id, "deactivate_learner", chosen)
    session.execute(
        BatchItem.__table__.update().where(BatchItem.batch_id == batch_id).values(outcome="applied")
    )
    assert complete_if_finished(session, batch_id)
    assert not complete_if_finished(session, batch_id)  # once
    session.commit()

    [event] = session.scalars(select(WebhookEvent).where(WebhookEvent.batch_id == batch_id))
    assert event.type == "batch.completed" and event.message_id.startswith("msg_")
    deliveries = session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.event_id == event.id)
    ).all()
    assert [d.endpoint_id for d in deliveries] == [listening.json()["id"]]
    page = api.get(f"/v1/webhooks/{listening.json()['id']}/deliveries").json()
    assert [(d["batch_id"], d["status"], d["webhook_id"]) for d in page["deliveries"]] == [
        (batch_id, "pending", event.message_id)
    ]


def test_the_openapi_document_describes_every_webhook_route(app):
    paths = TestClient(app).get("/openapi.json").json()["paths"]
    assert set(paths["/v1/webhooks"]) == {"get", "post"}
    assert set(paths["/v1/webhooks/{endpoint_id}"]) == {"delete"}
    assert set(paths["/v1/webhooks/{endpoint_id}/rotate-secret"]) == {"post"}
    assert set(paths["/v1/webhooks/{endpoint_id}/deliveries"]) == {"get"}
    created = paths["/v1/webhooks"]["post"]
    assert "201" in created["responses"] and "422" in created["responses"]


def test_the_cancel_step_that_ends_a_batch_writes_a_cancelled_event(app, session, school):
    api = as_admin(app, school.token)
    completed_only = api.post("/v1/webhooks", json={"url": HOOK, "events": ["batch.completed"]})
    cancelled = api.post("/v1/webhooks", json={"url": HOOK + "2", "events": ["batch.cancelled"]})
    chosen = learner_ids(session, school.school_id, status="active")[:3]
    batch_id = park_batch(session, school.school_id, school.admin_id, "deactivate_learner", chosen)
    session.commit()
    assert api.post(f"/v1/batches/{batch_id}/cancel").status_code == 202
    session.expire_all()
    while cancel_step(session, batch_id):
        pass
    cancel_step(session, batch_id)  # nothing left: a no-op, no second event
    session.commit()

    [event] = session.scalars(select(WebhookEvent).where(WebhookEvent.batch_id == batch_id))
    assert event.type == "batch.cancelled"
    for endpoint, expected in ((cancelled, [batch_id]), (completed_only, [])):
        page = api.get(f"/v1/webhooks/{endpoint.json()['id']}/deliveries").json()
        assert [d["batch_id"] for d in page["deliveries"]] == expected


def test_a_receiver_that_always_fails_is_given_up_after_the_last_attempt(app, session, school):
    """`workers.webhooks.deliver` on SQLite against a local server that
    answers 500: retried after the backoff, given up at WEBHOOK_MAX_ATTEMPTS."""
    import threading
    from datetime import timedelta
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from shared.db import now
    from shared.runtime import current
    from workers.webhooks import deliver

    class Refusing(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(500)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = as_admin(app, school.token)
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    endpoint = api.post("/v1/webhooks", json={"url": url, "events": ["batch.completed"]}).json()
    chosen = learner_ids(session, school.school_id, status="active")[:1]
    batch_id = park_batch(session, school.school_id, school.admin_id, "deactivate_learner", chosen)
    session.execute(
        BatchItem.__table__.update().where(BatchItem.batch_id == batch_id).values(outcome="applied")
    )
    complete_if_finished(session, batch_id)
    session.commit()
    [delivery_id] = session.scalars(
        select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint["id"])
    )
    settings = current().settings.model_copy(update={"webhook_max_attempts": 2})
    sessions = current().sessions

    def make_due() -> None:
        with sessions() as other, other.begin():
            other.execute(
                WebhookDelivery.__table__.update()
                .where(WebhookDelivery.id == delivery_id)
                .values(next_attempt_at=now() - timedelta(seconds=1))
            )

    try:
        assert deliver(sessions, settings, delivery_id) == "failed"
        assert deliver(sessions, settings, delivery_id) is None  # not due yet
        make_due()
        assert deliver(sessions, settings, delivery_id) == "gave_up"
        make_due()
        assert deliver(sessions, settings, delivery_id) is None  # over
    finally:
        server.shutdown()
    [shown] = api.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["deliveries"]
    assert (shown["status"], shown["attempts"], shown["next_attempt_at"]) == ("failed", 2, None)
    assert [a["status_code"] for a in shown["attempt_log"]] == [500, 500]


def test_a_wrong_method_on_a_webhook_path_lists_the_methods_it_takes(app, school):
    api = as_admin(app, school.token)
    assert api.put("/v1/webhooks").headers["Allow"] == "GET, POST"
    assert api.get("/v1/webhooks/1/rotate-secret").headers["Allow"] == "POST"
