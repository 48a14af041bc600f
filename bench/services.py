"""The bench's own services: a PostgreSQL database, a RabbitMQ vhost, an SMTP
sink, and `batchctl` / `dramatiq` subprocesses whose CPU and memory it reads."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pika
import psutil
import psycopg
from psycopg import sql

PG_ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1/postgres")
RABBIT = os.environ.get("BENCH_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dsn_for(database: str) -> str:
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


def create_database(name: str) -> str:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return dsn_for(name)


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout


class Vhost:
    def __init__(self, name: str) -> None:
        self.name = name
        rabbitmqctl("add_vhost", name)
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        self.url = f"{RABBIT}/{name}"

    def delete(self) -> None:
        with contextlib.suppress(Exception):
            rabbitmqctl("delete_vhost", self.name)


class QueueWatch:
    """Ready messages of a queue, read with a passive declare (real time), and
    ready + unacknowledged from RabbitMQ's Prometheus endpoint (refreshed by
    RabbitMQ every few seconds)."""

    def __init__(self, url: str, vhost: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.vhost = vhost

    def ready(self, queue: str) -> int:
        try:
            return self.channel.queue_declare(queue, passive=True).method.message_count
        except Exception:
            self.channel = self.connection.channel()
            return 0

    def detailed(self) -> dict[str, tuple[int, int]]:
        """queue -> (ready, unacked) from the Prometheus plugin, {} if it is not there."""
        url = (
            "http://127.0.0.1:15692/metrics/detailed?vhost="
            + urllib.request.quote(self.vhost, safe="")
            + "&family=queue_coarse_metrics"
        )
        found: dict[str, list[int]] = {}
        try:
            body = urllib.request.urlopen(url, timeout=2).read().decode()
        except Exception:
            return {}
        for line in body.splitlines():
            for name, slot in (
                ("rabbitmq_detailed_queue_messages_ready{", 0),
                ("rabbitmq_detailed_queue_messages_unacked{", 1),
            ):
                if line.startswith(name):
                    queue = line.split('queue="', 1)[1].split('"', 1)[0]
                    found.setdefault(queue, [0, 0])[slot] = int(float(line.rsplit(" ", 1)[1]))
        return {q: (r, u) for q, (r, u) in found.items()}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()


class Proc:
    """A subprocess in its own process group, output in a log file."""

    def __init__(self, argv: list[str], env: dict, log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.ps = psutil.Process(self.popen.pid)

    @classmethod
    def batchctl(cls, args: list[str], env: dict, log_path: Path) -> Proc:
        return cls([sys.executable, "-m", "batchctl", *args], env, log_path)

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and all its live descendants."""
        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        try:
            return self.ps.memory_info().rss
        except psutil.NoSuchProcess:
            return 0

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 60) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.log.close()

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


def wait_until(predicate, timeout: float, what: str, proc: Proc | None = None, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what}: process exited\n{proc.tail()}")
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s" + (f"\n{proc.tail()}" if proc else ""))


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def consumers(vhost: Vhost, queue: str) -> int:
    out = rabbitmqctl("list_queues", "-p", vhost.name, "name", "consumers", "--no-table-headers")
    found = dict(line.split() for line in out.splitlines() if line.strip())
    return int(found.get(queue, 0))


class SmtpSink:
    """A local SMTP server that counts what it receives (aiosmtpd)."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.received = 0
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook)
                with sink.lock:
                    sink.received += 1
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()
        self.url = f"smtp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.controller.stop()
