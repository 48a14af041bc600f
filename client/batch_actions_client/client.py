"""A small client for upstream services (and `batchctl`) to drive the API.

It retries what is safe to retry: a connection that could not be opened
(nothing was sent), and a 429 or 503 answer after its Retry-After, for
GETs and for the submits and retries it sends with an Idempotency-Key (a
replay returns the batch the first call created). A bounded number of
attempts; then the error is the caller's."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

from batch_actions_client.retries import (
    IDEMPOTENT_METHODS,
    RETRIED_STATUSES,
    backoff,
    jittered,
    retry_after_seconds,
)

FINISHED = frozenset({"completed", "cancelled", "failed"})
WEBHOOK_EVENTS = ("batch.completed", "batch.cancelled", "batch.failed")
# The request never left: retrying cannot apply anything twice, whatever the method.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class ApiError(Exception):
    """The API refused a call. Its text is one line for a person: the status,
    then each field the API named with what it expects there."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {_one_line(detail)}")
        self.status, self.detail = status, detail


class ApiUnreachable(ApiError):
    """No answer at all: nothing listens at the URL, or the network failed."""

    def __init__(self, base_url: httpx.URL, error: httpx.TransportError) -> None:
        where = base_url.copy_with(userinfo=None, path="/")
        Exception.__init__(
            self,
            f"cannot reach the API at {where} ({type(error).__name__}); start it "
            "(`batchctl serve`) or point --url or BATCH_API_URL at it",
        )
        self.status, self.detail = 0, str(error)


def _one_line(detail: Any) -> str:
    """FastAPI's 422 detail (a list of {loc, msg}) as `field: what it expects`."""
    if not isinstance(detail, list):
        return str(detail)
    problems = []
    for problem in detail:
        if not isinstance(problem, dict):
            problems.append(str(problem))
            continue
        loc = [str(part) for part in problem.get("loc", [])]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        # A tagged union repeats its tag: selection.learner_ids.learner_ids.0.
        field = ".".join(part for i, part in enumerate(loc) if i == 0 or part != loc[i - 1])
        problems.append(f"{field or 'the request'}: {problem.get('msg', problem)}")
    return "; ".join(problems)


def _error(response: httpx.Response) -> ApiError:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text
    return ApiError(response.status_code, detail)


class BatchClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
        attempts: int = 4,
        max_retry_after: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`http` lets a caller pass its own client (the demo passes FastAPI's
        in-process TestClient). `attempts` bounds the tries of one call
        (1: never retry); a Retry-After longer than `max_retry_after`
        seconds is not waited for: the 429 or 503 is raised at once."""
        self.http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.attempts, self.max_retry_after, self.sleep = max(1, attempts), max_retry_after, sleep

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._response(method, path, **kwargs).json()

    def _response(
        self, method: str, path: str, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """The answer of a call that succeeded (unread when `stream`);
        ApiError otherwise, after the retries that are safe."""
        request = self.http.build_request(method, path, **kwargs)
        repeatable = method in IDEMPOTENT_METHODS or "Idempotency-Key" in request.headers
        delays = backoff()
        for attempt in range(1, self.attempts + 1):
            last = attempt == self.attempts
            try:
                response = self.http.send(request, stream=stream)
            except httpx.TransportError as error:
                if last or not (repeatable or isinstance(error, NOT_SENT)):
                    raise ApiUnreachable(self.http.base_url, error) from None
                self.sleep(jittered(next(delays)))
                continue
            if response.status_code < 400:
                return response
            response.read()
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if (
                last
                or not repeatable
                or response.status_code not in RETRIED_STATUSES
                or (wait is not None and wait > self.max_retry_after)
            ):
                response.close()
                raise _error(response)
            response.close()
            self.sleep(wait if wait is not None else jittered(next(delays)))
        raise AssertionError("unreachable: the last attempt returns or raises")

    # --- Batches ---

    def submit(
        self,
        action: str,
        selection: dict,
        params: dict | None = None,
        dry_run: bool = False,
        idempotency_key: str | None = None,
        expected_total: int | None = None,
    ) -> dict:
        """Submit a batch. `selection` is {"learner_ids": [...]}, {"emails":
        [...]}, {"external_ids": [...]}, {"filter": {...}, "exclude_ids":
        [...]} or {"all_not_activated": true}. A key is generated when none
        is given, so a retried call after a timeout cannot create a second
        batch. `expected_total` (a dry run's `total`) is required to
        deactivate or delete over a filter: a different count is a 409 and
        nothing is created."""
        key = idempotency_key or str(uuid.uuid4())
        body = {
            "action": action,
            "params": params or {},
            "selection": selection,
            "dry_run": dry_run,
        }
        if expected_total is not None:
            body["expected_total"] = expected_total
        return self._call("POST", "/v1/batches", json=body, headers={"Idempotency-Key": key})

    def retry(self, batch_id: int, idempotency_key: str | None = None) -> dict:
        """A new batch of `batch_id`'s failed learners (its view names the
        original in `retry_of`). A key is generated when none is given, as
        for `submit`."""
        key = idempotency_key or str(uuid.uuid4())
        return self._call("POST", f"/v1/batches/{batch_id}/retry", headers={"Idempotency-Key": key})

    def batch(self, batch_id: int) -> dict:
        return self._call("GET", f"/v1/batches/{batch_id}")

    def batches(
        self, limit: int = 20, status: str | None = None, action: str | None = None
    ) -> list[dict]:
        """The school's newest `limit` batches, optionally only those of one
        status and/or action."""
        found: list[dict] = []
        params: dict[str, Any] = {"limit": min(limit, 100)}
        params |= {k: v for k, v in (("status", status), ("action", action)) if v is not None}
        while len(found) < limit:
            page = self._call("GET", "/v1/batches", params=params)
            found += page["batches"]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        return found[:limit]

    def cancel(self, batch_id: int) -> dict:
        """409 when the batch has already ended (its view says how)."""
        return self._call("POST", f"/v1/batches/{batch_id}/cancel")

    def wait(
        self, batch_id: int, timeout: float = 600.0, poll: float = 0.5, max_poll: float = 10.0
    ) -> dict:
        """Poll until the batch is finished; return its final view. Polls
        after `poll` seconds, then 1.5 times longer each time up to
        `max_poll`; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        delays = backoff(start=poll, cap=max_poll)
        while True:
            view = self.batch(batch_id)
            if view["status"] in FINISHED:
                return view
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"batch {batch_id} still {view['status']} after {timeout}s")
            self.sleep(min(next(delays), left))

    def items(
        self, batch_id: int, outcome: str | None = None, reason: str | None = None
    ) -> Iterator[dict]:
        """Every item of the batch (optionally of one outcome), page by page."""
        cursor = None
        while True:
            params = {"limit": 500, "outcome": outcome, "reason": reason, "cursor": cursor}
            page = self._call(
                "GET",
                f"/v1/batches/{batch_id}/items",
                params={k: v for k, v in params.items() if v is not None},
            )
            yield from page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def items_csv(
        self, batch_id: int, outcome: str | None = None, reason: str | None = None
    ) -> Iterator[str]:
        """Every item as CSV lines, the header first (learner_id, external_id,
        email, outcome, reason, error, finished_at), read as the API streams it."""
        params = {"outcome": outcome, "reason": reason, "format": "csv"}
        return self._lines(f"/v1/batches/{batch_id}/items", params)

    # --- Learners ---

    def learners(self, **filters: Any) -> Iterator[dict]:
        """The people list: `filters` status (a list), group_id, q."""
        cursor = None
        while True:
            params = {"limit": 500, **filters, "cursor": cursor}
            page = self._call(
                "GET", "/v1/learners", params={k: v for k, v in params.items() if v is not None}
            )
            yield from page["learners"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def access(self, learner_id: int) -> dict:
        """The courses and learning paths the learner can open now."""
        return self._call("GET", f"/v1/learners/{learner_id}/access")

    # --- Webhooks ---

    def add_webhook(self, url: str, events: Sequence[str] = WEBHOOK_EVENTS) -> dict:
        """Register an endpoint for `events`; the answer carries its
        `whsec_...` secret, shown this once (verify deliveries with it:
        `verify_webhook`)."""
        return self._call("POST", "/v1/webhooks", json={"url": url, "events": list(events)})

    def webhooks(self) -> list[dict]:
        """The school's endpoints (never their secrets)."""
        return self._call("GET", "/v1/webhooks")["endpoints"]

    def delete_webhook(self, webhook_id: int) -> None:
        self._response("DELETE", f"/v1/webhooks/{webhook_id}")

    def rotate_webhook_secret(self, webhook_id: int) -> dict:
        """A new secret, in the answer this once; the previous one still
        signs for a grace period (a second signature)."""
        return self._call("POST", f"/v1/webhooks/{webhook_id}/rotate-secret")

    def webhook_deliveries(self, webhook_id: int) -> Iterator[dict]:
        """The endpoint's deliveries with every attempt, page by page."""
        params: dict[str, Any] = {}
        while True:
            page = self._call("GET", f"/v1/webhooks/{webhook_id}/deliveries", params=params)
            yield from page["deliveries"]
            if page.get("next_cursor") is None:
                return
            params["cursor"] = page["next_cursor"]

    # --- The audit trail and API tokens ---

    def audit(self, page_size: int = 500, **filters: Any) -> Iterator[dict]:
        """The school's audit trail, newest first, every page of it.
        `filters`: learner_id, batch_id, actor_id, action, since, until
        (ISO 8601), cursor."""
        params = {k: v for k, v in filters.items() if v is not None}
        while True:
            page = self._call("GET", "/v1/audit", params={**params, "limit": page_size})
            yield from page["entries"]
            if page["next_cursor"] is None:
                return
            params["cursor"] = page["next_cursor"]

    def audit_csv(self, **filters: Any) -> Iterator[str]:
        """The same trail as CSV, a line at a time (the header first), read
        as the API streams it."""
        return self._lines("/v1/audit", {**filters, "format": "csv"})

    def tokens(self, include_revoked: bool = False) -> list[dict]:
        """The school's API tokens (never their secrets)."""
        params = {"include_revoked": "true"} if include_revoked else {}
        return self._call("GET", "/v1/tokens", params=params)["tokens"]

    def revoke_token(self, token_id: int) -> None:
        self._response("DELETE", f"/v1/tokens/{token_id}")

    def _lines(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        """A streamed text answer a line at a time. The request is sent at
        the first `next()`, as a generator does."""
        wanted = {k: v for k, v in params.items() if v is not None}
        response = self._response("GET", path, params=wanted, stream=True)
        try:
            yield from response.iter_lines()
        finally:
            response.close()
