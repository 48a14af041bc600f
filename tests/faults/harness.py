"""The fault-injection harness: a production-shaped stack per scenario
(producer, worker pods restarted like Kubernetes restarts them, reconciler,
an SMTP server that counts what it receives, a RabbitMQ vhost of its own),
the faults themselves, and the accounting that decides whether anything was
lost or done twice."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import text

from tests.support.services import (
    Process,
    Queues,
    RabbitVhost,
    SmtpServer,
    free_port,
    http_ok,
    rabbitmqctl,
    stack_env,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
WORKER_APP = "faults-worker"  # application_name of the pods' database connections

# Short settings, so that faults are recovered from in seconds.
SETTINGS = {
    "DISPATCH_WINDOW": "500",
    "RETRY_MAX": "3",
    "RETRY_MIN_BACKOFF_MS": "100",
    "RETRY_MAX_BACKOFF_MS": "1000",
    "MAX_DELIVERIES": "3",
    "STALE_AFTER_SECONDS": "3",
    "RECONCILE_INTERVAL_SECONDS": "1",
    "DELETION_GRACE_SECONDS": "1",
    "DELETION_OVERDUE_SECONDS": "2",
    "SMTP_RATE_PER_SECOND": "5000",
}
PROCESSES, THREADS = 1, 8  # per pod; two pods: two worker processes on two cores
RESTART_DELAY = 0.5  # Kubernetes backs off 10 s and more; the tests do not wait for that

REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]


class Pod:
    """A worker pod: its command restarted whenever it exits, as Kubernetes'
    `restartPolicy: Always` does. `python -m batchctl worker` execs the
    dramatiq CLI, so the process we start is Dramatiq's main process (the
    container's PID 1); its worker processes are its children."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.exits: list[int] = []
        self.restart = True
        self._lock = threading.Lock()
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name=f"pod-{name}", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"--- {self.name} started at {time.time():.3f}\n".encode())
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _watch(self) -> None:
        while True:
            popen = self.popen
            code = popen.wait()
            with self._lock:
                self.exits.append(code)
                if not self.restart:
                    return
            time.sleep(RESTART_DELAY)
            with self._lock:
                if not self.restart:
                    return
                self._spawn()

    @property
    def restarts(self) -> int:
        return len(self.exits) if self.restart else max(len(self.exits) - 1, 0)

    def worker_pids(self) -> list[int]:
        """Dramatiq's worker processes: children of the main process running
        our threads (the other child, Prometheus' exposition server, has few)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.popen.pid and int(fields[17]) >= THREADS:
                    pids.append(int(stat.parent.name))
        return pids

    def kill_worker_process(self) -> int:
        pids = self.worker_pids()
        assert pids, f"pod {self.name} has no worker process:\n{self.output()[-2000:]}"
        os.kill(pids[0], signal.SIGKILL)
        return pids[0]

    def terminate(self, timeout: float = 90) -> tuple[int, float]:
        """SIGTERM to the main process, as a rolling deploy does; no restart.
        Returns the exit code and how long the pod took to exit."""
        with self._lock:
            self.restart = False
            popen = self.popen
        started = time.monotonic()
        popen.send_signal(signal.SIGTERM)
        code = popen.wait(timeout)
        return code, time.monotonic() - started

    def stop(self) -> None:
        with self._lock:
            self.restart = False
            popen = self.popen
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class FaultStack:
    env: dict
    base_url: str
    vhost: RabbitVhost
    smtp: SmtpServer
    logs: Path
    producer: Process | None = None
    reconciler: Process | None = None
    pods: list[Pod] = field(default_factory=list)

    @property
    def queues(self) -> Queues:
        return self.vhost.queues

    def client(self, token: str):
        from batch_actions_client import BatchClient

        return BatchClient(self.base_url, token, timeout=60)

    def broker(self):
        """A broker on the stack's vhost that signs like the stack does."""
        from shared.broker import build_broker
        from shared.settings import Settings

        return build_broker(
            Settings(broker_url=self.vhost.url, signing_key=self.env["SIGNING_KEY"])
        )

    def add_pod(
        self, modules: tuple[str, ...] = (), queues: tuple[str, ...] = (), env: dict | None = None
    ) -> Pod:
        """`batchctl worker`, as in production; with `modules`, the same
        command through tests/faults/pod.py, which loads them too."""
        name = f"pod{len(self.pods)}"
        env = {
            **self.env,
            "METRICS_PORT": str(free_port()),
            "PGAPPNAME": WORKER_APP,
            **({"FAULTS_WORKER_MODULES": ",".join(modules)} if modules else {}),
            **(env or {}),
        }
        entry = ["tests.faults.pod"] if modules else ["batchctl", "worker"]
        argv = [sys.executable, "-m", *entry, "--processes", str(PROCESSES)]
        argv += ["--threads", str(THREADS)]
        for queue in queues:
            argv += ["--queues", queue]
        pod = Pod(name, argv, env, self.logs / f"{name}.log")
        self.pods.append(pod)
        return pod

    def wait_ready(self, queue: str, timeout: float = 60) -> None:
        """Until the producer answers and every pod's processes consume `queue`."""
        if self.producer is not None:
            healthz = f"{self.base_url}/healthz"
            wait_until(lambda: http_ok(healthz), timeout, "the producer", self.producer)
        wanted = PROCESSES * sum(1 for pod in self.pods if pod.restart)
        what = f"{wanted} consumers on {queue}"
        try:
            wait_until(lambda: self.queues.consumers(queue) >= wanted, timeout, what, every=0.3)
        except TimeoutError as error:
            logs = "\n".join(pod.output()[-1500:] for pod in self.pods)
            raise TimeoutError(f"{error}\n{logs}") from None

    def stop(self) -> None:
        for pod in self.pods:
            pod.stop()
        for process in (self.producer, self.reconciler):
            if process is not None:
                process.stop()
        self.smtp.stop()
        with contextlib.suppress(Exception):
            self.vhost.delete()


def start_stack(database_url: str, logs: Path, pods: int = 2, **pod_options) -> FaultStack:
    vhost = RabbitVhost()
    smtp = SmtpServer()
    port = free_port()
    env = stack_env(database_url, vhost, smtp, **SETTINGS, PYTHONPATH=str(ROOT))
    stack = FaultStack(env, f"http://127.0.0.1:{port}", vhost, smtp, logs)
    stack.producer = Process.batchctl(["serve", "--port", str(port)], env, logs / "producer.log")
    stack.reconciler = Process.batchctl(["reconcile"], env, logs / "reconciler.log")
    for _ in range(pods):
        stack.add_pod(**pod_options)
    return stack


# Faults on the machine's shared services. On a shared machine run the suite
# under `flock /tmp/batch-actions-machine.lock` (see the Makefile's `faults`).


@contextlib.contextmanager
def rabbitmq_stopped():
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


def redis_answers() -> bool:
    return (
        subprocess.run(["redis-cli", "-p", "6379", "ping"], capture_output=True, timeout=10)
        .stdout.strip()
        .endswith(b"PONG")
    )


def stop_redis() -> None:
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True)
    wait_until(lambda: not redis_answers(), 30, "Redis to stop", every=0.1)


def start_redis() -> None:
    if redis_answers():
        return
    os.makedirs("/var/lib/redis", exist_ok=True)
    os.makedirs("/var/log/redis", exist_ok=True)
    subprocess.run(REDIS_START, check=True, capture_output=True, timeout=30)
    wait_until(redis_answers, 30, "Redis to start", every=0.1)


def kill_worker_connections(session) -> int:
    """pg_terminate_backend on every database connection of the worker pods."""
    killed = session.execute(
        text(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = :app AND datname = current_database()"
        ),
        {"app": WORKER_APP},
    ).scalar_one()
    session.commit()
    return killed


# Watching a batch.


def finished_items(session, batch_id: int) -> int:
    session.rollback()
    return session.execute(
        text("SELECT count(*) FROM batch_items WHERE batch_id = :b AND outcome <> 'pending'"),
        {"b": batch_id},
    ).scalar_one()


def wait_progress(session, batch_id: int, total: int, fraction: float, timeout=120) -> None:
    wait_until(
        lambda: finished_items(session, batch_id) >= fraction * total,
        timeout,
        f"batch {batch_id} to finish {fraction:.0%} of its learners",
        every=0.05,
    )


def wait_completed(session, batch_id: int, timeout: float = 180) -> datetime | None:
    """When the batch completed (its finished_at), or None after `timeout`."""

    def ended() -> tuple[datetime | None] | None:
        session.rollback()
        status, finished = session.execute(
            text("SELECT status, finished_at FROM batches WHERE id = :b"), {"b": batch_id}
        ).one()
        return None if status in ("pending", "running", "cancelling") else (finished,)

    try:
        return wait_until(ended, timeout, f"batch {batch_id} to end")[0]
    except TimeoutError:
        return None


def wait_emails_settled(session, batch_id: int, smtp: SmtpServer, timeout: float = 30) -> None:
    """Until every invitation of the batch was picked up for sending and the
    SMTP server's count stopped moving (the in-doubt ones never finish)."""
    deadline, last, stable_since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        session.rollback()
        unclaimed, sending = session.execute(
            text(
                "SELECT count(*) FILTER (WHERE sending_at IS NULL), "
                "count(*) FILTER (WHERE sending_at IS NOT NULL AND sent_at IS NULL) "
                "FROM invitations WHERE batch_id = :b"
            ),
            {"b": batch_id},
        ).one()
        received = len(smtp.inbox.messages)
        if (unclaimed, sending, received) != last:
            last, stable_since = (unclaimed, sending, received), time.monotonic()
        if unclaimed == 0 and (sending == 0 or time.monotonic() - stable_since > 2):
            return
        time.sleep(0.2)


# Accounting.

ALREADY = {
    "add_to_group": "already_member",
    "add_to_course": "already_enrolled",
    "deactivate_learner": "already_deactivated",
}


@dataclass
class Row:
    scenario: str
    action: str
    selected: int = 0
    outcomes: int = 0
    effects: int = 0
    lost: int = 0
    duplicate_effects: int = 0
    duplicate_emails: int = 0
    emails: str = "-"
    failed: int = 0
    dead_lettered: int = 0
    recover_seconds: float | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


def _scalar(session, sql: str, **params):
    return session.execute(text(sql), params).scalar_one()


def _effects(session, batch_id: int, action: str, ids: list[int], params: dict) -> int:
    """Selected learners whose database shows the action's effect."""
    if action == "resend_invitation":
        sql = "SELECT count(DISTINCT learner_id) FROM invitations WHERE batch_id = :b"
        return _scalar(session, sql, b=batch_id)
    if action == "add_to_group":
        sql = (
            "SELECT count(DISTINCT learner_id) FROM group_memberships "
            "WHERE learner_id = ANY(:ids) AND group_id = ANY(:targets)"
        )
        return _scalar(session, sql, ids=ids, targets=params["group_ids"])
    if action == "add_to_course":
        sql = (
            "SELECT count(*) FROM (SELECT learner_id FROM course_enrollments "
            "WHERE learner_id = ANY(:ids) AND course_id = ANY(:targets) "
            "GROUP BY learner_id HAVING count(*) = :n) AS full_enrollment"
        )
        targets = params["course_ids"]
        return _scalar(session, sql, ids=ids, targets=targets, n=len(targets))
    if action == "deactivate_learner":
        sql = "SELECT count(*) FROM learners WHERE id = ANY(:ids) AND status = 'deactivated'"
        return _scalar(session, sql, ids=ids)
    if action == "delete_learner":
        sql = (
            "SELECT count(*) FROM learners WHERE id = ANY(:ids) "
            "AND status = 'deleted' AND email IS NULL AND name IS NULL"
        )
        return _scalar(session, sql, ids=ids)
    raise ValueError(action)


def _duplicates(session, batch_id: int, action: str, ids: list[int]) -> dict[str, int]:
    found = {
        "audit rows": _scalar(
            session,
            "SELECT count(*) FROM (SELECT learner_id FROM audit_log WHERE batch_id = :b "
            "AND learner_id IS NOT NULL GROUP BY learner_id HAVING count(*) > 1) AS d",
            b=batch_id,
        ),
        "claims": _scalar(
            session,
            "SELECT count(*) FROM batch_items WHERE batch_id = :b AND attempts > 1",
            b=batch_id,
        ),
    }
    if action == "resend_invitation":
        found["invitations"] = _scalar(
            session,
            "SELECT count(*) FROM (SELECT learner_id FROM invitations WHERE batch_id = :b "
            "GROUP BY learner_id HAVING count(*) > 1) AS d",
            b=batch_id,
        )
    if action == "delete_learner":
        found["purges"] = _scalar(
            session,
            "SELECT count(*) FROM (SELECT learner_id FROM audit_log WHERE learner_id = ANY(:ids) "
            "AND action = 'finalize_deletion' GROUP BY learner_id HAVING count(*) > 1) AS d",
            ids=ids,
        )
    return found


def measure(
    session,
    stack: FaultStack,
    scenario: str,
    batch_id: int,
    chosen: list[int],
    params: dict | None = None,
    fault_end: float | None = None,
    started: float | None = None,
) -> Row:
    session.rollback()
    action = _scalar(session, "SELECT action FROM batches WHERE id = :b", b=batch_id)
    row = Row(scenario, action)
    items = {
        lid: (outcome, reason)
        for lid, outcome, reason in session.execute(
            text("SELECT learner_id, outcome, reason FROM batch_items WHERE batch_id = :b"),
            {"b": batch_id},
        )
    }
    by_outcome = Counter(outcome for outcome, _ in items.values())
    row.selected = len(items)
    row.outcomes = sum(by_outcome[o] for o in ("applied", "skipped", "failed"))
    row.failed = by_outcome["failed"]
    missing_items = set(chosen) - set(items)
    row.lost = len(missing_items) + by_outcome["pending"] + by_outcome["cancelled"]
    row.check(row.lost == 0, f"{row.lost} learners have no outcome")
    row.check(not missing_items, f"{len(missing_items)} selected learners have no item")

    row.effects = _effects(session, batch_id, action, chosen, params or {})
    already = ALREADY.get(action)
    expected = by_outcome["applied"] + sum(
        1 for outcome, reason in items.values() if outcome == "skipped" and reason == already
    )
    row.check(row.effects == expected, f"{row.effects} effects for {expected} applied items")

    duplicates = _duplicates(session, batch_id, action, chosen)
    row.duplicate_effects = sum(duplicates.values())
    row.check(row.duplicate_effects == 0, f"duplicate effects: {duplicates}")
    # One row per learner; the batch's own events (submitted, finished) name no learner.
    audited = _scalar(
        session,
        "SELECT count(*) FROM audit_log WHERE batch_id = :b AND learner_id IS NOT NULL",
        b=batch_id,
    )
    row.check(audited == row.outcomes, f"{audited} audit rows for {row.outcomes} outcomes")

    if action == "resend_invitation":
        _count_emails(session, stack, batch_id, row)
    row.dead_lettered = stack.queues.dead_letters()

    session.rollback()
    finished = _scalar(session, "SELECT finished_at FROM batches WHERE id = :b", b=batch_id)
    if finished is not None and fault_end is not None:
        row.recover_seconds = max(0.0, finished.timestamp() - fault_end)
    row.check(finished is not None, "the batch did not complete")
    if started is not None:
        row.seconds = time.time() - started
    return row


def _count_emails(session, stack: FaultStack, batch_id: int, row: Row) -> None:
    wait_emails_settled(session, batch_id, stack.smtp)
    invitations = session.execute(
        text(
            "SELECT l.email, i.sending_at IS NOT NULL, i.sent_at IS NOT NULL "
            "FROM invitations i JOIN learners l ON l.id = i.learner_id WHERE i.batch_id = :b"
        ),
        {"b": batch_id},
    ).all()
    received = stack.smtp.inbox.recipients()
    invited = {email for email, _, _ in invitations}
    row.duplicate_emails = sum(n - 1 for n in received.values() if n > 1)
    row.check(row.duplicate_emails == 0, f"{row.duplicate_emails} duplicate emails")
    strays = sum(n for email, n in received.items() if email not in invited)
    row.check(strays == 0, f"{strays} emails to learners without an invitation")
    got = sum(1 for email in invited if received[email])
    row.emails = f"{got}/{len(invitations)}"
    in_doubt = [email for email, sending, sent in invitations if sending and not sent]
    unsent = [email for email, sending, sent in invitations if not sending]
    lost = [email for email, _, sent in invitations if sent and not received[email]]
    row.check(not unsent, f"{len(unsent)} invitations never picked up for sending")
    if lost:
        sample = session.execute(
            text(
                "SELECT l.email, i.attempts, i.sending_at, i.sent_at FROM invitations i "
                "JOIN learners l ON l.id = i.learner_id "
                "WHERE i.batch_id = :b AND l.email = ANY(:e)"
            ),
            {"b": batch_id, "e": lost[:3]},
        ).all()
        row.problems.append(
            f"{len(lost)} invitations marked sent that never arrived "
            f"({len(stack.smtp.inbox.messages)} messages received; e.g. {sample})"
        )
    if in_doubt:
        arrived = sum(1 for email in in_doubt if received[email])
        row.notes.append(
            f"{len(in_doubt)} in doubt (worker died mid-send; {arrived} arrived; at most once)"
        )


def format_table(rows: list[Row]) -> str:
    headers = [
        "scenario",
        "action",
        "selected",
        "outcomes",
        "effects",
        "lost",
        "dup effects",
        "dup emails",
        "emails",
        "failed",
        "dead-lettered",
        "recover s",
        "total s",
        "result",
    ]
    lines = [headers]
    for row in rows:
        recover = "-" if row.recover_seconds is None else f"{row.recover_seconds:.1f}"
        lines.append(
            [
                row.scenario,
                row.action,
                str(row.selected),
                str(row.outcomes),
                str(row.effects),
                str(row.lost),
                str(row.duplicate_effects),
                str(row.duplicate_emails),
                row.emails,
                str(row.failed),
                str(row.dead_lettered),
                recover,
                f"{row.seconds:.0f}",
                "ok" if row.ok else "FAIL",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [
        f"  {row.scenario}: {'; '.join(row.problems + row.notes)}"
        for row in rows
        if row.problems or row.notes
    ]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)
