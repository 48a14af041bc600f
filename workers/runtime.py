"""A worker process: its runtime, middleware and actors, wired at start-up.

`batchctl worker` runs Dramatiq (`workers/dramatiq_cli.py`) on
`workers.runtime:start_worker`; Dramatiq calls `start_worker` in each worker
process before it consumes, so nothing is wired as a side effect of an import.
The embedded mode (`batchctl serve` and `demo` without BROKER_URL) calls it in
its own process.
"""

from __future__ import annotations

from functools import cached_property

import dramatiq

from shared import redaction, runtime
from shared.runtime import Runtime
from shared.settings import Settings
from workers import actors, log_context, metrics, middleware
from workers.broker import WorkerBroker
from workers.items import Items
from workers.mail import InvitationSender


class WorkerRuntime(Runtime):
    """A worker process's runtime: the shared connections, the hot path's
    per-process state (`items`) and the invitation sender (`mailer`)."""

    rabbitmq_class = WorkerBroker

    def default_pool(self) -> tuple[int, int]:
        """Its threads run the hot path on connections of their own
        (`workers.statements.connections_for`); the pool serves the rare paths
        (a batch's context, a failure, completing a batch, webhooks), so that a
        worker process holds its threads + 2 connections, not threads + 10 to
        30. In the embedded mode (no BROKER_URL) the process serves the API
        too, and keeps the producer's pool."""
        return (2, 0) if self.settings.broker_url else super().default_pool()

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.items = Items(self)
        self.actors: dict[str, dramatiq.Actor] = {}

    @cached_property
    def mailer(self) -> InvitationSender:
        return InvitationSender(self.sessions, self.settings, self.redis, self.progress)


def start_worker(settings: Settings | None = None) -> WorkerRuntime:
    """Build this process's worker runtime and declare its actors on its broker."""
    worker = runtime.start(settings, kind=WorkerRuntime)
    # Under `dramatiq`, logging is set up by the time this runs.
    redaction.install("dramatiq")
    metrics.install(worker.broker)
    middleware.install(worker)
    log_context.install(worker.broker)
    worker.actors = actors.declare(worker)
    return worker
