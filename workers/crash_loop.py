"""Crash loops: a message that kills its worker process every time it is
run is given up on (`CrashLoopGuard`); a suspect runs alone (`_Gate`)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import redis
from dramatiq.middleware import Middleware, SkipMessage

from shared.contract import LEARNER_ACTORS
from workers.give_up import give_up

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

DELIVERY_KEY_TTL_SECONDS = 24 * 3600


class _Gate:
    """Messages share their worker process; a suspect runs alone. New
    messages wait while a suspect waits, so it is never starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._alone = False
        self._waiting = 0

    def enter(self, alone: bool) -> None:
        with self._cond:
            if alone:
                self._waiting += 1
                try:
                    while self._alone or self._shared:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._alone = True
            else:
                while self._alone or self._waiting:
                    self._cond.wait()
                self._shared += 1

    def leave(self, alone: bool) -> None:
        with self._cond:
            if alone:
                self._alone = False
            else:
                self._shared -= 1
            self._cond.notify_all()


class CrashLoopGuard(Middleware):
    """A message that kills its worker process is never acked, so RabbitMQ
    redelivers it forever (dramatiq#213). Redeliveries are counted in Redis
    when they start, per item (per message for other actors), so a copy the
    reconciler republishes adds to the same count; at MAX_DELIVERIES the item
    ends `failed` and the message is dead-lettered instead of run again.

    Every message running in the process when it died is redelivered, not
    only the culprit. So a message that was already redelivered once and
    comes back again runs alone in its process: if it is the culprit, it
    dies without taking innocent messages with it, and their counts stay
    low. First deliveries cost a lock and no Redis call; without Redis
    nothing is counted on classic queues (and a crash loop lasts until Redis
    is back).

    On quorum queues (QUEUE_TYPE=quorum) RabbitMQ counts too: the guard also
    reads the message's `x-delivery-count`, so it gives up at MAX_DELIVERIES
    without Redis, and the queue's `x-delivery-limit` (MAX_DELIVERIES, set by
    `shared.broker`) dead-letters the message one delivery later if the guard
    never got to run it. Redis still counts per item, which carries the count
    over to copies the reconciler republishes (a new message starts at 0)."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self._gate = _Gate()
        self._held = threading.local()

    def _client(self) -> redis.Redis | None:
        return self.runtime.redis

    def key(self, message) -> str:
        args = message.args
        if isinstance(args, list | tuple) and args and all(type(a) is int for a in args):
            subject = ":".join(str(a) for a in args)
        else:
            subject = message.message_id
        return self.runtime.key("crashes", message.actor_name, subject)

    def _earlier(self, key: str) -> int | None:
        """Counted starts of this item so far; None when Redis does not answer."""
        client = self._client()
        if client is None:
            return None
        try:
            return int(client.get(key) or 0)
        except redis.RedisError:
            return None

    def _count(self, key: str) -> None:
        client = self._client()
        if client is None:  # no Redis: nothing to count in (and nothing was read)
            return
        try:
            pipe = client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, DELIVERY_KEY_TTL_SECONDS)
            pipe.execute()
        except redis.RedisError:
            pass

    def before_process_message(self, broker, message):
        key, earlier = None, None
        if getattr(message, "redelivered", False) and message.actor_name in LEARNER_ACTORS:
            key = self.key(message)
            earlier = self._earlier(key)
            # Quorum queues count deliveries themselves (`workers.broker`):
            # this message's earlier redeliveries, with or without Redis.
            delivered = getattr(message, "delivery_count", None)
            if delivered:
                earlier = max(earlier or 0, delivered - 1)
        if earlier is not None and earlier + 1 >= self.runtime.settings.max_deliveries:
            self._count(key)
            self._give_up(message, earlier + 1)
        alone = bool(earlier)
        self._gate.enter(alone)
        self._held.alone = alone
        if earlier is not None:
            self._count(key)

    def _give_up(self, message, deliveries: int) -> None:
        log.error(
            "message %s of %s was redelivered %d times; giving up",
            message.message_id,
            message.actor_name,
            deliveries,
        )
        reason = f"crashed its worker {deliveries} times"
        give_up(self.runtime.items, message.queue_name, message.args, message.message_id, reason)
        message.fail()
        raise SkipMessage("crash loop")

    def _release(self) -> None:
        alone = getattr(self._held, "alone", None)
        if alone is not None:
            self._held.alone = None
            self._gate.leave(alone)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self._release()

    def after_skip_message(self, broker, message):
        self._release()
