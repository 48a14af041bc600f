"""A small batch goes ahead of a big batch's messages already in the queue:
every queue is a RabbitMQ priority queue and dispatch publishes a batch that
fits in one window at the higher priority (docs/CONTRACT.md, "Bounded and fair")."""

from __future__ import annotations

import json
import secrets

import pika
from sqlalchemy import select

from batchctl.migrate import upgrade
from batchctl.seed import seed_school
from producer.schemas import BatchRequest
from producer.submit import submit
from shared.actions import Actor
from shared.broker import build_broker
from shared.dispatch import dispatch_step
from shared.models import Group
from shared.publish import ConfirmedPublisher
from shared.settings import Settings
from tests.support.environment import sessions_for
from tests.support.factories import learner_ids
from tests.support.services import RabbitVhost

WINDOW = 40


def test_a_small_batch_is_delivered_before_a_big_batch_already_queued(fresh_pg_url):
    # Its own database: the session stack's producer would dispatch these batches itself.
    upgrade(fresh_pg_url)
    sessions = sessions_for(fresh_pg_url)
    with sessions() as session:
        seeded = seed_school(session, learners=100, groups=1, courses=1, name="Priority School")
        session.commit()
        admin = Actor(seeded.school_id, seeded.admin_id)
        group = session.scalar(select(Group.id).where(Group.school_id == seeded.school_id))
        learners = learner_ids(session, seeded.school_id)

        def batch(selection: dict) -> int:
            request = BatchRequest.model_validate(
                {"action": "add_to_group", "selection": selection, "params": {"group_ids": [group]}}
            )
            batch_id = submit(session, admin, request).batch.id
            session.commit()
            return batch_id

        big = batch({"filter": {}})
        small = batch({"learner_ids": list(learners[:3])})

    vhost = RabbitVhost()
    broker = build_broker(
        Settings(broker_url=vhost.url, database_url=fresh_pg_url, signing_key=secrets.token_hex(32))
    )
    publisher = ConfirmedPublisher(broker)
    try:
        queued_big = dispatch_step(sessions, big, publisher, WINDOW)
        queued_small = dispatch_step(sessions, small, publisher, WINDOW)
        assert queued_big > 3 * queued_small and queued_small == 3

        connection = pika.BlockingConnection(pika.URLParameters(vhost.url))
        channel = connection.channel()
        order = []
        while (got := channel.basic_get("add_to_group", auto_ack=True))[0] is not None:
            order.append(json.loads(got[2])["args"][0])
        connection.close()
    finally:
        publisher.close()
        broker.close()
        vhost.delete()

    assert order == [small] * queued_small + [big] * queued_big
