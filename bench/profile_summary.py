"""Where the time goes, from py-spy's collapsed stacks (`--format raw`).

    python -m bench.profile_summary /tmp/batch-actions-bench-*/profile-add_to_group-workers.txt

Prints the share of samples (busy threads only) spent inside each function
named below, and the functions with the most samples of their own.
"""

from __future__ import annotations

import sys
from collections import Counter

# (label, substring of a frame "function (file:line)")
BUCKETS = [
    ("dramatiq worker: process_message (all of it)", "process_message (dramatiq/worker.py"),
    ("  our actor (handle_item)", "handle_item (workers/actors.py"),
    ("    Items.process", "process (workers/items.py"),
    ("      one statement (workers/statements.run)", "run (workers/statements.py"),
    ("      claim_item", "claim_item (workers/items.py"),
    ("      domain function (APPLY)", "<lambda> (workers/items.py"),
    ("      record_outcome", "record_outcome (workers/items.py"),
    ("      count_progress", "count_progress (workers/items.py"),
    ("      session begin/commit/close", "__exit__ (sqlalchemy/orm/session"),
    ("      pool checkout (incl. pre-ping)", "_checkout (sqlalchemy/pool/base.py"),
    ("      psycopg execute", "execute (psycopg/"),
    ("  middleware before_process_message", "before_process_message"),
    ("  middleware after_process_message", "after_process_message"),
    ("  prometheus_client", "prometheus_client/"),
    ("dramatiq consumer thread (receive, decode, ack)", "_ConsumerThread"),
    ("  JSON decode", "decode (dramatiq/encoder.py"),
    ("  ack", "ack (dramatiq/brokers/rabbitmq.py"),
    ("redis-py", "redis/"),
    ("progress flush thread", "_run (shared/progress.py"),
    ("SQLAlchemy (anywhere)", "sqlalchemy/"),
    ("pika (anywhere)", "pika/"),
]


def load(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path, encoding="utf-8", errors="replace") as source:
        lines = source.read().splitlines()
    for line in lines:
        if not line:
            continue
        frames, _, count = line.rpartition(" ")
        if count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def summary(path: str, top: int = 25) -> str:
    stacks = load(path)
    total = sum(n for _, n in stacks) or 1
    out = [f"{path}: {total} samples (busy threads)"]
    for label, needle in BUCKETS:
        n = sum(c for frames, c in stacks if any(needle in f for f in frames))
        out.append(f"  {100 * n / total:5.1f}%  {label}")
    own = Counter()
    for frames, n in stacks:
        own[frames[-1]] += n
    out.append("  top self time:")
    for frame, n in own.most_common(top):
        out.append(f"  {100 * n / total:5.1f}%    {frame[:150]}")
    return "\n".join(out)


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(summary(argument))
