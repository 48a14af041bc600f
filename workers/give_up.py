"""Giving up on a message: the batch item it names ends `failed`, with why.

The worker gives up on a message in three places: its retries are exhausted
or its failure is permanent (`workers.retries`), it keeps killing its worker
process (`workers.crash_loop`), or no actor can run it (`workers.poison`).
Each fails the item the message names at once, rather than leaving it
pending for the reconciler to republish the same doomed message.
"""

from __future__ import annotations

import logging

from dramatiq.common import q_name

from shared.contract import ITEM_ACTORS
from workers.errors import describe
from workers.items import Items

log = logging.getLogger(__name__)


def item_of(queue_name: str, args) -> tuple[int, int] | None:
    """(batch_id, learner_id) when a message on a batch action's queue names
    one; None for anything else (another queue, malformed arguments)."""
    if q_name(queue_name) not in ITEM_ACTORS or not isinstance(args, list | tuple):
        return None
    ids = args[:2]
    if len(ids) != 2 or not all(type(i) is int for i in ids):
        return None
    return ids[0], ids[1]


def fail_item(items: Items, queue_name: str, args, error: str) -> bool:
    """Mark the still-pending item a message names `failed`, if the message
    names one of a batch of that queue's action. True when it was marked."""
    item = item_of(queue_name, args)
    if item is None:
        return False
    batch_id, learner_id = item
    ctx = items.context(batch_id)
    if ctx is None or ctx.action != q_name(queue_name):
        return False
    return items.record_failure(batch_id, learner_id, error) is not None


def give_up(items: Items, queue_name: str, args, message_id: str, error: str) -> None:
    """`fail_item`, logging rather than raising when the database does not
    answer: the item stays pending, so the reconciler republishes it (or, in
    a crash loop, its next redelivery is counted and tries again)."""
    try:
        fail_item(items, queue_name, args, error)
    except Exception as exc:
        log.warning("could not record failure of %s: %s", message_id, describe(exc))
