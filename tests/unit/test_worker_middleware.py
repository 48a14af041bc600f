"""The worker's middleware on Dramatiq's StubBroker and Worker: outcomes reach
the metrics as the actors' results, and the retry policy is the Retries
middleware's alone (an actor names only its permanent failures)."""

from __future__ import annotations

import logging

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from prometheus_client import REGISTRY

from shared.settings import Settings
from workers import metrics
from workers.errors import PermanentFailure, TransientError
from workers.retries import retries


@pytest.fixture
def broker():
    broker = StubBroker(middleware=[])
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def run(broker: StubBroker, queue: str) -> None:
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        broker.join(queue, fail_fast=False, timeout=20_000)
        worker.join()
    finally:
        worker.stop()


def processed(action: str, outcome: str) -> float:
    labels = {"action": action, "outcome": outcome}
    return REGISTRY.get_sample_value("batch_learners_processed_total", labels) or 0.0


def test_each_outcome_an_actor_returns_is_counted_once(broker, caplog, monkeypatch):
    metrics.install(broker)  # outside the dramatiq CLI: no middleware, the log filter
    worker_metrics = metrics.WorkerMetrics()
    broker.add_middleware(worker_metrics)
    # Dramatiq's boot hook points prometheus-client at its directory; undone after.
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        monkeypatch.setenv(name, "unused")
    worker_metrics.after_process_boot(broker)
    outcomes = {2: "applied", 3: "skipped", 4: None}

    @dramatiq.actor(broker=broker, actor_name="add_to_group", queue_name="add_to_group")
    def add_to_group(batch_id: int, learner_id: int) -> str | None:
        return outcomes[learner_id]

    before = {o: processed("add_to_group", o) for o in ("applied", "skipped", "failed")}
    for learner_id in outcomes:
        add_to_group.send(1, learner_id)
    with caplog.at_level(logging.WARNING):
        run(broker, "add_to_group")
    metrics.TALLY.flush()

    after = {o: processed("add_to_group", o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {"applied": 1, "skipped": 1, "failed": 0}
    # Dramatiq warns about a result nobody stores (no Results middleware); not for ours.
    assert not [r for r in caplog.records if "returned a value" in r.getMessage()]


def test_transient_failures_retry_by_the_middleware_policy_and_permanent_ones_do_not(broker):
    broker.add_middleware(retries(Settings(retry_min_backoff_ms=1, retry_max_backoff_ms=10)))
    calls: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="policy", throws=(PermanentFailure,))
    def flaky(kind: str) -> None:
        calls.append(kind)
        if kind == "transient" and calls.count(kind) == 1:
            raise TransientError("database away")
        if kind == "permanent":
            raise PermanentFailure("never works")
        if kind == "unknown":
            raise ValueError("not worth retrying")

    for kind in ("transient", "permanent", "unknown"):
        flaky.send(kind)
    run(broker, "policy")

    assert sorted(calls) == ["permanent", "transient", "transient", "unknown"]
    assert sorted(m.args[0] for m in broker.dead_letters) == ["permanent", "unknown"]
