"""Completion webhooks through the real pipeline: producer, worker and
reconciler processes on PostgreSQL, RabbitMQ and Redis, delivering to a real
HTTP receiver on 127.0.0.1 (so private addresses and plain http are allowed
here, as for local development).

What a receiver sees: a delivery it verifies with the published Standard
Webhooks algorithm carrying the batch's view; a receiver that answers 500
twice gets the event a third time with the same `webhook-id`; a worker
killed in the middle of a delivery does not lose it; another school's events
never reach this school's endpoint."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from batchctl.seed import seed_school
from tests.support.factories import learner_ids, make_group
from tests.support.services import (
    Process,
    RabbitVhost,
    SmtpServer,
    free_port,
    http_ok,
    stack_env,
    wait_until,
)

# Short enough for a test: a killed attempt's delivery is held 3 x 5 + 10 s.
SETTINGS = {
    "WEBHOOK_ALLOW_HTTP": "true",
    "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
    "WEBHOOK_TIMEOUT_SECONDS": "5",
    "WEBHOOK_BACKOFF_MIN_SECONDS": "1",
    "WEBHOOK_BACKOFF_MAX_SECONDS": "2",
    "RECONCILE_INTERVAL_SECONDS": "0.5",
    "DELETION_GRACE_SECONDS": "1",
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server that records every request and answers each path as
    its script says: a list of status codes, the last one repeated, or a
    callable run before answering (to hold a request)."""

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    before: dict[str, Callable[[], None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            got = holder[0]
            with got.lock:
                got.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                script = got.scripts.get(self.path, [200])
                status = script.pop(0) if len(script) > 1 else script[0]
                before = got.before.pop(self.path, None)
            if before is not None:
                before()
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    holder.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()


@dataclass
class HookStack:
    env: dict
    base_url: str
    worker: Process
    logs: object

    def restart_worker(self) -> None:
        self.worker = Process.batchctl(
            ["worker", "--processes", "1", "--threads", "4"],
            self.env,
            self.logs / f"worker-{uuid.uuid4().hex[:6]}.log",  # type: ignore[operator]
        )


@pytest.fixture(scope="module")
def hook_stack(database_url: str, tmp_path_factory) -> Iterator[HookStack]:
    """Producer, one worker and a reconciler, as in production, with this
    test's webhook settings and a vhost of their own."""
    logs = tmp_path_factory.mktemp("webhook-stack")
    vhost = RabbitVhost()
    smtp = SmtpServer()
    port = free_port()
    env = stack_env(database_url, vhost, smtp, **SETTINGS)
    producer = Process.batchctl(["serve", "--port", str(port)], env, logs / "producer.log")
    reconciler = Process.batchctl(
        ["reconcile"], {**env, "METRICS_PORT": str(free_port())}, logs / "reconciler.log"
    )
    stack = HookStack(env, f"http://127.0.0.1:{port}", None, logs)  # type: ignore[arg-type]
    stack.restart_worker()
    try:
        wait_until(lambda: http_ok(f"{stack.base_url}/healthz"), 30, "the producer", producer)
        wait_until(
            lambda: vhost.queues.consumers("deliver_webhook"), 60, "the worker", stack.worker
        )
        yield stack
    finally:
        producer.stop()
        stack.worker.stop()
        reconciler.stop()
        smtp.stop()
        vhost.delete()


def api(stack: HookStack, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def register(client: httpx.Client, url: str, events=("batch.completed",)) -> dict:
    answer = client.post("/v1/webhooks", json={"url": url, "events": list(events)})
    assert answer.status_code == 201, answer.text
    return answer.json()


def run_batch(client: httpx.Client, session, school_id: int, n: int = 3) -> dict:
    """Submit add_to_group for `n` learners and wait until it completes."""
    group_id, _, _ = make_group(session, school_id)
    session.commit()
    chosen = learner_ids(session, school_id, status="active")[:n]
    answer = client.post(
        "/v1/batches",
        json={
            "action": "add_to_group",
            "params": {"group_ids": [group_id]},
            "selection": {"learner_ids": chosen},
        },
    )
    assert answer.status_code == 202, answer.text
    batch_id = answer.json()["id"]

    def finished():
        view = client.get(f"/v1/batches/{batch_id}").json()
        return view if view["status"] == "completed" else None

    return wait_until(finished, 60, f"batch {batch_id} to complete")


def verify(secret: str, request: Received) -> bool:
    """The Standard Webhooks check, written from the specification: any
    `v1,` signature of the header matches HMAC-SHA256 over id.timestamp.body
    with the base64-decoded secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode()
    expected = base64.b64encode(hmac.digest(key, signed + request.body, hashlib.sha256))
    given = [s.split(",", 1)[1] for s in request.headers["webhook-signature"].split(" ")]
    return any(hmac.compare_digest(expected.decode(), sig) for sig in given)


def deliveries(client: httpx.Client, endpoint_id: int) -> list[dict]:
    answer = client.get(f"/v1/webhooks/{endpoint_id}/deliveries")
    assert answer.status_code == 200, answer.text
    return answer.json()["deliveries"]


def delivered(client: httpx.Client, endpoint_id: int) -> list[dict] | None:
    found = deliveries(client, endpoint_id)
    return found if found and all(d["status"] == "delivered" for d in found) else None


def test_a_delivery_verifies_with_the_published_algorithm_and_carries_the_batch_view(
    hook_stack, receiver, session, school
):
    with api(hook_stack, school.token) as client:
        endpoint = register(client, f"{receiver.base}/verified")
        view = run_batch(client, session, school.school_id)
        [request] = wait_until(lambda: receiver.at("/verified"), 30, "the delivery")
        [delivery] = wait_until(lambda: delivered(client, endpoint["id"]), 30, "delivered")

    assert verify(endpoint["secret"], request)
    assert not verify(endpoint["secret"], Received("", request.headers, request.body + b" "))
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    payload = json.loads(request.body)
    assert payload["type"] == "batch.completed"
    assert payload["data"] == view
    assert request.headers["webhook-id"] == delivery["webhook_id"]
    assert [a["status_code"] for a in delivery["attempt_log"]] == [200]


def test_a_receiver_that_fails_twice_gets_the_event_a_third_time_with_one_id(
    hook_stack, receiver, session, school
):
    receiver.scripts["/flaky"] = [500, 500, 200]
    with api(hook_stack, school.token) as client:
        endpoint = register(client, f"{receiver.base}/flaky")
        view = run_batch(client, session, school.school_id)
        [delivery] = wait_until(lambda: delivered(client, endpoint["id"]), 60, "delivered")

    requests = receiver.at("/flaky")
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {delivery["webhook_id"]}
    assert {r.body for r in requests} == {requests[0].body}
    assert all(verify(endpoint["secret"], r) for r in requests)
    assert json.loads(requests[0].body)["data"]["id"] == view["id"]
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 200]
    assert delivery["attempts"] == 3


def test_a_worker_killed_during_a_delivery_still_delivers(hook_stack, receiver, session, school):
    held = threading.Event()
    receiver.before["/killed"] = lambda: (held.set(), time.sleep(30))
    with api(hook_stack, school.token) as client:
        endpoint = register(client, f"{receiver.base}/killed")
        run_batch(client, session, school.school_id)
        wait_until(held.is_set, 30, "the first attempt to reach the receiver")
        hook_stack.worker.signal(9)  # SIGKILL, the whole process group
        hook_stack.worker.stop()
        hook_stack.restart_worker()
        [delivery] = wait_until(lambda: delivered(client, endpoint["id"]), 90, "delivered")

    requests = receiver.at("/killed")
    assert len(requests) == 2
    assert {r.headers["webhook-id"] for r in requests} == {delivery["webhook_id"]}
    # The killed attempt was claimed (counted) but never recorded: the kill
    # came before its answer or its timeout.
    assert delivery["attempts"] == 2
    assert [a["status_code"] for a in delivery["attempt_log"]] == [200]


def test_another_schools_events_never_reach_this_schools_endpoint(
    hook_stack, receiver, session, school
):
    theirs = seed_school(session, learners=5, groups=1, courses=1, name="Their school")
    session.commit()
    with api(hook_stack, school.token) as ours, api(hook_stack, theirs.token) as their_client:
        mine = register(ours, f"{receiver.base}/ours", events=["batch.completed"])
        register(their_client, f"{receiver.base}/theirs", events=["batch.completed"])
        their_batch = run_batch(their_client, session, theirs.school_id)
        wait_until(lambda: receiver.at("/theirs"), 30, "their delivery")
        my_batch = run_batch(ours, session, school.school_id)
        wait_until(lambda: delivered(ours, mine["id"]), 30, "our delivery")
        assert ours.get(f"/v1/webhooks/{mine['id']}/deliveries").status_code == 200
        time.sleep(2)  # a few reconcile passes: nothing else arrives

    assert [json.loads(r.body)["data"]["id"] for r in receiver.at("/ours")] == [my_batch["id"]]
    assert [json.loads(r.body)["data"]["id"] for r in receiver.at("/theirs")] == [their_batch["id"]]
