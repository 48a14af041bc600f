"""The brokers call a signal's hooks on the middleware that define them, in
Dramatiq's order and with its error handling (shared.broker.DefinedHooksOnly)."""

from __future__ import annotations

import logging

import pytest
from dramatiq.middleware import Middleware, SkipMessage

from shared.broker import EmbeddedBroker


class Recording(Middleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def before_process_message(self, broker, message):
        self.calls.append(f"before {self.name}")

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self.calls.append(f"after {self.name}")


class Refusing(Middleware):
    def before_process_message(self, broker, message):
        raise SkipMessage("refused")


class Broken(Middleware):
    def after_process_message(self, broker, message, *, result=None, exception=None):
        raise RuntimeError("bug")


def test_hooks_run_in_dramatiq_order_including_middleware_added_later():
    calls: list[str] = []
    broker = EmbeddedBroker(middleware=[Recording("a", calls), Middleware()])
    broker.emit_before("process_message", None)
    broker.add_middleware(Recording("first", calls), before=Recording)
    broker.add_middleware(Recording("last", calls))
    broker.emit_before("process_message", None)
    broker.emit_after("process_message", None, result=None)
    assert calls == [
        "before a",
        "before first",
        "before a",
        "before last",
        "after last",
        "after a",
        "after first",
    ]


def test_a_middleware_error_stops_the_before_hooks_and_other_errors_are_logged(caplog):
    calls: list[str] = []
    broker = EmbeddedBroker(middleware=[Refusing(), Recording("later", calls), Broken()])
    with pytest.raises(SkipMessage):
        broker.emit_before("process_message", None)
    assert calls == []
    with caplog.at_level(logging.CRITICAL):
        broker.emit_after("process_message", None, result=None)
    assert calls == ["after later"]  # after Broken's failure
    assert "Unexpected failure in after_process_message" in caplog.text
