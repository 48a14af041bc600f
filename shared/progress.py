"""Live progress counters in Redis: one hash per batch, incremented by workers
only when an item really changes from pending to an outcome.

Redis is never the only copy: every count can be recomputed from batch_items,
and without Redis (or while it is down) progress is read from the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import redis

log = logging.getLogger(__name__)
KEY_TTL_SECONDS = 7 * 24 * 3600


def key(namespace: str, batch_id: int) -> str:
    return f"batch-actions:{namespace}:batch:{batch_id}:progress"


class Progress(Protocol):
    def counts(self, batch_id: int) -> dict[str, int] | None:
        """Finished items by outcome label, or None when unknown."""

    def add(self, batch_id: int, label: str, n: int) -> None:
        """Count n items at once (cancel, freeze-time skips)."""

    def add_many(self, counts: dict[int, Counter]) -> dict[int, int] | None:
        """Count labels of several batches at once; return each batch's finished total."""


class NoProgress:
    def counts(self, batch_id: int) -> dict[str, int] | None:
        return None

    def add(self, batch_id: int, label: str, n: int) -> None:
        return None

    def add_many(self, counts: dict[int, Counter]) -> dict[int, int] | None:
        return None


class RedisProgress:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def add(self, batch_id: int, label: str, n: int) -> None:
        if n > 0:
            self.add_many({batch_id: Counter({label: n})})

    def add_many(self, counts: dict[int, Counter]) -> dict[int, int] | None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for batch_id, labels in counts.items():
                for label, n in labels.items():
                    pipe.hincrby(key(self.namespace, batch_id), label, n)
                pipe.hincrby(key(self.namespace, batch_id), "done", sum(labels.values()))
                pipe.expire(key(self.namespace, batch_id), KEY_TTL_SECONDS)
            replies = iter(pipe.execute())
        except redis.RedisError as exc:
            log.warning(
                "progress not counted in Redis (%s); the database has it", type(exc).__name__
            )
            return None
        done = {}
        for batch_id, labels in counts.items():
            for _ in labels:
                next(replies)
            done[batch_id] = int(next(replies))
            next(replies)
        return done

    def counts(self, batch_id: int) -> dict[str, int] | None:
        try:
            raw = self.client.hgetall(key(self.namespace, batch_id))
        except redis.RedisError:
            return None
        if not raw:
            return None
        # The client does not decode responses: field names come back as bytes.
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


class ProgressBuffer:
    """Per-process counts, sent to Redis in one pipeline every `interval`
    seconds by a background thread, instead of one round trip per learner.

    After each flush, `on_flushed(batch_id, done)` runs for every batch
    counted, so the flush that brings a batch to its total completes it. Counts
    not flushed when a process dies are lost from Redis only: the dispatcher
    completes a batch from the database once nothing is pending, and final
    counts are always recomputed from batch_items.
    """

    def __init__(
        self,
        progress: Progress,
        on_flushed: Callable[[int, int], None],
        interval: float = 0.1,
    ) -> None:
        self.progress = progress
        self.on_flushed = on_flushed
        self.interval = interval
        self.lock = threading.Lock()
        self.pending: dict[int, Counter] = {}
        self.thread: threading.Thread | None = None

    def record(self, batch_id: int, label: str) -> None:
        with self.lock:
            labels = self.pending.get(batch_id)
            if labels is None:
                labels = self.pending[batch_id] = Counter()
            labels[label] += 1
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="progress-flush", daemon=True)
                self.thread.start()

    def flush(self) -> None:
        with self.lock:
            counts, self.pending = self.pending, {}
        if not counts:
            return
        done = self.progress.add_many(counts) or {}
        for batch_id, finished in done.items():
            try:
                self.on_flushed(batch_id, finished)
            except Exception as exc:  # the dispatcher completes it from the database
                log.warning("batch %s: completion check failed: %s", batch_id, type(exc).__name__)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()
