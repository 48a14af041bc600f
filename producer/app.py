"""The producer: a thin FastAPI app plus a background dispatch loop.

`batchctl serve` runs it; tests use `create_app()` directly.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from producer.auth import TokenBeforeBody
from producer.limits import ApiRates, BodySizeLimit
from producer.routes import router
from producer.submit import SubmitError
from shared import redaction
from shared.dispatch import DispatchLoop
from shared.metrics import DatabaseCollector, exposition, requests
from shared.publish import publisher_for
from shared.runtime import Runtime, current

log = logging.getLogger(__name__)


def start_dispatcher(runtime: Runtime) -> DispatchLoop:
    settings = runtime.settings
    loop = DispatchLoop(
        runtime.sessions,
        lambda: publisher_for(runtime.broker),
        window=settings.dispatch_window,
        stale_after=timedelta(seconds=settings.stale_after_seconds),
    )
    loop.start()
    return loop


def create_app(runtime: Runtime | None = None, dispatch: bool = True) -> FastAPI:
    """The API on `runtime` (by default this process's, `shared.runtime.current`)."""
    runtime = runtime or current()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        redaction.install("uvicorn", "uvicorn.access", "uvicorn.error")
        app.state.dispatcher = start_dispatcher(runtime) if dispatch else None
        yield
        if app.state.dispatcher is not None:
            app.state.dispatcher.stop()
            app.state.dispatcher.join(timeout=10)

    app = FastAPI(
        title="Batch Actions",
        version="1.0",
        description="Apply one action to any number of learners of a school.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.rate = ApiRates(runtime.settings, runtime.redis, runtime.namespace)
    app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=runtime.settings.max_body_bytes)
    app.add_middleware(TokenBeforeBody)  # outermost: a 401 before any body is read

    @app.exception_handler(405)
    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        # Starlette lists only the methods of the one route it matched; a path
        # such as /v1/batches has a GET route and a POST route.
        allowed = set()
        for route in app.routes:
            methods = getattr(route, "methods", None)
            if methods and route.path_regex.match(request.url.path):
                allowed |= methods
        return JSONResponse(
            {"detail": "Method Not Allowed"},
            status_code=405,
            headers={"Allow": ", ".join(sorted(allowed))},
        )

    @app.exception_handler(SubmitError)
    async def refused(_request: Request, exc: SubmitError) -> JSONResponse:
        if exc.status == 422:
            loc = ["body", *exc.field.split(".")] if exc.field else ["body"]
            detail = [{"loc": loc, "msg": exc.message, "type": "value_error"}]
            return JSONResponse({"detail": detail}, status_code=422)
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    # Resolved at scrape time: building the app must not touch the database.
    collectors = [DatabaseCollector(runtime.sessions)]

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        if route is not None and route.path != "/metrics":
            action = getattr(request.state, "batch_action", None) or route.name
            requests().labels(action, str(response.status_code)).inc()
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(exposition(collectors), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        problems = {}
        try:
            with runtime.sessions() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            problems["database"] = type(exc).__name__
        client = runtime.redis
        if client is not None:
            try:
                client.ping()
            except Exception as exc:
                problems["redis"] = type(exc).__name__
        dispatcher = getattr(app.state, "dispatcher", None)
        if dispatcher is not None and not dispatcher.is_alive():
            problems["dispatcher"] = "stopped"
        embedded = getattr(app.state, "embedded", None)  # workers.embedded, set by `serve`
        if embedded is not None:
            problems |= embedded.problems()
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    return app
