"""Keep PII out of logs: a logging filter for every handler of every process.

Logs are shipped and kept far longer than the data they describe, and a
purged learner must not live on in them. Messages carry ids only, but some
text is not ours: a driver error can quote a row, an access log line quotes
the people-list search (`q=`). The filter rewrites emails and search terms
in the message and in any traceback before a handler formats the record.
"""

from __future__ import annotations

import logging
import re

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
SEARCH = re.compile(r"([?&]q=)[^&\s\"]*")
# Driver errors name the row in a DETAIL line: "Key (email)=(...)".
DETAIL = re.compile(r"(DETAIL:.*?=\().*?(\))")


def redact(text: str) -> str:
    text = EMAIL.sub("[email]", text)
    text = SEARCH.sub(r"\1[redacted]", text)
    return DETAIL.sub(r"\1[redacted]\2", text)


class RedactPII(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install(*logger_names: str) -> None:
    """Add the filter to every handler of the root logger and of `logger_names`
    (uvicorn's loggers have handlers of their own and do not propagate)."""
    shared = RedactPII()
    for name in ("", *logger_names):
        for handler in logging.getLogger(name or None).handlers:
            if not any(isinstance(f, RedactPII) for f in handler.filters):
                handler.addFilter(shared)
