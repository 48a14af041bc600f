"""Resource limits: request body size, a per-token request rate, and a
per-school cap on batches running at once. Each refusal says what to do."""

from __future__ import annotations

import threading
import time

import redis
from fastapi import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send


class BodyTooLarge(Exception):
    pass


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

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = (
            b'{"detail":"request body is larger than %d bytes; select learners with a '
            b'filter instead of listing them"}' % self.max_bytes
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RequestRate:
    """At most `per_minute` requests per token per clock minute: shared by all
    producer replicas through Redis, per process when Redis is absent or down."""

    def __init__(self, per_minute: int, client: redis.Redis | None, namespace: str) -> None:
        self.per_minute = per_minute
        self.client = client
        self.namespace = namespace
        self.local: dict[tuple[str, int], int] = {}
        self.lock = threading.Lock()

    def _count(self, who: str, minute: int) -> int:
        client = self.client
        if client is not None:
            key = f"batch-actions:{self.namespace}:rate:{who}:{minute}"
            try:
                pipe = client.pipeline(transaction=False)
                pipe.incr(key)
                pipe.expire(key, 120)
                return int(pipe.execute()[0])
            except redis.RedisError:
                pass
        with self.lock:
            self.local = {k: v for k, v in self.local.items() if k[1] >= minute}
            self.local[(who, minute)] = self.local.get((who, minute), 0) + 1
            return self.local[(who, minute)]

    def check(self, who: str) -> None:
        now = time.time()
        minute = int(now // 60)
        if self._count(who, minute) > self.per_minute:
            retry = max(1, int(60 - now % 60))
            raise HTTPException(
                429,
                f"more than {self.per_minute} requests a minute with this token; retry in {retry}s",
                headers={"Retry-After": str(retry)},
            )
