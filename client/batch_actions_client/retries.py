"""When to try a request again, and how long to wait first."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRIED_STATUSES = frozenset({429, 503})
# Methods a repeat cannot apply twice; a POST only with an Idempotency-Key.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header in seconds: delta-seconds or an HTTP date (RFC
    9110 section 10.2.3); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff(start: float = 0.5, factor: float = 1.5, cap: float = 10.0) -> Iterator[float]:
    """Delays that grow by `factor` from `start` up to `cap`, for ever."""
    delay = start
    while True:
        yield delay
        delay = min(delay * factor, cap)


def jittered(delay: float) -> float:
    """A delay spread over [delay/2, delay], so that clients cut off by the
    same outage do not all come back at the same instant."""
    return delay / 2 + random.random() * delay / 2
