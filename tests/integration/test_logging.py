"""What `batchctl serve` writes to its log while clients send it emails and
names in every part of a URL: route templates, never the URL, and no logging
errors (issue #12 item 2). The producer is the stack's real process."""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx

from batchctl.seed import seed_school
from tests.support.factories import make_learner


def test_the_producer_logs_route_templates_and_no_email_or_name(stack, session):
    seeded = seed_school(session, learners=5, groups=1, courses=1, name="Logging School")
    learner = make_learner(session, seeded.school_id, status="active")
    session.commit()
    email, name = learner.email, learner.name
    tag = email.split("@")[0].removeprefix("zed.")
    encoded_email, encoded_name = quote(email, safe=""), quote(name, safe="")
    assert "%40" in encoded_email
    headers = {"Authorization": f"Bearer {seeded.token}"}
    base = stack.base_url
    raw_urls = [
        f"{base}/v1/learners?q={encoded_email}",
        f"{base}/v1/learners?%71={encoded_email}&limit=5",
        f"{base}/v1/learners?%51={encoded_name}",
        f"{base}/v1/learners/{encoded_email}/access",
        f"{base}/v1/batches/{encoded_email}",
        f"{base}/v1/no-such-route/{encoded_email}",
        f"{base}/v1/learners?limit={encoded_name}",
    ]
    with httpx.Client(headers=headers, timeout=30) as client:
        codes = [client.get(url).status_code for url in raw_urls]
        refused = httpx.get(f"{base}/v1/learners?q={encoded_email}", timeout=30)
    assert codes == [200, 200, 200, 422, 422, 404, 422]
    assert refused.status_code == 401
    time.sleep(1.0)  # let the producer flush its log

    output = stack.producer.output()
    leaks = [n for n in (email, encoded_email, name, encoded_name, tag) if n in output]
    assert leaks == []
    assert "--- Logging error ---" not in output
    assert "Traceback" not in output
    for line in (
        "GET /v1/learners 200",
        "GET /v1/learners 401",
        "GET /v1/learners/{learner_id}/access 422",
        "GET /v1/batches/{batch_id} 422",
        "GET (no route) 404",
    ):
        assert line in output, f"no access line {line!r}"
