"""Messages no actor can run: their items end `failed` instead of pending.

Dramatiq (2.x) dead-letters both kinds: an undecodable body is nacked
without requeue in the consumer, and a message for an actor this worker does
not know is failed and nacked. Neither reaches an actor or the other hooks,
so the item such a message names would stay pending until the reconciler
republished it, which repeats the poison for an unknown actor. Here the item
(when the message names one, of a batch of that queue's action, and is
signed when signing is on) ends `failed` with the reason, and the message
goes on to the dead letters for inspection.
"""

from __future__ import annotations

import json
import logging

import dramatiq
from dramatiq.middleware import Middleware

from shared.signing import SignMessages, verify
from workers.give_up import give_up
from workers.items import Items

log = logging.getLogger(__name__)


def trusted(broker: dramatiq.Broker, message: dramatiq.Message) -> bool:
    """With signing on, only a correctly signed message may decide an item's
    fate; a forged one is dead-lettered and its item left to the reconciler."""
    signers = [m for m in broker.middleware if isinstance(m, SignMessages)]
    return all(verify(signer.keys, message) is None for signer in signers)


class PoisonMessages(Middleware):
    """Fails the item of a message for an unknown actor (`before_nack`) or
    with an undecodable body (`malformed`, called by the worker's consumer,
    `workers.broker`, since Dramatiq runs no hook for it)."""

    def __init__(self, items: Items) -> None:
        self.items = items

    def before_nack(self, broker, message):
        if message.actor_name in broker.actors or not trusted(broker, message):
            return
        log.error("message %s names an unknown actor; dead-lettered", message.message_id)
        reason = f"unknown actor {str(message.actor_name)[:40]}"
        give_up(self.items, message.queue_name, message.args, message.message_id, reason)

    def malformed(self, broker: dramatiq.Broker, queue_name: str, body: bytes) -> None:
        """A body Dramatiq could not decode (it dead-letters it). If it is
        still a JSON message naming an item, and signed, fail that item."""
        log.error("undecodable message on %s; dead-lettered", queue_name)
        try:
            fields = json.loads(body)
            message: dramatiq.Message[object] = dramatiq.Message(
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
        if trusted(broker, message):
            give_up(self.items, queue_name, message.args, message.message_id, "malformed message")
