import json
import os
import subprocess
import sys

from sqlalchemy import func, select

from producer.tokens import hash_token
from shared.models import ApiToken, GroupMembership, Learner


def test_batchctl_seed_prints_ids_and_a_working_token(database_url, session):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchctl",
            "seed",
            "--learners",
            "2000",
            "--groups",
            "4",
            "--courses",
            "6",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DATABASE_URL": database_url},
    )
    seeded = json.loads(result.stdout)
    assert set(seeded) == {"school_id", "admin_id", "token"}

    statuses = dict(
        session.execute(
            select(Learner.status, func.count())
            .where(Learner.school_id == seeded["school_id"])
            .group_by(Learner.status)
        ).all()
    )
    assert statuses["invited"] + statuses["active"] == 2001
    assert 400 < statuses["invited"] < 800
    admin = session.get(Learner, seeded["admin_id"])
    assert admin.is_admin and admin.school_id == seeded["school_id"]
    token_row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(seeded["token"]))
    )
    assert token_row.learner_id == seeded["admin_id"]
    assert seeded["token"] not in {t.token_hash for t in session.scalars(select(ApiToken))}
    members = session.scalar(
        select(func.count())
        .select_from(GroupMembership)
        .join(Learner)
        .where(Learner.school_id == seeded["school_id"])
    )
    assert members > 0
