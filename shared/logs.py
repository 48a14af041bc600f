"""How every process logs: LOG_FORMAT (`text` or `json`) and LOG_LEVEL.

One handler on the root logger, writing to whatever `sys.stderr` is when a
record is emitted: Dramatiq points a worker process's `sys.stderr` at the
pipe its parent reads (and `logging.basicConfig` leaves a root logger that
already has a handler alone), so its worker and fork processes, forked with
this handler, log through the same pipe and format as the parent
(workers/dramatiq_cli.py). uvicorn runs without a logging config of its own
and its loggers propagate here.

In `json`, each record is one object on one line: time, level, logger,
message, and the ids of the batch and learner the line is about, where there
are some (`context` sets them for a block of code, a middleware sets them
around each message: workers/log_context.py; `extra={"batch_id": ...}` sets
them for one record). Ids only: every message and traceback goes through
shared/redaction.py's filter first.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

from shared import redaction
from shared.settings import LogSettings

# The ids a line may carry, each from `extra=` or else from its context variable.
IDS: dict[str, ContextVar[int | None]] = {
    "batch_id": ContextVar("batch_id", default=None),
    "learner_id": ContextVar("learner_id", default=None),
}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


@contextmanager
def context(**ids: int | None) -> Iterator[None]:
    """Put `batch_id` and/or `learner_id` on every record logged in the block."""
    tokens = [(IDS[name], IDS[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def bind(**ids: int | None) -> None:
    """Set the ids of this thread's (or task's) current work until the next `bind`."""
    for name, value in ids.items():
        IDS[name].set(value)


class AddIds(logging.Filter):
    """Copy the current ids onto a record that was not given its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in IDS.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for name in IDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = redaction.redact(self.formatException(record.exc_info))
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = redaction.redact(self.formatStack(record.stack_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """The usual line, then the ids when there are some."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = " ".join(f"{n}={getattr(record, n)}" for n in IDS if getattr(record, n, None))
        if not ids:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} [{ids}]{newline}{rest}"


class StderrHandler(logging.StreamHandler):
    """A handler on the `sys.stderr` of the moment, not of its creation."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(settings: LogSettings | None = None) -> None:
    """Log at LOG_LEVEL to stderr in LOG_FORMAT, through the redaction filter,
    instead of whatever handlers the root logger had."""
    settings = settings or LogSettings()
    handler = StderrHandler()
    handler.setFormatter(formatter(settings.log_format))
    handler.addFilter(redaction.RedactPII())
    handler.addFilter(AddIds())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
