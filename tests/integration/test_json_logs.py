"""LOG_FORMAT=json: every line each process writes to stderr is one JSON
object, the lines about one learner's message name its batch and learner,
and no learner's email is in any of them (issue #15 section 4).

The processes are the real ones (`batchctl serve`, `batchctl worker`, whose
Dramatiq main, worker and fork processes all log, and `batchctl reconcile`),
each with its stderr in a file of its own: stdout is for people.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from batchctl.seed import seed_school
from shared.models import Learner
from tests.support.factories import make_learner
from tests.support.services import (
    Process,
    RabbitVhost,
    SmtpServer,
    free_port,
    http_ok,
    stack_env,
    wait_until,
)


class JsonProcess(Process):
    """A `batchctl` process with stdout and stderr apart."""

    def __init__(self, args: list[str], env: dict, logs: Path, name: str) -> None:
        self.log_path = logs / f"{name}.stderr"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.stdout = open(logs / f"{name}.stdout", "wb")  # noqa: SIM115 (closed with the test)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "batchctl", *args],
            env=env,
            stdout=self.stdout,
            stderr=self.log,
            start_new_session=True,
        )


def parse(process: Process) -> list[dict]:
    """Every stderr line as JSON; the first that is not fails the test."""
    lines = []
    for number, line in enumerate(process.output().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{process.log_path.name} line {number} is not JSON: {line!r}")
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        lines.append(record)
    return lines


@pytest.fixture
def json_stack(database_url: str, tmp_path: Path) -> Iterator[dict[str, JsonProcess]]:
    vhost, smtp, port = RabbitVhost(), SmtpServer(), free_port()
    env = stack_env(
        database_url,
        vhost,
        smtp,
        LOG_FORMAT="json",
        LOG_LEVEL="DEBUG",
        SMTP_RATE_PER_SECOND="500",
        RECONCILE_INTERVAL_SECONDS="1",
    )
    processes = {
        "producer": JsonProcess(["serve", "--port", str(port)], env, tmp_path, "producer"),
        "worker": JsonProcess(
            ["worker", "--processes", "1", "--threads", "2"], env, tmp_path, "worker"
        ),
        "reconciler": JsonProcess(
            ["reconcile"], {**env, "METRICS_PORT": str(free_port())}, tmp_path, "reconciler"
        ),
    }
    processes["producer"].base_url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        producer, worker = processes["producer"], processes["worker"]
        wait_until(lambda: http_ok(f"{producer.base_url}/healthz"), 30, "the producer", producer)  # type: ignore[attr-defined]
        wait_until(lambda: vhost.queues.consumers("resend_invitation"), 60, "the worker", worker)
        yield processes
    finally:
        for process in processes.values():
            process.stop()
            process.stdout.close()
        smtp.stop()
        vhost.delete()


def test_every_process_logs_json_lines_with_ids_and_no_email(json_stack, session):
    seeded = seed_school(session, learners=3, groups=1, courses=1, name=f"Json {uuid.uuid4()}")
    learner = make_learner(session, seeded.school_id, status="invited")
    session.commit()
    email = session.scalar(select(Learner.email).where(Learner.id == learner.id))
    producer = json_stack["producer"]
    headers = {"Authorization": f"Bearer {seeded.token}"}

    with httpx.Client(base_url=producer.base_url, headers=headers, timeout=30) as client:
        # An email in a URL: the producer must not log it.
        assert client.get("/v1/learners", params={"q": email}).status_code == 200
        answer = client.post(
            "/v1/batches",
            json={"action": "resend_invitation", "selection": {"learner_ids": [learner.id]}},
        )
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["id"]
        wait_until(
            lambda: client.get(f"/v1/batches/{batch_id}").json()["status"] == "completed",
            60,
            "the batch to complete",
            json_stack["worker"],
        )
    reconciler = json_stack["reconciler"]
    wait_until(lambda: reconciler.output().strip(), 30, "the reconciler's first line", reconciler)
    for process in json_stack.values():
        process.stop()

    records = {name: parse(process) for name, process in json_stack.items()}
    for name, lines in records.items():
        assert lines, f"{name} logged nothing"
        text = json.dumps(lines)
        assert email not in text and email.split("@")[0] not in text, f"{name} logged the email"

    # The producer: uvicorn's own lines and one per request, naming the batch it reads.
    assert any(r["logger"].startswith("uvicorn") for r in records["producer"])
    reads = [
        r
        for r in records["producer"]
        if r["logger"] == "producer.access" and "/v1/batches/{batch_id}" in r["message"]
    ]
    assert reads and all(r["batch_id"] == batch_id for r in reads)

    # The worker: Dramatiq's own lines, from its main and its worker process,
    # and the learner's message, named by its batch and learner.
    worker = records["worker"]
    assert any(r["logger"].startswith("dramatiq") and "booting" in r["message"] for r in worker)
    assert len({r["process"] for r in worker if r["logger"].startswith("dramatiq")}) >= 2
    handled = [r for r in worker if r["logger"] == "workers.actors.resend_invitation"]
    assert [r["message"].split()[0] for r in handled] == ["Received", "Completed"], handled
    assert all((r["batch_id"], r["learner_id"]) == (batch_id, learner.id) for r in handled), handled
    # Lines about no message carry no ids.
    assert any("batch_id" not in r for r in worker)
