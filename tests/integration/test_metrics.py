"""Operators' view: every metric the alerts and dashboard query exists, with
the values of the batch that just ran."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text

from batchctl.seed import seed_school
from shared.models import Course, Learner
from tests.support.factories import learner_ids
from tests.support.services import http_ok, wait_until

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RABBIT_METRICS = "http://127.0.0.1:15692/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count"


def metric_names_used() -> set[str]:
    names = set()
    for line in (DEPLOY / "metric-names.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line)
    return names


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return sum(
        v
        for (n, lbls), v in samples.items()
        if n == name and all(dict(lbls).get(k) == w for k, w in labels.items())
    )


def names(samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture(scope="module")
def rabbit_metrics():
    subprocess.run(
        ["rabbitmq-plugins", "enable", "rabbitmq_prometheus"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    wait_until(
        lambda: http_ok(RABBIT_METRICS), 60, "RabbitMQ's Prometheus endpoint on :15692", every=0.5
    )
    return RABBIT_METRICS


def test_every_metric_the_alerts_and_dashboard_use_is_exported_with_the_batch_values(
    stack, session, rabbit_metrics
):
    seeded = seed_school(session, learners=400, groups=1, courses=1, name="Metrics School")
    course = Course(school_id=seeded.school_id, title="Measured")
    session.add(course)
    session.commit()
    ids = learner_ids(session, seeded.school_id)
    flaky, doomed = ids[5], ids[6]
    # One learner fails once with a serialization failure (retried), one always (dead-lettered).
    session.execute(
        text(f"""
        CREATE SEQUENCE IF NOT EXISTS flaky_once;
        CREATE OR REPLACE FUNCTION metrics_faults() RETURNS trigger AS $$
        BEGIN
          IF NEW.learner_id = {flaky} AND nextval('flaky_once') = 1 THEN
            RAISE EXCEPTION 'try again' USING ERRCODE = '40001';
          END IF;
          IF NEW.learner_id = {doomed} THEN RAISE EXCEPTION 'never' USING ERRCODE = 'P0001'; END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER metrics_faults BEFORE INSERT ON course_enrollments
          FOR EACH ROW EXECUTE FUNCTION metrics_faults();
    """)
    )
    session.commit()
    worker_url = f"http://127.0.0.1:{stack.env['METRICS_PORT']}/metrics"
    producer_url = f"http://127.0.0.1:{stack.env['PRODUCER_METRICS_PORT']}/metrics"
    before_worker, before_producer = scrape(worker_url), scrape(producer_url)
    try:
        with stack.client(seeded.token) as client:
            batch = client.submit(
                "add_to_course", {"learner_ids": ids + [10**15]}, {"course_ids": [course.id]}
            )
            final = client.wait(batch["id"], timeout=120)
    finally:
        session.execute(text("DROP TRIGGER metrics_faults ON course_enrollments"))
        session.commit()
    time.sleep(1)
    worker, producer = scrape(worker_url), scrape(producer_url)
    rabbit = scrape(rabbit_metrics)

    exported = names(worker) | names(producer) | names(rabbit) | {"up"}
    assert metric_names_used() - exported == set()

    def delta(now, before, name, **labels):
        return value(now, name, **labels) - value(before, name, **labels)

    counts = final["counts"]
    assert counts["applied"] == len(ids) - 1 and counts["failed"] == 1
    assert counts["reasons"] == {"not_found": 1}
    processed = "batch_learners_processed_total"
    assert (
        delta(worker, before_worker, processed, action="add_to_course", outcome="applied")
        == (counts["applied"])
    )
    assert delta(worker, before_worker, processed, action="add_to_course", outcome="failed") == 1
    assert delta(
        worker, before_worker, "batch_learner_latency_seconds_count", action="add_to_course"
    ) == len(ids)
    assert (
        delta(worker, before_worker, "dramatiq_message_retries_total", actor_name="add_to_course")
        >= 1
    )
    assert (
        delta(worker, before_worker, "dramatiq_message_errors_total", actor_name="add_to_course")
        >= 2
    )
    assert delta(
        producer, before_producer, "batch_messages_published_total", action="add_to_course"
    ) == len(ids)
    assert (
        delta(producer, before_producer, "batch_requests_total", action="add_to_course", code="202")
        == 1
    )
    deleting = session.scalar(select(func.count()).where(Learner.status == "deleting"))
    assert value(producer, "deletions_pending") == deleting
    assert value(producer, "batches_active", action="add_to_course") == 0
    # RabbitMQ refreshes queue statistics on a timer (collect_statistics_interval,
    # 5 s), so a consumer can be missing from one scrape: give it two intervals.
    deadline = time.monotonic() + 12
    while value(rabbit, "rabbitmq_detailed_queue_consumers", queue="add_to_course") < 1:
        consumers = {k: v for k, v in rabbit.items() if k[0] == "rabbitmq_detailed_queue_consumers"}
        assert time.monotonic() < deadline, f"no add_to_course consumer: {consumers}"
        time.sleep(1)
        rabbit = scrape(rabbit_metrics)
    leaked = [
        key
        for key in list(worker) + list(producer)
        if any(re.search(r"@|learner_id|batch_id|school_id", f"{k}={v}") for k, v in key[1])
    ]
    assert leaked == []
