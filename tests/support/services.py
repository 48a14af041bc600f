"""Real services, shared by the tests, the fault suite and the bench: a
PostgreSQL database, a RabbitMQ vhost and a Redis database of our own, an
SMTP server that records what it receives, `batchctl` subprocesses, and one
way to wait for any of them."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import TypeVar

import httpx
import pika
import pika.exceptions
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get(
    "TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1/postgres"
)
RABBIT = "amqp://guest:guest@127.0.0.1:5672"
REDIS_TEST_DB = 11

T = TypeVar("T")


# Ports for our servers come from below the kernel's ephemeral range (32768
# and up on Linux), which outgoing connections draw from: a port the kernel
# hands out as free there can be taken by some worker's connection to
# PostgreSQL or RabbitMQ before our server binds it (seen in CI: "address
# already in use").
LISTEN_PORTS = range(20000, 32768)
_handed_out: set[int] = set()


def free_port() -> int:
    for port in random.sample(LISTEN_PORTS, 200):
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS}")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    process: Process | None = None,
    every: float = 0.2,
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    A predicate that raises counts as not yet (services refuse connections
    while they start); the last error is in the timeout's message. With a
    `process`, its exit ends the wait at once, and its log's tail is in the
    error either way: that is where the reason usually is."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if process is not None and not process.alive():
            raise RuntimeError(f"{what}: the process exited\n{process.tail()}")
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 (reported on timeout)
            last_error = error
        if time.monotonic() >= deadline:
            break
        time.sleep(every)
    message = f"{what}: not within {timeout:g} s"
    if last_error is not None:
        message += f" (last error: {last_error!r})"
    if process is not None:
        message += f"\n{process.tail()}"
    raise TimeoutError(message)


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


# PostgreSQL.


def _admin_engine(admin_url: str):
    # psycopg 3 whatever the URL says: plain postgresql:// means psycopg2 to SQLAlchemy.
    url = make_url(admin_url).set(drivername="postgresql+psycopg")
    return create_engine(url, isolation_level="AUTOCOMMIT")


def create_database(name: str, admin_url: str = PG_ADMIN_URL) -> str:
    """An empty database `name` (dropped first if it exists); its SQLAlchemy URL."""
    admin = _admin_engine(admin_url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    admin.dispose()
    return url


def drop_database(name: str, admin_url: str = PG_ADMIN_URL) -> None:
    admin = _admin_engine(admin_url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# RabbitMQ.


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=timeout
    ).stdout


class Queues:
    """Queue depths and consumers over AMQP (passive declares): cheaper than
    starting `rabbitmqctl` on a two-core machine."""

    def __init__(self, url: str) -> None:
        self.url = url

    def stats(self, names: list[str]) -> dict[str, tuple[int, int]]:
        """{queue: (messages ready, consumers)}; absent queues are left out."""
        result = {}
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            for name in names:
                channel = connection.channel()
                try:
                    method = channel.queue_declare(name, passive=True).method
                    result[name] = (method.message_count, method.consumer_count)
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    pass  # 404: not declared yet
        finally:
            connection.close()
        return result

    def dead_letters(self) -> int:
        from shared.contract import QUEUES

        return sum(n for n, _ in self.stats([f"{q}.XQ" for q in QUEUES]).values())

    def consumers(self, queue: str) -> int:
        return self.stats([queue]).get(queue, (0, 0))[1]

    def publish_raw(self, queue: str, body: bytes) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_publish(
                "", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True
            )
        finally:
            connection.close()

    def purge(self, queue: str) -> int:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            return connection.channel().queue_purge(queue).method.message_count
        finally:
            connection.close()


class RabbitVhost:
    """A throwaway vhost, so queues of one run never meet another's."""

    def __init__(self, prefix: str = "batch_test", server: str = RABBIT) -> None:
        self.name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        self.url = f"{server}/{self.name}"
        self.queues = Queues(self.url)

    def queue_depths(self) -> dict[str, int]:
        out = rabbitmqctl(
            "list_queues", "-p", self.name, "name", "messages", "--no-table-headers", timeout=60
        )
        return {name: int(n) for name, n in (line.split() for line in out.splitlines() if line)}

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)


# Redis.


def redis_url(db: int = REDIS_TEST_DB) -> str:
    """Progress keys are namespaced by database, so runs never need a flush."""
    return f"redis://127.0.0.1:6379/{db}"


# SMTP.


@dataclass
class Inbox:
    """What the SMTP server received: one entry per delivered message."""

    messages: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook)
        with self.lock:
            self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"

    def recipients(self) -> Counter:
        with self.lock:
            return Counter(m["To"] for m in self.messages)

    def received_by(self, addresses: list[str], timeout: float = 30) -> dict[str, int]:
        """How many messages each address got, once each has one (or at the
        timeout: not an error here, the caller's assertion says who is missing)."""

        def arrived() -> bool:
            received = self.recipients()
            return all(received[a] for a in addresses)

        with contextlib.suppress(TimeoutError):
            wait_until(arrived, timeout, "an email to every address")
        received = self.recipients()
        return {a: received[a] for a in addresses}


class SmtpServer:
    """A local SMTP server (aiosmtpd) handing what it receives to `handler`,
    an `Inbox` unless told otherwise."""

    def __init__(self, handler=None) -> None:
        from aiosmtpd.controller import Controller

        self.inbox = handler if handler is not None else Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        self.url = f"smtp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.controller.stop()


# The product's processes.


def stack_env(
    database_url: str, vhost: RabbitVhost, smtp: SmtpServer, **settings: str
) -> dict[str, str]:
    """What every process of a test stack runs with: this run's database,
    vhost, Redis database and SMTP server, a fresh signing key and metrics
    ports, then the stack's own `settings`."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "BROKER_URL": vhost.url,
        "REDIS_URL": redis_url(),
        "SMTP_URL": smtp.url,
        "SIGNING_KEY": "test-signing-key-" + uuid.uuid4().hex,
        "METRICS_PORT": str(free_port()),
        "PRODUCER_METRICS_PORT": str(free_port()),
        **settings,
    }


class Process:
    """A subprocess in its own process group, with its output in a log file."""

    def __init__(self, argv: list[str], env: dict, log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @classmethod
    def batchctl(cls, args: list[str], env: dict, log_path: Path) -> Process:
        return cls([sys.executable, "-m", "batchctl", *args], env, log_path)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.signal(signal.SIGKILL)
                self.popen.wait()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    # CPU and memory, for the bench (psutil comes with its extra).

    def tree(self) -> list:
        import psutil

        try:
            root = psutil.Process(self.popen.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and all its live descendants."""
        import psutil

        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        import psutil

        try:
            return psutil.Process(self.popen.pid).memory_info().rss
        except psutil.NoSuchProcess:
            return 0
