"""Resource limits of the HTTP API: request body size, and request rates per
token, per school and of failed authentications per address (the per-school
caps on running batches and learners an hour are checked at submit). Each
refusal says what to do."""

from __future__ import annotations

import json
import threading
import time

import redis
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.settings import Settings


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes the cap. An HTTPException
    because FastAPI passes those on from reading a body (and turns any other
    exception into its 400 "error parsing the body")."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            f"request body is larger than {max_bytes} bytes; select learners with a "
            "filter instead of listing them",
        )


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with 413, whether or not the client sent
    Content-Length (a chunked body is counted as it arrives)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            # Read outside a route (no exception handler): answer here if we still can.
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": BodyTooLarge(self.max_bytes).detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RequestRate:
    """At most `per_minute` events per key (a token, a school, an address) per
    clock minute: shared by all producer replicas through Redis, per process
    when Redis is absent or down. `what` names the events in the refusal."""

    def __init__(
        self, per_minute: int, client: redis.Redis | None, namespace: str, kind: str, what: str
    ) -> None:
        self.per_minute = per_minute
        self.client = client
        self.namespace = namespace
        self.kind, self.what = kind, what
        self.local: dict[tuple[str, int], int] = {}
        self.lock = threading.Lock()

    def _count(self, who: str, minute: int, add: int) -> int:
        client = self.client
        if client is not None:
            key = f"batch-actions:{self.namespace}:rate:{self.kind}:{who}:{minute}"
            try:
                if not add:
                    return int(client.get(key) or 0)
                pipe = client.pipeline(transaction=False)
                pipe.incrby(key, add)
                pipe.expire(key, 120)
                return int(pipe.execute()[0])
            except redis.RedisError:
                pass
        with self.lock:
            self.local = {k: v for k, v in self.local.items() if k[1] >= minute}
            self.local[(who, minute)] = self.local.get((who, minute), 0) + add
            return self.local[(who, minute)]

    def check(self, who: str) -> None:
        """Count one event of `who`; 429 past the limit."""
        self._refuse_over(self._count(who, self._minute(), 1))

    def count(self, who: str) -> None:
        """Count one event of `who`, refusing nothing (yet)."""
        self._count(who, self._minute(), 1)

    def refuse_if_spent(self, who: str) -> None:
        """429 if `who` already had its `per_minute` events this minute."""
        self._refuse_over(self._count(who, self._minute(), 0) + 1)

    @staticmethod
    def _minute() -> int:
        return int(time.time() // 60)

    def _refuse_over(self, count: int) -> None:
        if count > self.per_minute:
            retry = max(1, int(60 - time.time() % 60))
            raise HTTPException(
                429,
                f"more than {self.per_minute} {self.what}; retry in {retry}s",
                headers={"Retry-After": str(retry)},
            )


class ApiRates:
    """The API's request limits: per token, per school (every token of it
    together, so a second token does not start afresh), and failed
    authentications per client address (unauthenticated requests, guessed
    tokens)."""

    def __init__(self, settings: Settings, client: redis.Redis | None, namespace: str) -> None:
        self.token = RequestRate(
            settings.api_rate_per_minute,
            client,
            namespace,
            "token",
            "requests a minute with this token",
        )
        self.school = RequestRate(
            settings.school_rate_per_minute,
            client,
            namespace,
            "school",
            "requests a minute from your school's tokens",
        )
        self.auth_failures = RequestRate(
            settings.auth_failures_per_minute,
            client,
            namespace,
            "auth-failures",
            "failed authentications a minute from your address",
        )
