"""A small client for upstream services (and `batchctl`) to drive the API."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

FINISHED = {"completed", "cancelled", "failed"}


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


class BatchClient:
    def __init__(
        self, base_url: str, token: str, timeout: float = 30.0, http: httpx.Client | None = None
    ) -> None:
        """`http` lets a caller pass its own client (the demo passes FastAPI's
        in-process TestClient)."""
        self.http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self.http.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        return self._response(method, path, **kwargs).json()

    def _response(self, method: str, path: str, **kwargs) -> httpx.Response:
        """The answer of a call that succeeded; ApiError otherwise."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ApiUnreachable(self.http.base_url, error) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response

    def submit(
        self,
        action: str,
        selection: dict,
        params: dict | None = None,
        dry_run: bool = False,
        idempotency_key: str | None = None,
        expected_total: int | None = None,
    ) -> dict:
        """Submit a batch. A key is generated when none is given, so a retried
        call after a timeout cannot create a second batch. `expected_total`
        (a dry run's `total`) is required to deactivate or delete over a
        filter: a different count is a 409 and nothing is created."""
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

    def batches(self, limit: int = 20) -> list[dict]:
        return self._call("GET", "/v1/batches", params={"limit": limit})["batches"]

    def cancel(self, batch_id: int) -> dict:
        return self._call("POST", f"/v1/batches/{batch_id}/cancel")

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

    def learners(self, **filters) -> Iterator[dict]:
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
        return self._call("GET", f"/v1/learners/{learner_id}/access")

    def wait(self, batch_id: int, timeout: float = 600.0, poll: float = 0.25) -> dict:
        """Poll until the batch is finished; return its final view."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.batch(batch_id)
            if view["status"] in FINISHED:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} still {view['status']} after {timeout}s")
            time.sleep(poll)

    # --- The audit trail and API tokens ---

    def audit(self, page_size: int = 500, **filters) -> Iterator[dict]:
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

    def audit_csv(self, **filters) -> Iterator[str]:
        """The same trail as CSV, a line at a time (the header first), read
        as the API streams it."""
        params = {k: v for k, v in filters.items() if v is not None}
        request = self.http.build_request("GET", "/v1/audit", params={**params, "format": "csv"})
        try:
            response = self.http.send(request, stream=True)
        except httpx.TransportError as error:
            raise ApiUnreachable(self.http.base_url, error) from None
        try:
            if response.status_code >= 400:
                response.read()
                try:
                    detail = response.json().get("detail")
                except ValueError:
                    detail = response.text
                raise ApiError(response.status_code, detail)
            yield from response.iter_lines()
        finally:
            response.close()

    def tokens(self, include_revoked: bool = False) -> list[dict]:
        """The school's API tokens (never their secrets)."""
        params = {"include_revoked": "true"} if include_revoked else {}
        return self._call("GET", "/v1/tokens", params=params)["tokens"]

    def revoke_token(self, token_id: int) -> None:
        self._response("DELETE", f"/v1/tokens/{token_id}")
