"""The shared email rate limit (`workers.mail.SharedRateLimiter`) on the real
Redis: several processes' limiters, many threads each, never let more than
SMTP_RATE_PER_SECOND emails through in one wall-clock second together, and
do let that many through."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
import redis

from tests.support.services import redis_url
from workers.mail import SharedRateLimiter


def grants_per_second(per_second: int, processes: int, threads: int, seconds: float) -> Counter:
    client = redis.Redis.from_url(redis_url())
    key = f"test-rate-{uuid.uuid4().hex[:8]}"
    limiters = [SharedRateLimiter(per_second, client, key=key) for _ in range(processes)]
    granted: Counter = Counter()
    lock = threading.Lock()
    stop = time.time() + seconds

    def send(limiter: SharedRateLimiter) -> None:
        while time.time() < stop:
            limiter.wait()
            at = int(time.time())
            with lock:
                granted[at] += 1

    pool = [
        threading.Thread(target=send, args=(limiter,))
        for limiter in limiters
        for _ in range(threads)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    client.close()
    return granted


@pytest.mark.parametrize("per_second", [20, 2000])
def test_no_second_gets_more_than_the_limit_across_processes(per_second):
    granted = grants_per_second(per_second, processes=3, threads=6, seconds=3.2)
    # A permit taken in the last milliseconds of a second may be used in the
    # next: a little slack for that (and for a machine busy with other tests).
    assert max(granted.values()) <= per_second * 1.1 + 2, granted
    # The whole seconds in the middle: the budget was used, not starved.
    middle = sorted(granted)[1:-1]
    assert middle and all(granted[s] >= per_second // 2 for s in middle), granted
