"""503 while no database primary accepts connections.

During a failover (the primary died, the standby is not promoted yet) or a
database restart, every request that touches the database fails with a
connection error. The client should retry, not report a bug: this
middleware answers such errors, wherever they are raised (a route, or the
token check that runs before routing), with 503 and a Retry-After. Any
other error goes on to the server's 500.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.errors import is_transient

RETRY_AFTER_SECONDS = 2


class DatabaseUnavailable:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except sa_exc.DBAPIError as exc:
            if started or not is_transient(exc):
                raise
            response = JSONResponse(
                {"detail": "The database is unavailable (restarting or failing over); retry."},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
            await response(scope, receive, send)
