"""After a learner is deleted and purged, their email and name are nowhere:
not in PostgreSQL, not in Redis, not in a log line, not on the broker."""

from __future__ import annotations

import logging
import time

import httpx
import pika
import pytest
import redis
from sqlalchemy import func, select, update

from batchctl.seed import seed_school
from shared.models import AuditEntry, Learner
from shared.redaction import redact
from tests.integration.test_erasure_and_idempotency import tables_mentioning
from tests.support.factories import make_learner
from tests.support.services import wait_until


def redis_mentions(url: str, needles: list[str]) -> list[str]:
    client = redis.Redis.from_url(url)
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "hash":
            values = [b" ".join(k + b"=" + v for k, v in client.hgetall(key).items())]
        elif kind in ("list",):
            values = client.lrange(key, 0, -1)
        elif kind in ("set",):
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            values = []
        text = (
            key.decode(errors="replace")
            + " "
            + " ".join(v.decode(errors="replace") for v in values)
        )
        found += [f"{key!r}: {n}" for n in needles if n in text]
    return found


def broker_mentions(vhost, needles: list[str]) -> list[str]:
    found = []
    connection = pika.BlockingConnection(pika.URLParameters(vhost.url))
    try:
        for queue, depth in vhost.queue_depths().items():
            channel = connection.channel()
            tags = []
            for _ in range(depth):
                method, _properties, body = channel.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                tags.append(method.delivery_tag)
                text = body.decode(errors="replace")
                found += [f"{queue}: {n}" for n in needles if n in text]
            if tags:
                channel.basic_nack(tags[-1], multiple=True, requeue=True)
            channel.close()
    finally:
        connection.close()
    return found


@pytest.mark.usefixtures("deletions_finalized")
def test_a_purged_learner_is_in_no_table_key_log_line_or_message(stack, session, caplog):
    caplog.set_level(logging.DEBUG)
    seeded = seed_school(session, learners=20, groups=1, courses=1, name="Erasure School")
    learner = make_learner(session, seeded.school_id, status="invited")
    external_id = f"hr-{learner.id}-x7q"
    session.execute(update(Learner).where(Learner.id == learner.id).values(external_id=external_id))
    session.commit()
    email, name = learner.email, learner.name
    needles = [email, name, email.split("@")[0], external_id]
    headers = {"Authorization": f"Bearer {seeded.token}"}
    # An admin searched for them (an access log line), invited them again and
    # deleted them, selecting them by their name and their email, under
    # Idempotency-Keys that quote them.
    for term in (email, name):
        found = httpx.get(f"{stack.base_url}/v1/learners", params={"q": term}, headers=headers)
        assert [p["id"] for p in found.json()["learners"]] == [learner.id]
    with stack.client(seeded.token) as client:
        invited = client.wait(
            client.submit(
                "resend_invitation", {"filter": {"q": name}}, idempotency_key=f"invite {name}"
            )["id"]
        )
        assert invited["counts"]["applied"] == 1
        deleted = client.wait(
            client.submit(
                "delete_learner",
                {"filter": {"q": email}},
                idempotency_key=f"delete {email}",
                expected_total=1,
            )["id"]
        )
        assert deleted["counts"]["applied"] == 1

    def finalized() -> bool:
        session.expire_all()
        return session.scalar(select(Learner.status).where(Learner.id == learner.id)) == "deleted"

    wait_until(finalized, 30, "the deletion to be finalized", every=0.3)
    time.sleep(1.0)  # let the processes flush their logs

    assert tables_mentioning(session, *needles) == {}
    assert redis_mentions(stack.env["REDIS_URL"], needles) == []
    # The test's own HTTP client and SMTP server (the mail provider) are not ours.
    ours = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore", "mail.log"))]
    logs = {
        "producer": stack.producer.output(),
        "worker": stack.worker.output(),
        "this process": "\n".join(r.getMessage() for r in ours),
    }
    assert "GET /v1/learners 200" in logs["producer"], "the searches should be logged, by route"
    assert {where: [n for n in needles if n in text] for where, text in logs.items()} == {
        where: [] for where in logs
    }
    assert broker_mentions(stack.vhost, needles) == []
    audit = session.execute(
        select(AuditEntry.action, AuditEntry.learner_id).where(AuditEntry.learner_id == learner.id)
    ).all()
    assert {a for a, _ in audit} >= {"resend_invitation", "delete_learner", "finalize_deletion"}
    assert session.scalar(select(func.count()).where(Learner.email == email)) == 0


def test_redaction_removes_emails_search_terms_and_row_details():
    line = (
        'GET /v1/learners?q=Zed%20Quorra&limit=5 HTTP/1.1" 200; '
        "DETAIL:  Key (school_id, email)=(1, zed@mail.example.org) already exists."
    )
    cleaned = redact(line + " contact zed.q+x@mail.example.org")
    assert "Zed" not in cleaned and "zed" not in cleaned
    assert "q=[redacted]&limit=5" in cleaned and "[email]" in cleaned
