"""Dispatch: turn a frozen batch into per-learner messages, a window at a time.

At most `window` items of a batch are published and unfinished at once. Each
step counts that batch's in-flight items (pending with learner_id at or below
the cursor: an index range of at most `window` rows), publishes the next
pending items by keyset, waits for RabbitMQ's confirms, and only then moves
the cursor. A crash before the cursor moves republishes those items, which
the workers' claim makes harmless. The batch row is locked with SKIP LOCKED,
so any number of producers and reconcilers can run steps side by side.

`DISPATCH_WINDOW` bounds the window. On quorum queues, which have no
priorities, the producer's loop sizes it in time within that bound (`Pace`):
about `WINDOW_SECONDS` of the batch's own work, so that a batch published
after it waits a fraction of a second at any rate, not a whole window.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import dramatiq
from dramatiq.common import current_millis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.audit import record_finished_items
from shared.batches import cancel_step, complete_if_finished
from shared.broker import QUORUM, SMALL_BATCH_PRIORITY
from shared.db import now
from shared.metrics import messages_published
from shared.models import PENDING_ITEM, Batch, BatchItem, BatchStatus
from shared.publish import Publisher, PublishError

log = logging.getLogger(__name__)
# What the producer's loop keeps in flight per batch on quorum queues: this
# many seconds of the batch's recent rate (`Pace`), within DISPATCH_WINDOW.
WINDOW_SECONDS = 0.25
# The rate is averaged over about this long: a pass every 0.1 s sees a few
# dozen learners finish, too few to size a window from one pass.
RATE_SECONDS = 1.0
# A paced window never goes below this (nor above DISPATCH_WINDOW): a slow
# action's few learners a second still get a refill's worth a pass.
MIN_WINDOW = 100


def item_message(
    action: str, batch_id: int, learner_id: int, priority: int = 0
) -> dramatiq.Message:
    options = {"broker_priority": priority} if priority else {}
    return dramatiq.Message(
        queue_name=action,
        actor_name=action,
        args=(batch_id, learner_id),
        kwargs={},
        options=options,
        message_id=random_uuid(),
        message_timestamp=current_millis(),
    )


def random_uuid() -> str:
    """A random (version 4) UUID's text, as Dramatiq's `str(uuid.uuid4())`
    gives it, at half the cost (5.6 against 12.4 us timed on the busy bench
    machine): that builds a UUID object (an int from the bytes, the version
    bits set arithmetically) and formats it, and was half the time of making
    an item's message."""
    h = os.urandom(16).hex()
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def priority_for(total: int, window: int) -> int:
    """A batch that fits in one window is published ahead of bigger ones.

    A big batch keeps its window full for as long as it runs; a small batch
    behind it would wait for up to a window of messages (about a second at
    this machine's rate, more on a busy pool). With RabbitMQ priority it waits
    only for what the workers have already prefetched. Small batches drain
    within one window, so they cannot starve a big one for long."""
    return SMALL_BATCH_PRIORITY if total <= window else 0


def _lock_batch(session: Session, batch_id: int):
    query = select(Batch.id, Batch.action, Batch.status, Batch.total, Batch.dispatch_cursor).where(
        Batch.id == batch_id
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return session.execute(query).first()


def _in_flight(session: Session, batch_id: int, cursor: int) -> int:
    count = session.scalar(
        select(func.count()).where(
            BatchItem.batch_id == batch_id,
            PENDING_ITEM,
            BatchItem.learner_id <= cursor,
        )
    )
    return count or 0  # count(*) always answers a row; 0 for the type checker's None


def refill_size(window: int) -> int:
    """Top a window up by at least a quarter of it. A pass costs a few queries
    and a confirm round trip whatever it publishes; refilling every few
    learners would spend more on passes than on messages. The in-flight count
    stays between 7/10 of the window and the window less its headroom."""
    return max(1, window // 4)


def headroom(window: int) -> int:
    """Part of the window kept free for messages whose learner is finished but
    not yet acknowledged: a worker acks after its actor returns, and an
    invitation's actor sends the email first. Counting pending items alone,
    the queue would hold the window plus those; keeping 1/20 of the window
    free keeps RabbitMQ's depth within the window with up to that many worker
    threads (100 for the default window of 2,000)."""
    return window // 20


class _Seen:
    __slots__ = ("at", "cursor", "in_flight", "rate")

    def __init__(self, at: float, cursor: int, in_flight: int) -> None:
        self.at, self.cursor, self.in_flight = at, cursor, in_flight
        self.rate: float | None = None


class Pace:
    """What one dispatcher remembers of each running batch between its passes,
    to size the batch's window in time rather than in messages.

    On a queue without priorities (quorum queues on RabbitMQ 3.x) a small
    batch waits behind every message published before it: a window of 2,000
    is one second at 2,000 learners/s, three at a busy machine's 700/s. The
    batch's rate is measured from its own in-flight count, which falls by the
    learners finished since the last pass, and the window is `seconds` of it
    (at least two passes' worth, so a slow pass never starves the queue;
    never more than `DISPATCH_WINDOW`). Several batches on one queue each
    keep `seconds` of their own share, so together they keep `seconds` of
    the queue's. A batch first seen starts at `MIN_WINDOW`, and a window the
    workers nearly emptied between two passes doubles: the rate measured then
    is the window's, not the workers', and would keep the window as small.

    A batch whose cursor another dispatcher moved since this one's last pass
    is left to that one for this pass: a second producer, or the reconciler
    (`seconds=None`: a whole window for a batch nobody moved between two of
    its passes, as when the producer is down), would otherwise top the window
    up to `DISPATCH_WINDOW` every pass."""

    def __init__(self, seconds: float | None = WINDOW_SECONDS) -> None:
        self.seconds = seconds
        self.seen: dict[int, _Seen] = {}

    def window(self, batch_id: int, cursor: int, in_flight: int, most: int) -> int:
        """The batch's window for this pass, at most `most`; 0 leaves it alone."""
        at = time.monotonic()
        seen = self.seen.get(batch_id)
        self.seen[batch_id] = now_seen = _Seen(at, cursor, in_flight)
        if seen is None:
            return 0 if self.seconds is None else min(most, MIN_WINDOW)
        if seen.cursor != cursor:
            return 0
        now_seen.rate = seen.rate
        elapsed = at - seen.at
        if self.seconds is None or elapsed <= 0:
            return most
        rate = max(0, seen.in_flight - in_flight) / elapsed
        weight = min(1.0, elapsed / RATE_SECONDS)
        now_seen.rate = rate if seen.rate is None else seen.rate + weight * (rate - seen.rate)
        wanted = now_seen.rate * max(self.seconds, 2 * elapsed)
        if in_flight < seen.in_flight // 4:  # the queue ran nearly dry
            wanted = max(wanted, 2 * seen.in_flight)
        return max(min(most, MIN_WINDOW), min(most, round(wanted)))

    def published(self, batch_id: int, cursor: int, in_flight: int) -> None:
        """After this dispatcher published up to `cursor`: its own move."""
        seen = self.seen.get(batch_id)
        if seen is not None:
            seen.cursor, seen.in_flight = cursor, in_flight

    def forget_all_but(self, batch_ids: set[int]) -> None:
        for batch_id in self.seen.keys() - batch_ids:
            del self.seen[batch_id]


def pace_for(queue_type: str, seconds: float | None = WINDOW_SECONDS) -> Pace | None:
    """A dispatcher's `Pace`, or None for whole windows. Only queues without
    priorities need one: on classic queues a small batch overtakes the big
    batches' windows (`priority_for`), and whole windows keep the backlog
    KEDA scales the workers on (docs/OPERATIONS.md, "Scaling")."""
    return Pace(seconds) if queue_type == QUORUM else None


def dispatch_step(
    session_factory: sessionmaker[Session],
    batch_id: int,
    publisher: Publisher,
    window: int,
    pace: Pace | None = None,
) -> int:
    """Top the batch's window up; return how many messages were published.
    Completes the batch when nothing is pending any more. `window` is
    DISPATCH_WINDOW; `pace`, the dispatcher's memory of the batch, may size
    it down (`Pace`)."""
    with session_factory() as session, session.begin():
        batch = _lock_batch(session, batch_id)
        if batch is None or batch.status != BatchStatus.RUNNING:
            return 0
        record_finished_items(session, batch_id)
        in_flight = _in_flight(session, batch_id, batch.dispatch_cursor)
        most = window
        if pace is not None:
            window = pace.window(batch_id, batch.dispatch_cursor, in_flight, most)
        room = window - headroom(window) - in_flight
        if room <= 0 or (in_flight and room < refill_size(window)):
            return 0
        learner_ids = session.scalars(
            select(BatchItem.learner_id)
            .where(
                BatchItem.batch_id == batch_id,
                PENDING_ITEM,
                BatchItem.learner_id > batch.dispatch_cursor,
            )
            .order_by(BatchItem.learner_id)
            .limit(room)
        ).all()
        if not learner_ids:
            complete_if_finished(session, batch_id)
            return 0
        priority = priority_for(batch.total, most)
        publisher.publish(
            [item_message(batch.action, batch_id, lid, priority) for lid in learner_ids]
        )
        messages_published().labels(batch.action).inc(len(learner_ids))
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(dispatch_cursor=learner_ids[-1], dispatched_at=now())
        )
        if pace is not None:
            pace.published(batch_id, learner_ids[-1], in_flight + len(learner_ids))
        return len(learner_ids)


def republish_stale(
    session_factory: sessionmaker[Session],
    batch_id: int,
    publisher: Publisher,
    window: int,
    stale_after: timedelta,
) -> int:
    """Publish again the in-flight items of a batch that has made no dispatch
    progress for `stale_after`: their messages may be lost. Duplicates are
    harmless; the claim lets only one of them act."""
    with session_factory() as session, session.begin():
        batch = _lock_batch(session, batch_id)
        if batch is None or batch.status != BatchStatus.RUNNING:
            return 0
        dispatched_at = session.scalar(select(Batch.dispatched_at).where(Batch.id == batch_id))
        if dispatched_at is None:
            return 0
        if dispatched_at.tzinfo is None:  # SQLite hands back naive UTC
            dispatched_at = dispatched_at.replace(tzinfo=now().tzinfo)
        if now() - dispatched_at < stale_after:
            return 0
        learner_ids = session.scalars(
            select(BatchItem.learner_id).where(
                BatchItem.batch_id == batch_id,
                PENDING_ITEM,
                BatchItem.learner_id <= batch.dispatch_cursor,
            )
        ).all()
        if learner_ids:
            priority = priority_for(batch.total, window)
            publisher.publish(
                [item_message(batch.action, batch_id, lid, priority) for lid in learner_ids]
            )
            messages_published().labels(batch.action).inc(len(learner_ids))
            log.info("batch %s: republished %d stale items", batch_id, len(learner_ids))
        session.execute(update(Batch).where(Batch.id == batch_id).values(dispatched_at=now()))
        return len(learner_ids)


def active_batches(session_factory: sessionmaker[Session]) -> list[tuple[int, str]]:
    with session_factory() as session:
        return [
            (row.id, row.status)
            for row in session.execute(
                select(Batch.id, Batch.status)
                .where(Batch.status.in_((BatchStatus.RUNNING, BatchStatus.CANCELLING)))
                .order_by(Batch.id)
            )
        ]


def tick(
    session_factory: sessionmaker[Session],
    publisher: Publisher,
    window: int,
    stale_after: timedelta | None = None,
    pace: Pace | None = None,
) -> int:
    """One pass over every active batch: refill windows, advance cancels,
    complete finished batches and (for the reconciler) republish stale items.
    `pace` is the dispatcher's memory of the batches across passes (`Pace`)."""
    published = 0
    batches = active_batches(session_factory)
    if pace is not None:
        pace.forget_all_but({batch_id for batch_id, _ in batches})
    for batch_id, status in batches:
        try:
            if status == BatchStatus.CANCELLING:
                with session_factory() as session, session.begin():
                    cancel_step(session, batch_id)
                continue
            published += dispatch_step(session_factory, batch_id, publisher, window, pace)
            if stale_after is not None:
                published += republish_stale(
                    session_factory, batch_id, publisher, window, stale_after
                )
        except PublishError as exc:
            log.warning("batch %s: dispatch will retry: %s", batch_id, exc)
    return published


class DispatchLoop(threading.Thread):
    """Runs `tick` until stopped: the producer's background dispatcher; with a
    `pace` (quorum queues, `pace_for`) it sizes every batch's window in time."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        make_publisher: Callable[[], Publisher],
        window: int,
        interval: float = 0.1,
        stale_after: timedelta | None = None,
        pace: Pace | None = None,
    ) -> None:
        super().__init__(name="dispatch-loop", daemon=True)
        self.session_factory = session_factory
        self.make_publisher = make_publisher
        self.window = window
        self.interval = interval
        self.stale_after = stale_after
        self.pace = pace
        self.stopping = threading.Event()
        self.woken = threading.Event()

    def run(self) -> None:
        publisher = self.make_publisher()
        try:
            while not self.stopping.is_set():
                try:
                    busy = tick(
                        self.session_factory, publisher, self.window, self.stale_after, self.pace
                    )
                except Exception:  # keep dispatching whatever one pass hit
                    log.exception("dispatch pass failed")
                    busy = 0
                if not busy:
                    self.woken.wait(self.interval)
                    self.woken.clear()
        finally:
            publisher.close()

    def wake(self) -> None:
        """Run a pass now: a batch was submitted or cancelled."""
        self.woken.set()

    def stop(self) -> None:
        self.stopping.set()
        self.woken.set()
