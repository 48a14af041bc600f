"""Real services for end-to-end tests: a RabbitMQ vhost of our own, a Redis
database of our own, an SMTP server that records what it receives, and the
producer and worker processes started the way `batchctl` starts them."""

from __future__ import annotations

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
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path

import httpx

RABBIT = "amqp://guest:guest@127.0.0.1:5672"
REDIS_TEST_DB = 11


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


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


class RabbitVhost:
    """A throwaway vhost, so queues of one test run never meet another's."""

    def __init__(self) -> None:
        self.name = f"batch_test_{uuid.uuid4().hex[:8]}"
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        self.url = f"{RABBIT}/{self.name}"

    def queue_depths(self) -> dict[str, int]:
        out = subprocess.run(
            [
                "rabbitmqctl",
                "-q",
                "list_queues",
                "-p",
                self.name,
                "name",
                "messages",
                "--no-table-headers",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return {name: int(n) for name, n in (line.split() for line in out.splitlines() if line)}

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)


def redis_url() -> str:
    """Progress keys are namespaced by database, so runs never need a flush."""
    return f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"


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


class SmtpServer:
    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.inbox = Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        self.url = f"smtp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.controller.stop()


def stack_env(
    database_url: str, vhost: RabbitVhost, smtp: SmtpServer, **settings: str
) -> dict[str, str]:
    """What every process of a test stack runs with: this run's database,
    vhost, Redis database and SMTP server, a fresh signing key and metrics
    port, then the stack's own `settings`."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "BROKER_URL": vhost.url,
        "REDIS_URL": redis_url(),
        "SMTP_URL": smtp.url,
        "SIGNING_KEY": "test-signing-key-" + uuid.uuid4().hex,
        "METRICS_PORT": str(free_port()),
        **settings,
    }


class Process:
    """A `batchctl` subprocess with its output in a log file."""

    def __init__(self, args: list[str], env: dict, log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "batchctl", *args],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_http(url: str, process: Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"process exited:\n{process.output()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not up:\n{process.output()[-3000:]}")


def wait_for_consumers(vhost: RabbitVhost, queue: str, process: Process, timeout=60) -> None:
    """Until the worker process consumes from `queue` (workers are ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"worker exited:\n{process.output()[-3000:]}")
        out = subprocess.run(
            [
                "rabbitmqctl",
                "-q",
                "list_queues",
                "-p",
                vhost.name,
                "name",
                "consumers",
                "--no-table-headers",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        consumers = dict(line.split() for line in out.splitlines() if line)
        if int(consumers.get(queue, 0)) > 0:
            return
        time.sleep(0.3)
    raise TimeoutError(f"no consumer on {queue}:\n{process.output()[-3000:]}")
