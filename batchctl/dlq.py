"""`batchctl dlq`: look at, replay and purge the dead-letter queues (`<queue>.XQ`).

Replaying a batch item's message reopens its item (failed -> pending, and a
completed batch back to running) before publishing it again, because a
message whose item is already finished would be acked without effect.
Replay re-signs what it publishes, so it first checks each dead letter's
own signature (current or previous key): a message the workers rejected as
unsigned or forged is never replayed (replaying it would make the forgery
valid), and neither is an unreadable body. Both stay until purged; `list`
shows which they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.batches import move_item
from shared.contract import ITEM_ACTORS, QUEUES
from shared.models import Batch, BatchStatus, ItemOutcome
from shared.publish import ConfirmedPublisher
from shared.signing import SignMessages, verify


def dead_letter_queue(queue: str) -> str:
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    return f"{queue}.XQ"


@dataclass
class DeadLetter:
    queue: str
    message: dramatiq.Message | None  # None: the body is not a Dramatiq message
    delivery_tag: int
    # None when correctly signed, else why not ("unsigned", "bad_signature").
    signature_problem: str | None = None

    @property
    def replayable(self) -> bool:
        return self.message is not None and self.signature_problem is None

    def describe(self) -> dict:
        if self.message is None:
            return {"queue": self.queue, "readable": False, "replayable": False}
        options = self.message.options if isinstance(self.message.options, dict) else {}
        return {
            "queue": self.queue,
            "readable": True,
            "replayable": self.replayable,
            "signature": self.signature_problem or "valid",
            "message_id": self.message.message_id,
            "actor": self.message.actor_name,
            "args": list(self.message.args),
            "retries": options.get("retries", 0),
        }


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=dict)
    replayed: int = 0
    reopened: int = 0
    unreadable: int = 0
    refused: int = 0  # readable, but not correctly signed
    purged: int = 0


@contextlib.contextmanager
def _channel(broker: RabbitmqBroker) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(broker.parameters)
    try:
        yield connection.channel()
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def _depth(channel, queue: str) -> int:
    try:
        return channel.queue_declare(queue=queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0


def counts(broker: RabbitmqBroker, queues: list[str]) -> dict[str, int]:
    result = {}
    for queue in queues:
        with _channel(broker) as channel:  # a missing queue closes the channel
            result[dead_letter_queue(queue)] = _depth(channel, dead_letter_queue(queue))
    return result


def signing_keys(broker: dramatiq.Broker) -> list[str]:
    """The keys the workers accept; none (so nothing verifies) without signing."""
    return [key for m in broker.middleware if isinstance(m, SignMessages) for key in m.keys]


def _take(channel, queue: str, limit: int, keys: list[str]) -> list[DeadLetter]:
    taken: list[DeadLetter] = []
    while len(taken) < limit:
        method, _properties, body = channel.basic_get(dead_letter_queue(queue), auto_ack=False)
        if method is None:
            break
        try:
            message = dramatiq.Message.decode(body)
        except Exception:
            message = None
        problem = None if message is None else verify(keys, message)
        taken.append(DeadLetter(queue, message, method.delivery_tag, problem))
    return taken


def peek(broker: RabbitmqBroker, queue: str, limit: int = 20) -> list[DeadLetter]:
    """The first `limit` dead letters, left where they are."""
    with _channel(broker) as channel:
        letters = _take(channel, queue, limit, signing_keys(broker))
        if letters:
            channel.basic_nack(letters[-1].delivery_tag, multiple=True, requeue=True)
    return letters


def _reopen(sessions: sessionmaker[Session], batch_id: int, learner_id: int) -> bool:
    with sessions() as session, session.begin():
        reopened = move_item(
            session,
            batch_id,
            learner_id,
            ItemOutcome.FAILED,
            outcome=ItemOutcome.PENDING,
            reason=None,
            error=None,
            finished_at=None,
        )
        if reopened:
            session.connection().execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.status == BatchStatus.COMPLETED)
                .values(status=BatchStatus.RUNNING, finished_at=None)
            )
    return bool(reopened)


def replay(
    broker: RabbitmqBroker,
    sessions: sessionmaker[Session],
    queue: str,
    limit: int = 1000,
    dry_run: bool = False,
) -> Report:
    """Publish up to `limit` correctly signed dead letters of `queue` again
    (confirmed), then remove them from the dead-letter queue; unreadable and
    badly signed ones stay. With `dry_run`, only count."""
    report = Report()
    publisher = ConfirmedPublisher(broker)
    try:
        with _channel(broker) as channel:
            letters = _take(channel, queue, limit, signing_keys(broker))
            keep = [d for d in letters if not d.replayable or dry_run]
            report.unreadable = sum(d.message is None for d in letters)
            report.refused = sum(d.message is not None and not d.replayable for d in letters)
            for letter in letters:
                if letter in keep:
                    continue
                message = letter.message
                assert message is not None  # replayable, or it would be in `keep`
                if message.actor_name in ITEM_ACTORS:
                    report.reopened += _reopen(sessions, *message.args[:2])
                fresh: dramatiq.Message[object] = dramatiq.Message(
                    queue_name=queue,
                    actor_name=message.actor_name,
                    args=message.args,
                    kwargs=message.kwargs,
                    options={},
                )
                publisher.publish([fresh])
                channel.basic_ack(letter.delivery_tag)
                report.replayed += 1
            if dry_run:
                report.replayed = len(letters) - report.unreadable - report.refused
            for letter in keep:
                channel.basic_nack(letter.delivery_tag, requeue=True)
    finally:
        publisher.close()
    return report


def purge(broker: RabbitmqBroker, queue: str, dry_run: bool = False) -> int:
    """Drop every dead letter of `queue`; return how many there were."""
    with _channel(broker) as channel:
        if dry_run:
            return _depth(channel, dead_letter_queue(queue))
        return channel.queue_purge(dead_letter_queue(queue)).method.message_count
