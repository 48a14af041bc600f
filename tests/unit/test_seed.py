"""A seeded school has what the actions act on: sessions and shared links (SSO
ones included) on ordinary learners, so revocation is exercised on seeded data
(issue #12 item 22)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from batchctl.migrate import upgrade
from batchctl.seed import seed_school
from shared.actions import Actor, apply_action
from shared.models import Learner, LearnerSession, SharedLink
from tests.support.environment import sessions_for


def holders(session: Session, school_id: int, model, *where) -> dict[str, int]:
    """How many learners of the school hold a `model` row, by learner status."""
    rows = session.execute(
        select(Learner.status, func.count(func.distinct(Learner.id)))
        .join(model, model.learner_id == Learner.id)
        .where(Learner.school_id == school_id, ~Learner.is_admin, *where)
        .group_by(Learner.status)
    ).all()
    return dict(rows)


@pytest.fixture(params=["a fresh database", "a database with other schools"])
def seeded(request, tmp_path, session):
    if request.param == "a fresh database":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
        upgrade(url)
        fresh = sessions_for(url)()
        school = seed_school(fresh, learners=1000)
        fresh.commit()
        yield fresh, school
        fresh.close()
    else:
        seed_school(session, learners=3)  # ids no longer start at 1
        school = seed_school(session, learners=1000)
        session.commit()
        yield session, school


def test_seeded_sessions_and_sso_links_are_on_ordinary_learners_and_get_revoked(seeded):
    session, school = seeded
    with_session = holders(session, school.school_id, LearnerSession)
    sso = holders(session, school.school_id, SharedLink, SharedLink.via_sso)
    other_links = holders(session, school.school_id, SharedLink, ~SharedLink.via_sso)
    # Signed-in learners are active ones, about one in seven of them; links
    # (half of them from the SSO portal) go to active and invited learners.
    assert with_session.get("active", 0) > 50 and "invited" not in with_session
    assert sso.get("active", 0) > 20 and sso.get("invited", 0) > 10
    assert other_links.get("active", 0) > 20
    assert session.scalar(
        select(func.count()).where(LearnerSession.learner_id == school.admin_id)
    ), "the admin is signed in too"

    actor = Actor(school.school_id, school.admin_id)
    ways_in = select(Learner.id).where(
        Learner.school_id == school.school_id,
        ~Learner.is_admin,
        Learner.id.in_(select(LearnerSession.learner_id))
        | Learner.id.in_(select(SharedLink.learner_id)),
    )
    for learner_id in session.scalars(ways_in).all():
        assert apply_action(session, "deactivate_learner", actor, learner_id).kind == "applied"
    session.commit()
    assert holders(session, school.school_id, LearnerSession) == {}
    assert holders(session, school.school_id, SharedLink, SharedLink.revoked_at.is_(None)) == {}
