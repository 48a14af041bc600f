"""Showing batches in the terminal: a live progress bar (or, for a log or a
pipe, a progress line now and then), a counts table, and the exit code a
watched batch ends with."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from batch_actions_client import FINISHED
from batch_actions_client.retries import backoff

# `status --watch` and `submit --watch` exit codes (docs/CONTRACT.md): 1 is an
# error (the API refused, or cannot be reached), 2 a usage error.
EXIT_FAILED = 3  # ended with failed learners, or the batch itself failed
EXIT_CANCELLED = 4
EXIT_TIMEOUT = 124  # still running at --timeout, as timeout(1) says
# A progress line at most this often when nothing but the counts changes.
LINE_EVERY_SECONDS = 5.0


def counts_table(view: dict, title: str) -> Table:
    counts = view["counts"]
    table = Table(title=title)
    table.add_column("outcome")
    table.add_column("learners", justify="right")
    for outcome in ("applied", "skipped", "failed", "cancelled", "pending"):
        if counts.get(outcome):
            table.add_row(outcome, f"{counts[outcome]:,}")
    for reason, n in sorted(counts.get("reasons", {}).items()):
        table.add_row(f"  skipped: {reason}", f"{n:,}")
    return table


def print_counts(console: Console, view: dict, title: str) -> None:
    console.print(counts_table(view, title))


def exit_code(view: dict) -> int:
    """0 only for a batch that completed with no learner failed."""
    if view["status"] == "cancelled":
        return EXIT_CANCELLED
    if view["status"] == "failed" or view["counts"].get("failed"):
        return EXIT_FAILED
    return 0


def _rate_text(view: dict) -> str:
    rate = view.get("rate_per_second")
    eta = view.get("eta_seconds")
    parts = [f"{rate:,.0f} learners/s" if rate else "starting"]
    if eta is not None and view["status"] not in FINISHED:
        parts.append(f"ETA {eta:,.0f}s")
    return " | ".join(parts)


def progress_line(view: dict) -> str:
    """One line for a log or a pipe, e.g.
    `batch 7 add_to_group running: 150/300 (50%) | 120 learners/s | ETA 1s`."""
    done = view["total"] - view["counts"].get("pending", 0)
    percent = 100.0 * done / view["total"] if view["total"] else 100.0
    return (
        f"batch {view['id']} {view['action']} {view['status']}: {done:,}/{view['total']:,} "
        f"({percent:.0f}%) | {_rate_text(view)}"
    )


def watch_batch(
    console: Console,
    client: Any,
    batch_id: int,
    timeout: float | None = None,
    live: bool = True,
    poll: float = 0.5,
) -> dict:
    """Follow a batch until it ends and return its final view: with a live
    bar, rate and ETA when `live` (someone watches a terminal), otherwise a
    progress line whenever the status changes and every few seconds. Polls
    after `poll` seconds, then less often. TimeoutError when it is still
    running after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    view = client.batch(batch_id)
    if live:
        view = _follow_with_bar(console, client, view, backoff(poll, cap=2.0), deadline)
    else:
        view = _follow_with_lines(console, client, view, backoff(poll, cap=5.0), deadline)
    print_counts(console, view, title=f"batch {batch_id}: {view['status']}")
    return view


def _next(client: Any, view: dict, delays: Iterator[float], deadline: float | None) -> dict:
    """The batch's view after the next poll's delay; TimeoutError past the deadline."""
    delay = next(delays)
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"batch {view['id']} still {view['status']} at --timeout")
        delay = min(delay, left)
    time.sleep(delay)
    return client.batch(view["id"])


def _follow_with_bar(
    console: Console, client: Any, view: dict, delays: Iterator[float], deadline: float | None
) -> dict:
    columns = [
        TextColumn(f"batch {view['id']} [bold]{view['action']}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("batch", total=view["total"], rate="")
        while True:
            done = view["total"] - view["counts"].get("pending", 0)
            progress.update(task, completed=done, rate=_rate_text(view))
            if view["status"] in FINISHED:
                return view
            view = _next(client, view, delays, deadline)


def _follow_with_lines(
    console: Console, client: Any, view: dict, delays: Iterator[float], deadline: float | None
) -> dict:
    shown: tuple[str, int] | None = None
    last_line = 0.0
    while True:
        done = view["total"] - view["counts"].get("pending", 0)
        changed = shown is None or shown[0] != view["status"]
        due = shown is not None and shown[1] != done
        due = due and time.monotonic() - last_line >= LINE_EVERY_SECONDS
        if changed or due or view["status"] in FINISHED:
            console.print(progress_line(view), soft_wrap=True, highlight=False)
            shown, last_line = (view["status"], done), time.monotonic()
        if view["status"] in FINISHED:
            return view
        view = _next(client, view, delays, deadline)
