"""RabbitMQ as a three-node cluster on quorum queues (QUEUE_TYPE=quorum).

The cluster runs beside the machine's main RabbitMQ node
(tests/faults/rabbit_cluster.py); the stack is the fault harness's (producer,
two worker pods, reconciler, counting SMTP server) with BROKER_URL listing the
three nodes. Scenario 11 SIGKILLs the node leading the queues in the middle of
an add_to_group and a resend_invitation batch; scenario 12 stops a follower
(a minority) and starts it again. Both count as the other scenarios do:
nothing lost, no effect and no email twice. The nodes are stopped by the
fixture's finalizer, whatever happens."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.models import Group
from tests.faults.harness import (
    ROOT,
    SETTINGS,
    FaultStack,
    finished_items,
    measure,
    wait_completed,
    wait_progress,
)
from tests.faults.rabbit_cluster import ClusterVhost, RabbitCluster
from tests.faults.test_faults import first, seed
from tests.support.services import Process, SmtpServer, free_port, stack_env, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(900)]
LEARNERS = 2000
# Small database pools: the cluster's nodes already crowd a two-core machine,
# and a shared PostgreSQL refused connections ("too many clients") in a run here.
QUORUM = {"QUEUE_TYPE": "quorum", "DATABASE_POOL_SIZE": "4", "DATABASE_MAX_OVERFLOW": "4"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    cluster = RabbitCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_stack(
    cluster: RabbitCluster, database_url: str, tmp_path: Path
) -> Iterator[Callable[[], FaultStack]]:
    """The harness's stack (as `start_stack` builds it) on a vhost of the cluster."""
    stacks: list[FaultStack] = []

    def make(pods: int = 2) -> FaultStack:
        vhost = ClusterVhost(cluster)
        smtp = SmtpServer()
        port = free_port()
        env = stack_env(database_url, vhost, smtp, **SETTINGS, **QUORUM, PYTHONPATH=str(ROOT))  # type: ignore[arg-type]
        stack = FaultStack(env, f"http://127.0.0.1:{port}", vhost, smtp, tmp_path)  # type: ignore[arg-type]
        stacks.append(stack)
        stack.producer = Process.batchctl(
            ["serve", "--port", str(port)], env, tmp_path / "producer.log"
        )
        stack.reconciler = Process.batchctl(["reconcile"], env, tmp_path / "reconciler.log")
        for _ in range(pods):
            stack.add_pod()
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def resumed_after(session, batch_ids: list[int], since: float, more: int = 100) -> float:
    """Seconds from `since` until the batches finished `more` learners beyond
    what they had when this was called (in-flight work finishes at once)."""
    start = sum(finished_items(session, b) for b in batch_ids)
    wait_until(
        lambda: sum(finished_items(session, b) for b in batch_ids) >= start + more,
        120,
        "work to resume",
        every=0.1,
    )
    return time.time() - since


def test_11_quorum_queue_leader_sigkilled_mid_batch(cluster, cluster_stack, session, report):
    started = time.time()
    school, chosen = seed(session, "Faults: cluster leader SIGKILL", LEARNERS)
    group = first(session, Group, school.school_id)
    stack = cluster_stack()
    stack.wait_ready("add_to_group", timeout=120)
    stack.wait_ready("resend_invitation", timeout=120)
    with stack.client(school.token) as client:
        groups = client.submit("add_to_group", {"learner_ids": chosen}, {"group_ids": group})
        invites = client.submit("resend_invitation", {"learner_ids": chosen})
    batches = [groups["id"], invites["id"]]
    wait_progress(session, groups["id"], len(chosen), 0.3)
    leaders = stack.vhost.leaders()  # type: ignore[attr-defined]
    leader = cluster.node_named(leaders["add_to_group"])
    done_before = [finished_items(session, b) for b in batches]
    leader.kill()
    fault_end = time.time()
    resumed = resumed_after(session, batches, fault_end)
    for batch_id in batches:
        wait_completed(session, batch_id)
    new_leader = stack.vhost.leaders().get("add_to_group", "?")  # type: ignore[attr-defined]
    back = cluster.restart(leader)  # whole again for the next scenario

    rows = [
        measure(
            session,
            stack,
            "11 cluster leader SIGKILL",
            groups["id"],
            chosen,
            {"group_ids": group},
            fault_end,
            started,
        ),
        measure(
            session,
            stack,
            "11 cluster leader SIGKILL",
            invites["id"],
            chosen,
            {},
            fault_end,
            started,
        ),
    ]
    for row, done in zip(rows, done_before, strict=True):
        row.check(row.failed == 0, f"{row.failed} learners failed")
        row.check(
            leaders.get("resend_invitation") == leader.node,
            f"resend_invitation was led by {leaders.get('resend_invitation')}, not the killed node",
        )
        row.notes.append(
            f"killed leader {leader.node.split('@')[0]} with {done} learners done; "
            f"work resumed after {resumed:.1f} s; new leader {new_leader.split('@')[0]}; "
            f"node back in {back:.0f} s; cluster started in {cluster.started_in:.0f} s"
        )
    for row in rows:
        report(row)


def test_12_minority_node_stopped_and_restarted(cluster, cluster_stack, session, report):
    started = time.time()
    school, chosen = seed(session, "Faults: cluster minority node stopped", LEARNERS)
    stack = cluster_stack()
    stack.wait_ready("resend_invitation", timeout=120)
    with stack.client(school.token) as client:
        batch = client.submit("resend_invitation", {"learner_ids": chosen})
    wait_progress(session, batch["id"], len(chosen), 0.3)
    vhost: ClusterVhost = stack.vhost  # type: ignore[assignment]
    leader = vhost.leaders()["resend_invitation"]
    follower = next(node for node in reversed(cluster.nodes) if node.node != leader)
    stopped_at, before = time.time(), finished_items(session, batch["id"])
    follower.stop()
    stopped_for = time.time() - stopped_at
    during = finished_items(session, batch["id"]) - before
    back = cluster.restart(follower)
    fault_end = time.time()
    wait_until(
        lambda: vhost.members_online("resend_invitation") == len(cluster.nodes),
        120,
        "the restarted node to rejoin the queue",
    )
    rejoined = time.time() - fault_end
    wait_completed(session, batch["id"])

    row = measure(
        session, stack, "12 cluster minority node stop", batch["id"], chosen, {}, fault_end, started
    )
    row.check(row.failed == 0, f"{row.failed} learners failed")
    row.check(len(cluster.running()) == len(cluster.nodes), "the stopped node is not running again")
    row.notes.append(
        f"stopped follower {follower.node.split('@')[0]} for {stopped_for + back:.0f} s "
        f"({during} learners done while it was down); back in {back:.0f} s, "
        f"queue member online again {rejoined:.1f} s later"
    )
    report(row)
