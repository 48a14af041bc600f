"""LOG_FORMAT and LOG_LEVEL (shared/logs.py): the line a record becomes, the
ids it carries, and the settings' errors. That real processes write such
lines, Dramatiq's included, is tests/integration/test_json_logs.py's."""

from __future__ import annotations

import io
import json
import logging
import sys

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from pydantic import ValidationError

from shared import logs, redaction
from shared.settings import LogSettings
from workers.log_context import message_ids


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch):
    """A logger with the handler `logs.configure` installs, on a fake stderr."""

    def make(log_format: str) -> tuple[logging.Logger, io.StringIO]:
        stderr = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stderr)
        handler = logs.StderrHandler()
        handler.setFormatter(logs.formatter(log_format))
        handler.addFilter(redaction.RedactPII())
        handler.addFilter(logs.AddIds())
        logger = logging.getLogger(f"test.logs.{log_format}")
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        return logger, stderr

    return make


def test_a_json_line_has_the_ids_of_its_context_and_no_email(captured):
    logger, stderr = captured("json")
    with logs.context(batch_id=7, learner_id=42):
        try:
            raise ValueError("no learner ada@example.org")
        except ValueError:
            logger.exception("failed for %s", "ada@example.org")
    logger.info("between messages")
    logger.info("named", extra={"batch_id": 8})

    first, second, third = (json.loads(line) for line in stderr.getvalue().splitlines())
    assert (first["batch_id"], first["learner_id"], first["level"]) == (7, 42, "ERROR")
    assert first["message"] == "failed for [email]"
    assert "ValueError: no learner [email]" in first["exception"]
    assert "ada@example.org" not in stderr.getvalue()
    assert "batch_id" not in second and "learner_id" not in second
    assert third["batch_id"] == 8 and "learner_id" not in third


def test_a_text_line_ends_with_its_ids(captured):
    logger, stderr = captured("text")
    with logs.context(batch_id=7, learner_id=42):
        logger.info("applied")
    assert stderr.getvalue().rstrip().endswith("applied [batch_id=7 learner_id=42]")


def test_a_message_s_ids_are_its_actor_s_batch_and_learner_arguments():
    broker = StubBroker()

    @dramatiq.actor(broker=broker, queue_name="add_to_group")
    def add_to_group(batch_id: int, learner_id: int) -> None: ...

    @dramatiq.actor(broker=broker, queue_name="finalize_deletion")
    def finalize_deletion(school_id: int, learner_id: int) -> None: ...

    item = add_to_group.message(3, 99)
    purge = finalize_deletion.message(5, 99)
    assert message_ids(broker, item) == {"batch_id": 3, "learner_id": 99}
    assert message_ids(broker, purge) == {"batch_id": None, "learner_id": 99}
    by_name = add_to_group.message(4, learner_id=98)
    assert message_ids(broker, by_name) == {"batch_id": 4, "learner_id": 98}


def test_log_settings_take_any_case_and_refuse_the_rest(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert (LogSettings().log_format, LogSettings().log_level) == ("json", "DEBUG")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match="log_format"):
        LogSettings()
