"""Every line a worker logs while it handles a message names the message's
batch and learner (shared/logs.py): Dramatiq's own per-message lines
("Received args=...", "Completed after ...", a failure's traceback) and ours.
The ids come from the actor's own arguments (`batch_id`, `learner_id`),
never from anything else in the message."""

from __future__ import annotations

import inspect
from typing import Any

import dramatiq
from dramatiq import Middleware
from dramatiq.broker import MessageProxy

from shared import logs


def message_ids(broker: dramatiq.Broker, message: MessageProxy) -> dict[str, int | None]:
    """The message's `batch_id` and `learner_id` arguments (None where its actor has none)."""
    ids: dict[str, int | None] = dict.fromkeys(logs.IDS)
    try:
        fn = broker.get_actor(message.actor_name).fn
        bound = inspect.signature(fn).bind_partial(*message.args, **message.kwargs).arguments
    except (dramatiq.ActorNotFound, TypeError):
        return ids
    for name in ids:
        if isinstance(bound.get(name), int):
            ids[name] = bound[name]
    return ids


class LogContext(Middleware):
    """Put the message's ids on its worker thread's log records while it runs."""

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        logs.bind(**message_ids(broker, message))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        logs.bind(**dict.fromkeys(logs.IDS))

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        logs.bind(**dict.fromkeys(logs.IDS))


def install(broker: dramatiq.Broker) -> None:
    """First of all middleware: its ids are set before any other's before-hook
    and cleared after every other's after-hook."""
    first = type(broker.middleware[0]) if broker.middleware else None
    broker.add_middleware(LogContext(), before=first)
