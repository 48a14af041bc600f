"""The embedded mode's background work: workers and reconciler in the producer.

Without BROKER_URL the broker is in memory, so it exists only inside one
process: a `batchctl worker` or `reconcile` started beside `serve` would have
a broker of its own and never see a message. `batchctl serve` therefore runs
a Dramatiq worker and the reconciler in its own process, on its own runtime
(`workers.runtime.start_worker`), and one command is a complete system.
"""

from __future__ import annotations

import threading

import dramatiq

from shared.publish import publisher_for
from workers import reconcile
from workers.runtime import WorkerRuntime

# SQLite has one writer at a time: more threads would mostly wait on it.
WORKER_THREADS = 2
STOP_TIMEOUT_MS = 10_000


class Embedded:
    """A Dramatiq worker and a reconciler thread on one runtime's in-memory broker."""

    def __init__(self, runtime: WorkerRuntime, worker_threads: int = WORKER_THREADS) -> None:
        self.worker = dramatiq.Worker(runtime.broker, worker_threads=worker_threads)
        self.stopping = threading.Event()
        self.publisher = publisher_for(runtime.broker)
        self.reconciler = threading.Thread(
            target=reconcile.run,
            args=(
                runtime.sessions,
                self.publisher,
                runtime.settings,
                runtime.mailer,
                self.stopping,
            ),
            name="reconciler",
            daemon=True,
        )

    def start(self) -> None:
        self.worker.start()
        self.reconciler.start()

    def stop(self) -> None:
        """Let the learners being worked on finish, then stop both."""
        self.stopping.set()
        self.worker.stop(timeout=STOP_TIMEOUT_MS)
        self.reconciler.join(timeout=STOP_TIMEOUT_MS / 1000)
        self.publisher.close()

    def problems(self) -> dict[str, str]:
        """For `/readyz`: which part has stopped, if any."""
        parts = {
            "worker": [*self.worker.consumers.values(), *self.worker.workers],
            "reconciler": [self.reconciler],
        }
        return {
            name: "stopped"
            for name, threads in parts.items()
            if not threads or not all(thread.is_alive() for thread in threads)
        }
