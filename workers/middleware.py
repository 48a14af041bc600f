"""The worker's middleware, in order. Each concern has its own module:
retries (`workers.retries`), crash loops (`workers.crash_loop`), poison
messages (`workers.poison`); the metrics come first (`workers.metrics`).

The order matters because Dramatiq runs before-hooks in list order and
after-hooks in reverse:

- `FailExhaustedItems` comes before `Retries`, so its after-hook runs after
  Retries' has set the message's failed flag (and so do the metrics').
- `CrashLoopGuard` comes first of ours: its before-hook (which may hold a
  message back to run alone, or skip it) runs before theirs, and its
  after-hook (which lets held-back messages in) after theirs, so a suspect's
  failure is recorded before another message starts.
- `ScrubTraceback` acts on `before_enqueue` only, when Retries republishes
  a message; its place does not matter.

`shared.broker.build_broker` puts `SignMessages` and `TimeLimit` ahead of
all of these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.crash_loop import CrashLoopGuard
from workers.poison import PoisonMessages
from workers.retries import FailExhaustedItems, ScrubTraceback, retries

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime


def install(runtime: WorkerRuntime) -> None:
    """Add the worker-side middleware to the runtime's broker, after
    `workers.metrics.install`."""
    for middleware in (
        CrashLoopGuard(runtime),
        FailExhaustedItems(runtime.items),
        PoisonMessages(runtime.items),
        retries(runtime.settings),
        ScrubTraceback(),
    ):
        runtime.broker.add_middleware(middleware)
