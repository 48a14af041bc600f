"""`batchctl demo`: every action, end to end, through the real producer and
worker code. Embedded by default (SQLite, in-process broker and worker,
emails to a mailbox file); against real services when the settings name them."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from batchctl.watch import watch_batch

GRACE_SECONDS = "2"


def _embedded() -> bool:
    return not os.environ.get("BROKER_URL")


@contextmanager
def _serving(app: Any) -> Iterator[str]:
    """The API served by uvicorn on a free local port, in a thread, as
    `batchctl serve` serves it (lifespan and dispatcher included): its URL."""
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, log_level="warning", access_log=False)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="demo-api", daemon=True
    )
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the demo's API did not start (see the log above)")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def run_demo(console: Console, learners: int) -> None:
    os.environ.setdefault("DELETION_GRACE_SECONDS", GRACE_SECONDS)
    from workers.runtime import start_worker

    worker_runtime = start_worker()
    settings = worker_runtime.settings

    import dramatiq
    import httpx
    from sqlalchemy import func, select

    from batch_actions_client import BatchClient
    from batchctl.migrate import upgrade
    from producer.app import create_app
    from shared.models import Course, Group, Learner
    from shared.publish import publisher_for
    from workers.deletion import claim_due

    where = "embedded (SQLite, in-process broker)" if _embedded() else "configured services"
    console.rule(f"Batch Actions demo: {where}")
    upgrade()
    from batchctl.seed import seed_school

    with worker_runtime.transaction() as session:
        seeded = seed_school(session, learners=learners, name="Demo School")
        groups = session.scalars(select(Group.id).where(Group.school_id == seeded.school_id))
        group_ids = list(groups)[:2]
        courses = session.scalars(select(Course.id).where(Course.school_id == seeded.school_id))
        course_ids = list(courses)[:2]
    console.print(
        f"seeded school {seeded.school_id}: {learners:,} learners, admin {seeded.admin_id}"
    )

    worker = dramatiq.Worker(worker_runtime.broker, worker_threads=2 if _embedded() else 8)
    worker.start()
    summary = Table(title="Demo summary")
    summary.add_column("batch: action on selection")
    for column in ("learners", "applied", "skipped", "failed", "per s"):
        summary.add_column(column, justify="right")
    try:
        with (
            _serving(create_app(worker_runtime)) as url,
            httpx.Client(base_url=url, timeout=30) as http,
        ):
            client = BatchClient(url, seeded.token, http=http)
            first_page = [
                p["id"] for p in http.get("/v1/learners", params={"limit": 50}).json()["learners"]
            ]
            plan: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
                ("resend_invitation", "one page", {"learner_ids": first_page}, {}),
                (
                    "add_to_group",
                    "every active, 3 unticked",
                    {"filter": {"status": ["active"]}, "exclude_ids": first_page[:3]},
                    {"group_ids": group_ids},
                ),
                (
                    "add_to_course",
                    "one page",
                    {"learner_ids": first_page},
                    {"course_ids": course_ids},
                ),
                (
                    "deactivate_learner",
                    "10 + the admin",
                    {"learner_ids": first_page[10:20] + [seeded.admin_id]},
                    {},
                ),
                (
                    "delete_learner",
                    "10 + the admin",
                    {"learner_ids": first_page[20:30] + [seeded.admin_id]},
                    {},
                ),
                ("resend_invitation", "resend all invitations", {"all_not_activated": True}, {}),
            ]
            for action, label, selection, params in plan:
                submitted = client.submit(action, selection, params)
                view = watch_batch(console, client, submitted["id"], poll=0.2)
                counts = view["counts"]
                reasons = "\n".join(f"{k}: {v:,}" for k, v in sorted(counts["reasons"].items()))
                summary.add_row(
                    f"{view['id']}: {action}\n  on {label}",
                    f"{view['total']:,}",
                    f"{counts['applied']:,}",
                    reasons or "0",
                    f"{counts['failed']:,}",
                    f"{view['rate_per_second'] or 0:,.0f}",
                )
        deadline = time.monotonic() + 30
        publisher = publisher_for(worker_runtime.broker)
        lease = timedelta(seconds=settings.deletion_overdue_seconds)
        while True:
            # The reconciler's part of a deletion (`batchctl reconcile` does it
            # in a deployment): publish the due learners' finalize messages.
            claim_due(worker_runtime.sessions, publisher, lease)
            with worker_runtime.transaction() as session:
                deleted = session.execute(
                    select(func.count()).where(
                        Learner.school_id == seeded.school_id, Learner.status == "deleted"
                    )
                ).scalar_one()
            if deleted >= 10 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        publisher.close()
    finally:
        worker.stop()
    console.print(summary)
    console.print(f"deletions finalized (purged to tombstones): {deleted}")
    if not settings.smtp_url:
        console.print(f"invitation emails are in {os.path.abspath(settings.mailbox_path)}")
