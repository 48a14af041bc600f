"""The client and `batchctl` as another program uses them: retries on a
real HTTP server, exit codes of a watch, one JSON document per `--json`
command, a CSV selection, results as CSV, and a webhook delivery verified
with the client's own `verify_webhook` (issue #13 section 4)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select, update

from batch_actions_client import ApiError, BatchClient, WebhookVerificationError, verify_webhook
from batchctl.seed import seed_school
from shared.models import Learner, School
from tests.conftest import Stack
from tests.support.factories import learner_ids, make_group
from tests.support.parked import park_batch
from tests.support.services import (
    Process,
    RabbitVhost,
    SmtpServer,
    free_port,
    http_ok,
    stack_env,
    wait_until,
)

# --- Retries against a real HTTP server ---


class Scripted(BaseHTTPRequestHandler):
    """Answers the scripted (status, headers) in turn, then 200; records
    each request's method, path and arrival time."""

    script: list[tuple[int, dict[str, str]]] = []
    seen: list[tuple[str, str, float]] = []

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, time.monotonic()))
        status, headers = self.script.pop(0) if self.script else (200, {})
        body = json.dumps({"id": 7, "status": "running"} if status < 400 else {"detail": "busy"})
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[Scripted]]]:
    Scripted.script, Scripted.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Scripted
    server.shutdown()
    server.server_close()


def test_the_client_waits_out_retry_after_then_gets_its_answer(scripted) -> None:
    url, server = scripted
    server.script = [(429, {"Retry-After": "1"}), (503, {"Retry-After": formatdate(usegmt=True)})]
    with BatchClient(url, "t0ken") as client:
        assert client.batch(7) == {"id": 7, "status": "running"}
    times = [at for _, _, at in server.seen]
    assert [path for _, path, _ in server.seen] == ["/v1/batches/7"] * 3
    assert times[1] - times[0] >= 0.95, "the 429's Retry-After: 1 was not waited for"

    server.seen, server.script = [], [(503, {"Retry-After": "1"})]
    with BatchClient(url, "t0ken") as client, pytest.raises(ApiError) as refused:
        client.cancel(7)
    assert refused.value.status == 503 and len(server.seen) == 1, "a keyless POST was repeated"

    server.seen, server.script = [], [(429, {"Retry-After": "1"})] * 5
    with BatchClient(url, "t0ken", attempts=2) as client, pytest.raises(ApiError) as limited:
        client.submit("add_to_group", {"learner_ids": [1]}, {"group_ids": [1]})
    assert limited.value.status == 429 and len(server.seen) == 2


# --- batchctl as a program runs it: stdout not a terminal ---


def batchctl(stack, token: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**stack.env, "BATCH_API_URL": stack.base_url, "BATCH_API_TOKEN": token, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "batchctl", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        **kwargs,
    )


def one_json(result: subprocess.CompletedProcess) -> object:
    """stdout holds exactly one JSON document."""
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def school(session):
    seeded = seed_school(session, learners=30, groups=2, courses=2, name="Client School")
    session.commit()
    return seeded


def test_a_watch_ends_with_the_batchs_outcome_and_a_second_cancel_is_fine(stack, session, school):
    active = learner_ids(session, school.school_id, status="active")[:2]
    parked = park_batch(session, school.school_id, school.admin_id, "deactivate_learner", active)
    session.commit()

    timed_out = batchctl(stack, school.token, "status", str(parked), "--watch", "--timeout", "1")
    assert timed_out.returncode == 124, timed_out.stderr
    assert f"batch {parked} deactivate_learner running: 0/2 (0%)" in timed_out.stderr
    assert "timeout:" in timed_out.stderr

    env = {**stack.env, "BATCH_API_URL": stack.base_url, "BATCH_API_TOKEN": school.token}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "batchctl", "status", str(parked), "--watch", "--timeout", "120"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cancel = batchctl(stack, school.token, "cancel", str(parked), "--json")
        assert cancel.returncode == 0, cancel.stderr
        assert one_json(cancel)["status"] in ("cancelling", "cancelled")
        out, err = watcher.communicate(timeout=120)
    finally:
        watcher.kill()
    assert watcher.returncode == 4, err
    assert json.loads(out)["status"] == "cancelled" and "cancelled: 2/2" in err

    again = batchctl(stack, school.token, "cancel", str(parked), "--json")
    assert again.returncode == 0, again.stderr
    assert one_json(again)["status"] == "cancelled"
    human = batchctl(stack, school.token, "cancel", str(parked))
    assert human.returncode == 0 and f"batch {parked} is cancelled" in human.stderr


def test_submit_watch_exits_non_zero_when_learners_fail(stack, session):
    """A school name with a line break cannot be written as an invitation:
    those items end `failed` (tests/integration/test_invitation_failures.py)."""
    seeded = seed_school(session, learners=12, groups=1, courses=1, name="Failing")
    session.execute(
        update(School)
        .where(School.id == seeded.school_id)
        .values(name="Line\r\nBcc: all@evil.test Academy")
    )
    invited = learner_ids(session, seeded.school_id, status="invited")[:2]
    session.commit()
    ids = ",".join(map(str, invited))
    run = batchctl(
        stack,
        seeded.token,
        "submit",
        "resend_invitation",
        "--learner-ids",
        ids,
        "--watch",
        "--json",
    )
    assert run.returncode == 3, run.stderr
    view = one_json(run)
    assert view["status"] == "completed" and view["counts"]["failed"] == 2


def test_every_result_is_one_json_document_with_json(stack, session, school):
    version = batchctl(stack, school.token, "--version")
    assert version.returncode == 0 and version.stdout.startswith("batchctl 0.1.0")

    learners = batchctl(stack, school.token, "learners", "--status", "active")
    active = [json.loads(line) for line in learners.stdout.splitlines()]
    assert active and {p["status"] for p in active} == {"active"}
    ids = ",".join(str(p["id"]) for p in active[:3])

    dry = batchctl(
        stack,
        school.token,
        "submit",
        "reactivate_learner",
        "--learner-ids",
        ids,
        "--dry-run",
        "--json",
    )
    assert dry.returncode == 0, dry.stderr
    assert one_json(dry) == {**one_json(dry), "dry_run": True, "total": 3}

    submitted = batchctl(
        stack, school.token, "submit", "resend_invitation", "--learner-ids", ids, "--json"
    )
    assert submitted.returncode == 0, submitted.stderr
    batch_id = one_json(submitted)["id"]
    finished = batchctl(stack, school.token, "status", str(batch_id), "--watch", "--json")
    assert finished.returncode == 0, finished.stderr
    assert one_json(finished)["status"] == "completed"
    status = batchctl(stack, school.token, "status", str(batch_id), "--json")
    assert one_json(status)["id"] == batch_id

    listed = batchctl(
        stack,
        school.token,
        "batches",
        "--status",
        "completed",
        "--action",
        "resend_invitation",
        "--json",
    )
    assert [b["id"] for b in one_json(listed)] == [batch_id]
    table = batchctl(stack, school.token, "batches", "--action", "resend_invitation")
    assert f"{batch_id}  resend_invitation" in table.stdout

    access = batchctl(stack, school.token, "access", str(active[0]["id"]), "--json")
    assert set(one_json(access)) == {"learner_id", "course_ids", "learning_path_ids"}

    reconciled = batchctl(stack, school.token, "reconcile", "--once", "--json")
    assert reconciled.returncode == 0, reconciled.stderr
    assert set(one_json(reconciled)) >= {"published", "finalized", "invitations_sent"}


# --- The upstream flow end to end: a CSV of emails, the webhook, the results ---

# Deliveries to a receiver on 127.0.0.1 over plain http, soon after the batch ends.
WEBHOOK_SETTINGS = {
    "WEBHOOK_ALLOW_HTTP": "true",
    "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
    "WEBHOOK_BACKOFF_MIN_SECONDS": "1",
    "WEBHOOK_BACKOFF_MAX_SECONDS": "2",
    "RECONCILE_INTERVAL_SECONDS": "0.5",
}
RESULTS_HEADER = "learner_id,external_id,email,outcome,reason,error,finished_at"


class Receiver(BaseHTTPRequestHandler):
    """Records each POST's headers and raw body; answers 204."""

    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.received.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/batch-actions", Receiver
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hook_stack(database_url: str, tmp_path_factory) -> Iterator[Stack]:
    """Producer, worker and reconciler with WEBHOOK_SETTINGS, on a vhost of their own."""
    logs = tmp_path_factory.mktemp("client-hook-stack")
    vhost, smtp, port = RabbitVhost(), SmtpServer(), free_port()
    env = stack_env(database_url, vhost, smtp, **WEBHOOK_SETTINGS)
    producer = Process.batchctl(["serve", "--port", str(port)], env, logs / "producer.log")
    worker = Process.batchctl(
        ["worker", "--processes", "1", "--threads", "4"], env, logs / "worker.log"
    )
    reconciler = Process.batchctl(
        ["reconcile"], {**env, "METRICS_PORT": str(free_port())}, logs / "reconciler.log"
    )
    running = Stack(env, f"http://127.0.0.1:{port}", vhost, smtp, producer, worker)
    try:
        wait_until(lambda: http_ok(f"{running.base_url}/healthz"), 30, "the producer", producer)
        wait_until(lambda: vhost.queues.consumers("add_to_group"), 60, "the worker", worker)
        yield running
    finally:
        for process in (producer, worker, reconciler):
            process.stop()
        smtp.stop()
        vhost.delete()


def test_upstream_flow_csv_of_emails_then_the_webhook_then_the_results(
    hook_stack, receiver, session, tmp_path: Path
):
    """What README's "Upstream flow" shows: submit by email from a CSV, a
    delivery that the client's own verify_webhook accepts (the server's
    signing is written separately: this is the cross-check), results as CSV."""
    url, received = receiver
    seeded = seed_school(session, learners=20, groups=2, courses=1, name="Upstream School")
    group_id, _, _ = make_group(session, seeded.school_id)
    chosen = learner_ids(session, seeded.school_id, status="active")[:3]
    picked = select(Learner.id, Learner.email).where(Learner.id.in_(chosen))
    emails = {learner: email for learner, email in session.execute(picked)}
    session.commit()

    added = batchctl(hook_stack, seeded.token, "webhooks", "add", url, "--event", "batch.completed")
    assert added.returncode == 0, added.stderr
    secret = one_json(added)["secret"]
    assert secret.startswith("whsec_")

    people = tmp_path / "learners.csv"
    rows = [f"Learner {i},{email.upper()}" for i, email in enumerate(emails.values())]
    people.write_text("name,email\n" + "\n".join(rows) + "\nNobody,nobody@nowhere.test\n\n")
    submitted = batchctl(
        hook_stack,
        seeded.token,
        "submit",
        "add_to_group",
        "--group-ids",
        str(group_id),
        "--csv",
        str(people),
        "--json",
    )
    assert submitted.returncode == 0, submitted.stderr
    batch = one_json(submitted)
    assert batch["total"] == 3
    assert batch["unmatched"] == {"count": 1, "first": ["nobody@nowhere.test"]}
    assert "1 emails matched no learner: nobody@nowhere.test" in submitted.stderr

    wait_until(lambda: received.received, 60, "the webhook delivery")
    headers, body = received.received[0]
    event = verify_webhook(secret, headers, body)
    assert event["type"] == "batch.completed" and event["data"]["id"] == batch["id"]
    assert event["data"]["counts"]["applied"] == 3
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, headers, body.replace(b'"applied":3', b'"applied":4'))

    results = batchctl(hook_stack, seeded.token, "items", str(batch["id"]), "--csv")
    assert results.returncode == 0, results.stderr
    lines = results.stdout.splitlines()
    assert lines[0] == RESULTS_HEADER
    by_learner = {int(row[0]): row for row in csv.reader(lines[1:])}
    assert set(by_learner) == set(chosen)
    assert {row[2] for row in by_learner.values()} == set(emails.values())
    assert {row[3] for row in by_learner.values()} == {"applied"}


def test_a_bad_csv_is_one_error_naming_its_line_and_submits_nothing(stack, session, tmp_path):
    seeded = seed_school(session, learners=5, groups=1, courses=1, name="Bad File School")
    session.commit()
    bad = tmp_path / "ids.csv"
    bad.write_text("learner_id,name\n1,Ann\n2x,Bob\n3,Cy\n")
    refused = batchctl(stack, seeded.token, "submit", "add_to_group", "--csv", str(bad))
    assert refused.returncode == 1
    assert f"{bad} line 3: learner_id '2x' is not a whole number above 0" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    listed = batchctl(stack, seeded.token, "batches", "--json")
    assert one_json(listed) == []
    missing = batchctl(stack, seeded.token, "submit", "add_to_group", "--csv", "/nonexistent.csv")
    assert missing.returncode == 2 and "cannot read /nonexistent.csv" in missing.stderr
