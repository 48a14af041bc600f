"""Batches stored before the fix of issue #12 item 1: the migration takes the
search text out of their selection and hashes their Idempotency-Key and body
fingerprint the way the producer now does, so a retry of a recent request is
still recognised."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, insert, select

from batchctl.migrate import upgrade
from producer.idempotency import hashed
from shared.models import Batch, School
from shared.settings import Settings
from tests.support.environment import environment

SIGNING_KEY = "migration-test-signing-key-" + "k" * 32
EMAIL = "zed.migrated@mail.example.org"
PLAIN_BODY_HASH = "a" * 64  # what producer.submit.request_hash used to store


@pytest.fixture(params=["postgresql", "sqlite"])
def old_database(request, fresh_pg_url, tmp_path) -> str:
    url = fresh_pg_url if request.param == "postgresql" else f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0002_batch_cancel_reason")
    return url


def test_old_batches_lose_their_search_text_and_clear_keys(old_database):
    engine = create_engine(old_database)
    with engine.begin() as connection:
        school = connection.scalar(insert(School).values(name="Old").returning(School.id))
        old = {"school_id": school, "action": "delete_learner", "params": {}, "counts": {}}
        connection.execute(
            insert(Batch),
            [
                {
                    **old,
                    "selection": {"filter": {"q": EMAIL, "status": None}, "exclude_ids": 2},
                    "idempotency_key": f"delete {EMAIL}",
                    "request_hash": PLAIN_BODY_HASH,
                },
                {
                    **old,
                    "selection": {"learner_ids": 3},
                    "idempotency_key": None,
                    "request_hash": PLAIN_BODY_HASH,
                },
            ],
        )

    with environment(SIGNING_KEY=SIGNING_KEY):
        upgrade(old_database)

    with engine.connect() as connection:
        rows = connection.execute(
            select(Batch.selection, Batch.idempotency_key, Batch.request_hash)
            .where(Batch.school_id == school)
            .order_by(Batch.id)
        ).all()
    engine.dispose()
    expected = hashed(f"delete {EMAIL}", Settings(signing_key=SIGNING_KEY))
    [fingerprint, *_] = expected.body_fingerprints(PLAIN_BODY_HASH)
    assert [tuple(row) for row in rows] == [
        (
            {"filter": {"q": "[not kept]", "status": None}, "exclude_ids": 2},
            expected.stored,
            fingerprint,
        ),
        ({"learner_ids": 3}, None, None),
    ]
