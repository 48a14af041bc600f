"""Worker middleware: retry policy, crash loops, poison messages, and the
bookkeeping around each message. Dramatiq runs after-hooks in reverse order
of the list, which `install` accounts for."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import q_name
from dramatiq.errors import DecodeError
from dramatiq.middleware import Middleware, Retries, SkipMessage

from shared.contract import ITEM_ACTORS, LEARNER_ACTORS
from shared.progress import get_redis, namespace
from shared.settings import get_settings
from shared.signing import SignMessages, verify
from workers.acks import queue_acks
from workers.errors import describe, is_transient

log = logging.getLogger(__name__)

DELIVERY_KEY_TTL_SECONDS = 24 * 3600


def should_retry(retries: int, exception: BaseException) -> bool:
    """Transient failures retry with exponential backoff (RETRY_MIN_BACKOFF_MS
    doubling to RETRY_MAX_BACKOFF_MS) up to RETRY_MAX times; permanent ones
    never reach this policy (the actor raises PermanentFailure, a `throws`)."""
    return retries < get_settings().retry_max and is_transient(exception)


def item_of(queue_name: str, args) -> tuple[int, int] | None:
    """(batch_id, learner_id) when a message on a batch action's queue names
    one; None for anything else (another queue, malformed arguments)."""
    if q_name(queue_name) not in ITEM_ACTORS or not isinstance(args, list | tuple):
        return None
    ids = args[:2]
    if len(ids) != 2 or not all(type(i) is int for i in ids):
        return None
    return ids[0], ids[1]


def fail_item(queue_name: str, args, error: str) -> bool:
    """Mark the still-pending item a message names `failed`, if the message
    names one of a batch of that queue's action. True when it was marked."""
    item = item_of(queue_name, args)
    if item is None:
        return False
    from workers.items import _context, record_failure

    batch_id, learner_id = item
    ctx = _context(batch_id)
    if ctx is None or ctx.action != q_name(queue_name):
        return False
    return record_failure(batch_id, learner_id, error) is not None


def trusted(broker: dramatiq.Broker, message: dramatiq.Message) -> bool:
    """With signing on, only a correctly signed message may decide an item's
    fate; a forged one is dead-lettered and its item left to the reconciler."""
    signers = [m for m in broker.middleware if isinstance(m, SignMessages)]
    return all(verify(signer.keys, message) is None for signer in signers)


class ScrubTraceback(Middleware):
    """Retries stores the traceback in the message it republishes; driver
    errors can quote row values (an email), and messages carry ids only."""

    def before_enqueue(self, broker, message, delay):
        message.options.pop("traceback", None)


class FailExhaustedItems(Middleware):
    """When a batch item's message is given up on (retries exhausted, or a
    failure not worth retrying), its item ends `failed` with the reason,
    and the message goes on to the dead-letter queue."""

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None or not message.failed or message.actor_name not in ITEM_ACTORS:
            return
        try:
            fail_item(message.queue_name, message.args, f"gave up: {describe(exception)}")
        except Exception as exc:  # the reconciler will republish the item
            log.warning("could not record failure of %s: %s", message.message_id, describe(exc))


class PoisonMessages(Middleware):
    """Messages no actor can run. Dramatiq (2.x) dead-letters both kinds:
    an undecodable body is nacked without requeue in the consumer, and a
    message for an actor this worker does not know is failed and nacked.
    Neither reaches an actor or the other hooks, so the item such a message
    names would stay pending until the reconciler republished it, which
    repeats the poison for an unknown actor. Here the item (when the message
    names one, of a batch of that queue's action, and is signed when signing
    is on) ends `failed` with the reason, and the message goes on to the
    dead letters for inspection."""

    def before_nack(self, broker, message):
        if message.actor_name in broker.actors or not trusted(broker, message):
            return
        log.error("message %s names an unknown actor; dead-lettered", message.message_id)
        reason = f"unknown actor {str(message.actor_name)[:40]}"
        try:
            fail_item(message.queue_name, message.args, reason)
        except Exception as exc:
            log.warning("could not record failure of %s: %s", message.message_id, describe(exc))

    @staticmethod
    def malformed(broker: dramatiq.Broker, queue_name: str, body: bytes) -> None:
        """A body Dramatiq cannot decode (it dead-letters it next). If it is
        still a JSON message naming an item, and signed, fail that item."""
        log.error("undecodable message on %s; dead-lettered", queue_name)
        try:
            fields = json.loads(body)
            message = dramatiq.Message(
                queue_name=queue_name,
                actor_name=fields["actor_name"],
                args=tuple(fields["args"]),
                kwargs=fields.get("kwargs") or {},
                options=fields.get("options") or {},
                message_id=fields["message_id"],
                message_timestamp=fields["message_timestamp"],
            )
        except Exception:
            return  # nothing in it names an item
        if not trusted(broker, message):
            return
        try:
            fail_item(queue_name, message.args, "malformed message")
        except Exception as exc:
            log.warning("could not record failure of %s: %s", message.message_id, describe(exc))


def _screen(broker: dramatiq.Broker, queue_name: str, deliveries: Iterator) -> Iterator:
    """Pass the consumer's deliveries through, noticing undecodable bodies
    before Dramatiq's consumer logs and dead-letters them."""
    for delivery in deliveries:
        method, _properties, body = delivery
        if method is not None:  # None: the consumer's idle tick
            try:
                dramatiq.Message.decode(body)
            except DecodeError:
                PoisonMessages.malformed(broker, queue_name, body)
        yield delivery


def screen_undecodable(broker: RabbitmqBroker) -> None:
    """Wrap the broker's consumers (Dramatiq 2.x `_RabbitmqConsumer.iterator`,
    the pika delivery generator) with `_screen`."""
    consume = broker.consume

    def screened(queue_name: str, prefetch: int = 1, timeout: int = 5000):
        consumer = consume(queue_name, prefetch=prefetch, timeout=timeout)
        if hasattr(consumer, "iterator"):
            consumer.iterator = _screen(broker, queue_name, consumer.iterator)
        return consumer

    broker.consume = screened


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
    nothing is counted (and a crash loop lasts until Redis is back)."""

    def __init__(self) -> None:
        self._gate = _Gate()
        self._held = threading.local()
        self._redis: redis.Redis | None = None

    def _client(self) -> redis.Redis | None:
        if self._redis is None:
            self._redis = get_redis()
        return self._redis

    @staticmethod
    def key(message) -> str:
        args = message.args
        if isinstance(args, list | tuple) and args and all(type(a) is int for a in args):
            subject = ":".join(str(a) for a in args)
        else:
            subject = message.message_id
        return f"batch-actions:{namespace()}:crashes:{message.actor_name}:{subject}"

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
        try:
            pipe = self._client().pipeline(transaction=False)
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
        if earlier is not None and earlier + 1 >= get_settings().max_deliveries:
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
        try:
            fail_item(message.queue_name, message.args, f"crashed its worker {deliveries} times")
        except Exception as exc:  # still pending: counted again on its next redelivery
            log.warning("could not record failure of %s: %s", message.message_id, describe(exc))
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


def install(broker: dramatiq.Broker) -> None:
    """Add the worker-side middleware. FailExhaustedItems goes *before*
    Retries in the list, so its after-hook runs after Retries has set the
    message's failed flag."""
    settings = get_settings()
    broker.add_middleware(CrashLoopGuard())
    broker.add_middleware(FailExhaustedItems())
    broker.add_middleware(PoisonMessages())
    broker.add_middleware(
        Retries(
            max_retries=settings.retry_max,
            min_backoff=settings.retry_min_backoff_ms,
            max_backoff=settings.retry_max_backoff_ms,
        )
    )
    broker.add_middleware(ScrubTraceback())
    if isinstance(broker, RabbitmqBroker):
        screen_undecodable(broker)
        queue_acks(broker)
