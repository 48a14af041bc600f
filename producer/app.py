"""The producer: a thin FastAPI app plus a background dispatch loop.

`batchctl serve` runs it with `serve`; tests use `create_app()` directly.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.routing import Match, Route

from producer import webhooks
from producer.auth import TokenBeforeBody
from producer.limits import ApiRates, BodySizeLimit
from producer.routes import router
from producer.submit import SubmitError
from producer.unavailable import DatabaseUnavailable
from shared import logs, redaction
from shared.dispatch import DispatchLoop, pace_for
from shared.metrics import DatabaseCollector, requests, serve_metrics
from shared.publish import publisher_for
from shared.runtime import Runtime, current

log = logging.getLogger(__name__)
# One line per request, naming the route's template (/v1/learners/{learner_id}/access),
# never the URL: paths and query strings carry what clients type, emails included.
access_log = logging.getLogger("producer.access")


def start_dispatcher(runtime: Runtime) -> DispatchLoop:
    settings = runtime.settings
    loop = DispatchLoop(
        runtime.sessions,
        lambda: publisher_for(runtime.broker),
        window=settings.dispatch_window,
        stale_after=timedelta(seconds=settings.stale_after_seconds),
        pace=pace_for(settings.queue_type),
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
    app.include_router(webhooks.router)
    app.add_middleware(BodySizeLimit, max_bytes=runtime.settings.max_body_bytes)
    app.add_middleware(TokenBeforeBody)  # outermost: a 401 before any body is read
    app.add_middleware(DatabaseUnavailable)  # 503, also for the token check's query

    @app.exception_handler(405)
    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        # Starlette lists only the methods of the one route it matched; a path
        # such as /v1/batches has a GET route and a POST route.
        allowed: set[str] = set()
        # The API's routes are not in app.routes themselves: FastAPI keeps an
        # included router behind one wrapper route.
        for route in [*app.routes, *router.routes, *webhooks.router.routes]:
            if not isinstance(route, Route) or not route.methods:
                continue
            if route.path_regex.match(request.url.path):
                allowed |= route.methods
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
        return JSONResponse(
            {"detail": exc.message, **exc.extra}, status_code=exc.status, headers=headers
        )

    @app.middleware("http")
    async def count_and_log_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = _route_of(app, request)
        if route is not None:
            action = getattr(request.state, "batch_action", None) or route.name
            requests().labels(action, str(response.status_code)).inc()
        access_log.info(
            "%s %s %d %.1fms",
            request.method,
            route.path if route is not None else "(no route)",
            response.status_code,
            1000 * (time.perf_counter() - started),
            extra=path_ids(request),
        )
        return response

    # FastAPI's documented way to customise the schema is to replace the method.
    app.openapi = lambda: _openapi_with_bearer_tokens(app)  # type: ignore[method-assign]

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


def path_ids(request: Request) -> dict[str, int]:
    """The batch and learner a request's path names, for its log line: ids
    that are numbers only (a path can hold anything a client typed)."""
    params = request.scope.get("path_params") or {}
    return {
        name: int(value)
        for name, value in params.items()
        if name in logs.IDS and str(value).isdigit() and len(str(value)) < 19
    }


def _route_of(app: FastAPI, request: Request):
    """The route that answered, or would have: a middleware can answer (401,
    413) before routing has run."""
    route = request.scope.get("route")
    if route is None:
        # The API's routes by themselves: FastAPI's included-router wrapper has no name.
        routes = [*router.routes, *webhooks.router.routes, *app.router.routes]
        route = next(
            (r for r in routes if hasattr(r, "name") and r.matches(request.scope)[0] == Match.FULL),
            None,
        )
    return route


def _openapi_with_bearer_tokens(app: FastAPI) -> dict:
    """The OpenAPI document, declaring that every operation takes a bearer
    token (`batchctl token`), so /docs can authorize its calls."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearerToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API token of an admin: `batchctl token`.",
            }
        }
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation["security"] = [{"bearerToken": []}]
        app.openapi_schema = schema
    return app.openapi_schema


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run the app as `batchctl serve` does: logs through the redaction filter
    like every other process (uvicorn's own access log is off: it quotes
    URLs), and Prometheus metrics on a port of their own,
    METRICS_HOST:PRODUCER_METRICS_PORT, not the API's: they show every
    school's totals and query the database on each scrape."""
    import uvicorn

    runtime: Runtime = app.state.runtime
    settings = runtime.settings
    logs.configure(settings)
    try:
        # Resolved at scrape time: starting must not wait on the database.
        collectors = [DatabaseCollector(runtime.sessions)]
        serve_metrics(settings.metrics_host, settings.producer_metrics_port, collectors)
    except OSError as exc:
        # The API still serves; Prometheus sees the target down and alerts.
        log.error(
            "metrics not served on %s:%s (%s): set PRODUCER_METRICS_PORT to a free port",
            settings.metrics_host,
            settings.producer_metrics_port,
            exc.strerror,
        )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
    )
