"""An admin deactivated by another admin stops acting through the batches they
queued, through the real pipeline (HTTP, RabbitMQ, the workers' single
statement on PostgreSQL): their running batch ends `cancelled`, reason
`admin_lost_access`, and no message of it applies anything afterwards
(issue #12 item 18)."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select

from shared.dispatch import item_message
from shared.models import AuditEntry, Batch, GroupMembership
from shared.publish import ConfirmedPublisher
from tests.support.factories import learner_ids, make_group
from tests.support.parked import make_admin, park_batch
from tests.support.services import wait_until


def test_deactivating_an_admin_cancels_their_running_batch(stack, session, school):
    group_id, _, _ = make_group(session, school.school_id)
    chosen = learner_ids(session, school.school_id, status="active")[:20]
    queued = park_batch(
        session, school.school_id, school.admin_id, "add_to_group", chosen, group_ids=[group_id]
    )
    other_admin, other_token = make_admin(session, school.school_id)
    session.commit()

    with stack.client(other_token) as client:
        revoke = client.submit("deactivate_learner", {"learner_ids": [school.admin_id]})
        assert client.wait(revoke["id"], timeout=120)["counts"]["applied"] == 1

        def cancelled():
            view = client.batch(queued)
            return view if view["status"] == "cancelled" else None

        view = wait_until(cancelled, 60, "the deactivated admin's batch to be cancelled")
        # The trail names who, in effect, cancelled it: the admin who deactivated its admin.
        who = [(e["actor_id"], e["reason"]) for e in client.audit(batch_id=queued)]
    assert who[-1] == (other_admin, "admin_lost_access")
    assert [e for e in who if e[1] == "admin_lost_access"] == [who[-1]]
    assert view["cancel_reason"] == "admin_lost_access"
    assert (view["counts"]["cancelled"], view["counts"]["applied"]) == (20, 0)
    deactivated_token = httpx.get(
        f"{stack.base_url}/v1/batches/{queued}",
        headers={"Authorization": f"Bearer {school.token}"},
    )
    assert deactivated_token.status_code == 401

    # The batch's messages arriving now (redelivered, or republished) change nobody.
    broker = stack.broker()
    publisher = ConfirmedPublisher(broker)
    publisher.publish([item_message("add_to_group", queued, lid) for lid in chosen])
    publisher.close()
    broker.close()
    wait_until(
        lambda: stack.vhost.queue_depths().get("add_to_group", 0) == 0,
        60,
        "the workers to take the queued batch's messages",
    )
    session.expire_all()
    members = select(func.count()).where(GroupMembership.group_id == group_id)
    assert session.scalar(members) == 0
    assert (
        session.scalar(
            select(func.count()).where(
                AuditEntry.batch_id == queued, AuditEntry.learner_id.is_not(None)
            )
        )
        == 0
    )
    assert session.scalar(select(Batch.status).where(Batch.id == queued)) == "cancelled"
