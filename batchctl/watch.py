"""Showing batches in the terminal: a live progress bar and a counts table."""

from __future__ import annotations

import time

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


def _rate_text(view: dict) -> str:
    rate = view.get("rate_per_second")
    eta = view.get("eta_seconds")
    parts = [f"{rate:,.0f} learners/s" if rate else "starting"]
    if eta is not None and view["status"] not in FINISHED:
        parts.append(f"ETA {eta:,.0f}s")
    return " | ".join(parts)


def watch_batch(console: Console, client, batch_id: int, poll: float = 0.5) -> dict:
    """Follow a batch until it ends, with a bar, rate and ETA; return its final view."""
    view = client.batch(batch_id)
    columns = [
        TextColumn(f"batch {batch_id} [bold]{view['action']}[/]"),
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
                break
            time.sleep(poll)
            view = client.batch(batch_id)
    print_counts(console, view, title=f"batch {batch_id}: {view['status']}")
    return view
