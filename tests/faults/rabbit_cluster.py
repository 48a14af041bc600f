"""A three-node RabbitMQ cluster on this machine, beside the main node, for
the cluster fault scenarios (tests/faults/test_cluster.py).

Each node is a `rabbitmq-server -detached` of its own: its own node name,
AMQP and distribution ports, config, enabled-plugins, mnesia and log
directories under one temporary directory owned by the `rabbitmq` user, and
the machine's Erlang cookie (the nodes run as `rabbitmq`, whose home holds
it). The main node (rabbit@localhost, 5672) is never touched. Nodes 2 and 3
join node 1 with `rabbitmqctl join_cluster`; `stop()` stops every node and
removes the directory, also after a failed start. Each scenario gets a vhost
of its own (`ClusterVhost`), the fault harness's stack runs on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pika

from tests.support.services import Queues, free_port, wait_until

HOST = "localhost"  # the main node is rabbit@localhost; nodes resolve it to 127.0.0.1
RABBITMQ_USER = "rabbitmq"
# What the product relies on (deploy/rabbitmq/conf.d), on ports of our own.
CONFIG = """\
listeners.tcp.local = 127.0.0.1:{port}
loopback_users.guest = true
consumer_timeout = 5400000
disk_free_limit.absolute = 50MB
log.file.level = info
"""
ENV_FILE = """\
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
"""


def ctl(node: str, *args: str, timeout: float = 120, check: bool = True) -> str:
    """rabbitmqctl against one node (Debian's wrapper runs it as `rabbitmq`)."""
    result = subprocess.run(
        ["rabbitmqctl", "-q", "-n", node, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl -n {node} {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class Node:
    name: str  # short name, e.g. "bq1_ab12cd"
    port: int
    dist_port: int
    base: Path

    @property
    def node(self) -> str:
        return f"{self.name}@{HOST}"

    @property
    def pid_file(self) -> Path:
        return self.base / "rabbit.pid"

    def env(self) -> dict[str, str]:
        return {
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "HOME": "/var/lib/rabbitmq",  # its .erlang.cookie is the cluster's
        }

    def write_files(self) -> None:
        (self.base / "mnesia").mkdir(parents=True, exist_ok=True)
        (self.base / "log").mkdir(exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(CONFIG.format(port=self.port))
        (self.base / "rabbitmq-env.conf").write_text(ENV_FILE)
        (self.base / "advanced.config").write_text("[].\n")
        (self.base / "enabled_plugins").write_text("[].\n")  # no management: no port clash
        subprocess.run(["chown", "-R", f"{RABBITMQ_USER}:", str(self.base)], check=True)

    def start(self) -> None:
        """Start the node and return at once (`await_started` waits)."""
        env = [f"{key}={value}" for key, value in self.env().items()]
        subprocess.run(
            ["runuser", "-u", RABBITMQ_USER, "--", "env", *env, "rabbitmq-server", "-detached"],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def await_started(self) -> None:
        ctl(self.node, "wait", str(self.pid_file), "--timeout", "120", timeout=150)

    def os_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM: a crash, no goodbye to its peers."""
        pid = self.os_pid()
        assert pid is not None, f"{self.node} has no pid file"
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 30, f"{self.node} to die", every=0.1)

    def stop(self) -> None:
        """A clean stop (`rabbitmqctl stop`), as an operator's restart does."""
        pid = self.os_pid()
        with contextlib.suppress(Exception):
            ctl(self.node, "stop", check=False, timeout=60)
        if pid is not None:
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not _alive(pid), 30, f"{self.node} to stop", every=0.2)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def answers(self) -> bool:
        try:
            pika.BlockingConnection(
                pika.ConnectionParameters("127.0.0.1", self.port, connection_attempts=1)
            ).close()
            return True
        except Exception:  # noqa: BLE001 (down or starting)
            return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (the detached VM is not our child, but be sure).
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


class ClusterQueues(Queues):
    """`Queues` of a vhost over whichever node answers first."""

    def __init__(self, vhost: ClusterVhost) -> None:
        self.vhost = vhost

    @property  # type: ignore[override]
    def url(self) -> str:
        return self.vhost.cluster.url_of(self.vhost.cluster.answering(), self.vhost.name)


class ClusterVhost:
    """A vhost of the cluster; duck-types `tests.support.services.RabbitVhost`
    (`name`, `url`, `queues`, `delete`) so that the fault harness's stack
    runs on it unchanged. Its `url` lists every node: BROKER_URL."""

    def __init__(self, cluster: RabbitCluster) -> None:
        self.cluster = cluster
        self.name = f"batch_cluster_{uuid.uuid4().hex[:8]}"
        node = cluster.answering().node
        ctl(node, "add_vhost", self.name)
        ctl(node, "set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        self.url = ";".join(cluster.url_of(n, self.name) for n in cluster.nodes)
        self.queues = ClusterQueues(self)

    def leaders(self) -> dict[str, str]:
        """{queue: node leading it} for the vhost's quorum queues."""
        out = ctl(
            self.cluster.answering().node,
            "list_queues",
            "-p",
            self.name,
            "name",
            "leader",
            "--no-table-headers",
        )
        rows = (line.split() for line in out.splitlines() if line.strip())
        return {row[0]: row[1] for row in rows if len(row) == 2}

    def members_online(self, queue: str) -> int:
        out = ctl(
            self.cluster.answering().node,
            "list_queues",
            "-p",
            self.name,
            "name",
            "online",
            "--no-table-headers",
        )
        for line in out.splitlines():
            if line.split(None, 1)[:1] == [queue]:
                return sum(node.node in line for node in self.cluster.nodes)
        return 0

    def delete(self) -> None:
        with contextlib.suppress(Exception):
            ctl(self.cluster.answering().node, "delete_vhost", self.name)


class RabbitCluster:
    """Three nodes clustered with `join_cluster`."""

    def __init__(self, size: int = 3) -> None:
        token = uuid.uuid4().hex[:6]
        self.dir = Path(tempfile.mkdtemp(prefix=f"rabbit-cluster-{token}-"))
        os.chmod(self.dir, 0o755)
        self.nodes = [
            Node(f"bq{i}_{token}", free_port(), free_port(), self.dir / f"node{i}")
            for i in range(1, size + 1)
        ]
        self.started_in = 0.0

    def url_of(self, node: Node, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{node.port}/{vhost}"

    def answering(self) -> Node:
        for node in self.nodes:
            if node.answers():
                return node
        raise RuntimeError("no node of the cluster answers")

    def start(self) -> RabbitCluster:
        started = time.monotonic()
        try:
            for node in self.nodes:  # side by side: a node boots in 10-60 s here
                node.write_files()
                node.start()
            for node in self.nodes:
                node.await_started()
            first = self.nodes[0].node
            for node in self.nodes[1:]:
                ctl(node.node, "stop_app")
                ctl(node.node, "join_cluster", first)
                ctl(node.node, "start_app")
                ctl(node.node, "await_startup", timeout=120)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started
        return self

    def running(self) -> list[str]:
        """Nodes the cluster reports running (asked of the first that answers)."""
        out = ctl(self.answering().node, "cluster_status", "--formatter", "json")
        return sorted(json.loads(out)["running_nodes"])

    def node_named(self, name: str) -> Node:
        return next(node for node in self.nodes if node.node == name)

    def restart(self, node: Node) -> float:
        """Start a stopped or killed node again; seconds until it runs."""
        started = time.monotonic()
        node.start()
        node.await_started()
        return time.monotonic() - started

    def stop(self) -> None:
        """Every node at once (one `rabbitmqctl stop` takes 10-20 s here)."""
        threads = [threading.Thread(target=node.stop) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        shutil.rmtree(self.dir, ignore_errors=True)
