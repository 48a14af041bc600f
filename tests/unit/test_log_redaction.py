"""The log filter and the engines keep PII out of logs without breaking the
formatters that print them (issue #12 item 2)."""

from __future__ import annotations

import io
import logging

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from uvicorn.logging import AccessFormatter

from shared.db import make_engine
from shared.redaction import RedactPII, redact

EMAIL = "zed.q+x@mail.example.org"


@pytest.mark.parametrize(
    "line",
    [
        "GET /v1/learners?q=Zed%20Quorra&limit=5",
        "GET /v1/learners?%71=Zed%20Quorra&limit=5",
        "GET /v1/learners?Q=Zed%20Quorra&limit=5",
        "GET /v1/learners/zed.q%2Bx%40mail.example.org/access",
        "GET /v1/learners/ZED.Q%40MAIL.EXAMPLE.ORG/access",
        "DETAIL:  Key (school_id, email)=(1, Zed Quorra) already exists.",
        f"contact {EMAIL}",
    ],
)
def test_emails_search_terms_and_row_details_are_redacted_however_encoded(line):
    cleaned = redact(line)
    assert "zed" not in cleaned.lower() and "quorra" not in cleaned.lower()
    assert "limit=5" in cleaned or "limit" not in line


def test_a_redacted_access_record_still_formats():
    """uvicorn's access formatter unpacks the record's five arguments."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s'))
    handler.addFilter(RedactPII())
    logger = logging.getLogger("test.redaction.access")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5000",
            "GET",
            f"/v1/learners?q={EMAIL}",
            "1.1",
            200,
        )
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == '127.0.0.1:5000 - "GET /v1/learners?q=[redacted] HTTP/1.1" 200 OK\n'


def test_database_errors_do_not_quote_the_statements_parameters(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'errors.db'}")
    with pytest.raises(OperationalError) as failed, engine.connect() as connection:
        connection.execute(text("SELECT email FROM no_such_table WHERE email = :e"), {"e": EMAIL})
    engine.dispose()
    assert "no_such_table" in str(failed.value)
    assert EMAIL not in str(failed.value)
