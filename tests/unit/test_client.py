"""The Python client's pure parts: reading a selection CSV, Retry-After,
retries and waiting (on httpx's MockTransport: no server), webhook
verification against the Standard Webhooks spec's published test vector,
and that the client imports none of the server's dependencies."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from batch_actions_client import (
    ApiError,
    ApiUnreachable,
    BatchClient,
    SelectionFileError,
    WebhookVerificationError,
    read_selection,
    retry_after_seconds,
    verify_webhook,
)

# --- A selection from a CSV file ---


def selection(text: str, cap: int = 100_000) -> dict:
    return read_selection(io.StringIO(text, newline=""), name="people.csv", cap=cap)


def refusal(text: str, cap: int = 100_000) -> str:
    with pytest.raises(SelectionFileError) as refused:
        selection(text, cap)
    return str(refused.value)


def test_the_first_known_column_is_read_in_the_order_email_external_id_learner_id() -> None:
    both = "learner_id,Name,Email\n7,Ann,ann@example.org\n8,Bob, bob@example.org \n\n"
    assert selection(both) == {"emails": ["ann@example.org", "bob@example.org"]}
    assert selection("external_id,learner_id\nA-1,3\n") == {"external_ids": ["A-1"]}
    assert selection("\ufeffname,learner_id\nAnn,12\nBob,13\n") == {"learner_ids": [12, 13]}


def test_a_bad_row_is_one_error_naming_its_line() -> None:
    # Blank lines (and rows of empty cells, as spreadsheets export them) are skipped.
    text = "email,name\na@x.org,A\n\n,,\nb@x.org,\n,Ann\n"
    assert refusal(text) == "people.csv line 6: the email cell is empty"
    assert "line 3: learner_id '1.5' is not a whole number" in refusal("learner_id\n4\n1.5\n")
    assert "line 2: learner_id '-3'" in refusal("learner_id\n-3\n")
    assert "line 2: learner_id '²'" in refusal("learner_id\n²\n")
    # A quoted cell over two lines: the line is the file's, not the row's.
    assert "line 4: the email cell is empty" in refusal('note,email\n"two\nlines",a@x.org\nb,\n')
    assert "line 2: email 'ann' has no @" in refusal("email\nann\n")


def test_a_file_that_cannot_be_a_selection_says_why() -> None:
    assert "line 1: the header names no email, external_id or learner_id" in refusal("id\n1\n")
    assert refusal("") == "people.csv is empty; its first line names the column"
    assert refusal("email\n\n") == "people.csv has a header but no learner"
    over = refusal("learner_id\n1\n2\n3\n", cap=2)
    assert "line 4: more than 2 learners; the API takes at most 2 per batch" in over


def test_a_file_that_is_not_utf8_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("email\nann@x.org\nzoë@x.org\n".encode("latin-1"))
    with (
        path.open(newline="", encoding="utf-8-sig") as lines,
        pytest.raises(SelectionFileError) as e,
    ):
        read_selection(lines, name="latin1.csv")
    assert "not UTF-8" in str(e.value)


# --- Retry-After ---


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 12, 3, 8, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("30") == 30.0
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds("Thu, 03 Dec 2026 08:00:12 GMT", now=now) == 12.0
    assert retry_after_seconds("Thu, 03 Dec 2026 07:59:00 GMT", now=now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") is None
    assert retry_after_seconds(None) is None


# --- Retries and waiting, on a mock transport ---


class Script:
    """Answers in turn; records each request and each sleep."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers, self.requests, self.sleeps = list(answers), [], []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self, attempts: int = 4) -> BatchClient:
        http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(self))
        return BatchClient("", "t0ken", http=http, attempts=attempts, sleep=self.sleeps.append)


BATCH = {"id": 7, "status": "queued", "action": "add_to_group", "total": 3, "counts": {}}


def ok(body: object = BATCH, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


def limited(status: int = 429, retry_after: str | None = "2") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return httpx.Response(status, json={"detail": "slow down"}, headers=headers)


def test_a_get_is_retried_after_retry_after_on_429_and_503() -> None:
    script = Script(limited(429, "2"), limited(503, "1"), ok())
    assert script.client().batch(7)["id"] == 7
    assert len(script.requests) == 3 and script.sleeps == [2.0, 1.0]


def test_a_submit_is_retried_with_the_same_idempotency_key() -> None:
    script = Script(limited(429, "3"), ok(status=202))
    script.client().submit("add_to_group", {"learner_ids": [1]}, {"group_ids": [2]})
    keys = {r.headers["Idempotency-Key"] for r in script.requests}
    assert len(script.requests) == 2 and len(keys) == 1 and keys != {""}
    assert json.loads(script.requests[1].content)["selection"] == {"learner_ids": [1]}


def test_a_post_without_a_key_is_not_retried_unless_it_was_never_sent() -> None:
    script = Script(limited(503, "1"))
    with pytest.raises(ApiError) as refused:
        script.client().cancel(7)
    assert refused.value.status == 503 and len(script.requests) == 1
    read_timeout = Script(httpx.ReadTimeout("slow"))
    with pytest.raises(ApiUnreachable):
        read_timeout.client().cancel(7)
    assert len(read_timeout.requests) == 1
    refused_connection = Script(httpx.ConnectError("refused"), ok(status=202))
    assert refused_connection.client().cancel(7)["id"] == 7
    assert len(refused_connection.requests) == 2


def test_attempts_are_bounded_and_a_long_retry_after_is_not_waited_for() -> None:
    down = Script(*[httpx.ConnectError("refused")] * 3)
    with pytest.raises(ApiUnreachable) as unreachable:
        down.client(attempts=3).batch(7)
    assert len(down.requests) == 3 and len(down.sleeps) == 2
    assert "cannot reach the API at http://api.test/" in str(unreachable.value)
    assert 0.25 <= down.sleeps[0] <= 0.5 and 0.375 <= down.sleeps[1] <= 0.75
    hour = Script(limited(429, "3600"))
    with pytest.raises(ApiError) as refused:
        hour.client().batch(7)
    assert refused.value.status == 429 and hour.sleeps == []
    always = Script(*[limited(503, None)] * 2)
    with pytest.raises(ApiError):
        always.client(attempts=2).batch(7)
    assert len(always.requests) == 2


def test_wait_backs_off_from_half_a_second_to_ten_and_honours_its_timeout(monkeypatch) -> None:
    running = {**BATCH, "status": "running"}
    script = Script(*[ok(running)] * 9, ok({**BATCH, "status": "completed"}))
    assert script.client().wait(7, timeout=600)["status"] == "completed"
    assert script.sleeps == [0.5, 0.75, 1.125, 1.6875, 2.53125, 3.796875, 5.6953125, 8.54296875, 10]
    clock = iter(range(0, 1000, 4))
    monkeypatch.setattr("batch_actions_client.client.time.monotonic", lambda: next(clock))
    stuck = Script(*[ok(running)] * 5)
    with pytest.raises(TimeoutError, match="batch 7 still running after 10s"):
        stuck.client().wait(7, timeout=10)
    assert len(stuck.requests) == 3


def test_items_csv_streams_the_lines_of_the_csv_answer() -> None:
    csv_text = (
        "learner_id,external_id,email,outcome,reason,error,finished_at\r\n5,,a@x.org,applied,,,\r\n"
    )
    script = Script(httpx.Response(200, text=csv_text, headers={"Content-Type": "text/csv"}))
    lines = list(script.client().items_csv(7, outcome="applied"))
    assert lines == [
        "learner_id,external_id,email,outcome,reason,error,finished_at",
        "5,,a@x.org,applied,,,",
    ]
    assert dict(script.requests[0].url.params) == {"outcome": "applied", "format": "csv"}


# --- Webhook verification (Standard Webhooks) ---

# The spec's own test vector (standard-webhooks, libraries/python/tests/test_webhooks.py).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SENT_AT = 1614265330
PAYLOAD = '{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(signature: str = SIGNATURE, sent_at: int = SENT_AT) -> dict[str, str]:
    return {"Webhook-Id": MSG_ID, "Webhook-Timestamp": str(sent_at), "Webhook-Signature": signature}


def test_the_spec_test_vector_verifies() -> None:
    assert verify_webhook(SECRET, headers(), PAYLOAD, now=SENT_AT) == {"test": 2432232314}
    assert verify_webhook(SECRET.removeprefix("whsec_"), headers(), PAYLOAD.encode(), now=SENT_AT)
    several = f"v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,xyz {SIGNATURE}"
    assert verify_webhook(SECRET, headers(several), PAYLOAD, now=SENT_AT + 299)


@pytest.mark.parametrize(
    "change",
    ["tampered body", "other secret", "v2 only", "too old", "too new", "no id", "bad timestamp"],
)
def test_anything_else_is_refused(change: str) -> None:
    secret, body, given, now = SECRET, PAYLOAD, headers(), float(SENT_AT)
    if change == "tampered body":
        body = '{"test": 2432232315}'
    elif change == "other secret":
        secret = "whsec_" + "A" * 32
    elif change == "v2 only":
        given = headers("v2," + SIGNATURE.removeprefix("v1,"))
    elif change == "too old":
        now = SENT_AT + 301
    elif change == "too new":
        now = SENT_AT - 301
    elif change == "no id":
        del given["Webhook-Id"]
    elif change == "bad timestamp":
        given["Webhook-Timestamp"] = "yesterday"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, given, body, now=now)


def test_a_secret_that_is_not_base64_is_a_clear_error() -> None:
    with pytest.raises(WebhookVerificationError, match="not `whsec_` followed by base64"):
        verify_webhook("whsec_not base64!", headers(), PAYLOAD, now=SENT_AT)


# --- Installable without the server ---


def test_the_client_imports_none_of_the_servers_dependencies() -> None:
    """Imported with fastapi, sqlalchemy, dramatiq, pydantic, typer and the
    server's own packages made unimportable (what `pip install ./client`
    leaves out), from the client's directory alone."""
    blocked = ["fastapi", "sqlalchemy", "dramatiq", "pydantic", "typer", "rich", "shared"]
    blocked += ["producer", "workers", "batchctl", "psycopg", "pika", "redis"]
    program = f"""
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is the server's, not the client's")
sys.meta_path.insert(0, Blocked())
import batch_actions_client
from batch_actions_client import BatchClient, verify_webhook, read_selection
print(batch_actions_client.__file__)
"""
    client_dir = Path(__file__).resolve().parents[2] / "client"
    done = subprocess.run(
        [sys.executable, "-I", "-c", program],
        cwd=client_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(client_dir / "batch_actions_client" / "__init__.py")
