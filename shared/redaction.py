"""Keep PII out of logs: a logging filter for every handler of every process.

Logs are shipped and kept far longer than the data they describe, and a
purged learner must not live on in them. Messages carry ids only, and the
producer logs route templates, never a request's URL (producer/app.py); the
engines never put SQL parameters in errors (shared/db.py). Some text is not
ours, though: a driver error can quote a row, a library can log a URL. The
filter rewrites emails (also percent-encoded), search terms (also under a
percent-encoded `q`) and row details in the message, its arguments and any
traceback before a handler formats the record, keeping the arguments' shape
so that formatters that unpack them (uvicorn's) still work.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

# "@" also as "%40" (a URL path or query), any case.
EMAIL = re.compile(r"[\w.+%-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
# Every query parameter; its name is decoded before it is compared (`%71=` is `q=`).
QUERY_PARAMETER = re.compile(r"([?&])([^=&\s\"#]+)=([^&\s\"#]*)")
SEARCH_PARAMETERS = {"q"}
# Driver errors name the row in a DETAIL line: "Key (email)=(...)".
DETAIL = re.compile(r"(DETAIL:.*?=\().*?(\))")


def _search_redacted(match: re.Match) -> str:
    separator, name, value = match.groups()
    if unquote(name).strip().lower() in SEARCH_PARAMETERS:
        value = "[redacted]"
    return f"{separator}{name}={value}"


def redact(text: str) -> str:
    text = EMAIL.sub("[email]", text)
    text = QUERY_PARAMETER.sub(_search_redacted, text)
    return DETAIL.sub(r"\1[redacted]\2", text)


def _redacted_argument(argument: object) -> object:
    """The argument, or its text redacted if that text held something."""
    text = str(argument)
    cleaned = redact(text)
    return argument if cleaned == text else cleaned


class RedactPII(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redacted_argument(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted_argument(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redacted_argument(v) for k, v in record.args.items()}
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:  # something made only of the parts together
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
