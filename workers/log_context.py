"""Every line a worker logs while it handles a message names the message's
batch and learner (shared/logs.py): Dramatiq's own per-message lines
("Received args=...", "Completed after ...", a failure's traceback) and ours.
The ids come from the actor's own arguments (`batch_id`, `learner_id`),
never from anything else in the message."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Any

import dramatiq
from dramatiq import Middleware
from dramatiq.broker import MessageProxy

from shared import logs

POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@cache
def id_positions(fn: Callable[..., Any]) -> dict[str, int]:
    """Where the actor takes each id among its positional parameters. Once
    per actor: `inspect.signature` on every message was 9% of a worker's
    time on add_to_group."""
    names = [p.name for p in inspect.signature(fn).parameters.values() if p.kind in POSITIONAL]
    return {name: names.index(name) for name in logs.IDS if name in names}


def message_ids(broker: dramatiq.Broker, message: MessageProxy) -> dict[str, int | None]:
    """The message's `batch_id` and `learner_id` arguments (None where its actor has none)."""
    ids: dict[str, int | None] = dict.fromkeys(logs.IDS)
    try:
        positions = id_positions(broker.get_actor(message.actor_name).fn)
    except dramatiq.ActorNotFound:
        return ids
    args, kwargs = message.args, message.kwargs
    for name, position in positions.items():
        value = kwargs[name] if name in kwargs else args[position] if position < len(args) else None
        if isinstance(value, int):
            ids[name] = value
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
