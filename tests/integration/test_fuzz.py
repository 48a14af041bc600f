"""Whatever an upstream service sends: no 5xx, every response as documented,
and selection resolution that is exactly right."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import delete, insert, select, update

from batchctl.seed import seed_school
from producer.app import create_app
from producer.schemas import BatchRequest
from producer.submit import SubmitError, submit
from shared.actions import Actor
from shared.models import BatchItem, Group, GroupMembership, Learner
from shared.runtime import current
from tests.support.environment import environment
from tests.support.factories import learner_ids


class ApiOfThisRun:
    """The app on this process's current runtime. Schemathesis reads the
    schema while tests are collected, before the `database_url` fixture has
    switched the runtime to this run's database; each request then goes to
    an app on the runtime in force."""

    app = None

    async def __call__(self, scope, receive, send):
        runtime = current()
        if self.app is None or self.app.state.runtime is not runtime:
            self.app = create_app(runtime, dispatch=False)
        await self.app(scope, receive, send)


schema = schemathesis.openapi.from_asgi("/openapi.json", ApiOfThisRun())


@pytest.fixture(scope="module")
def fuzz_token(database_url):
    # Schemathesis also calls every operation without the token (a 401 each),
    # far more often than a client address may fail to authenticate.
    with environment(AUTH_FAILURES_PER_MINUTE="1000000"):
        with current().transaction() as session:
            token = seed_school(session, learners=50, groups=2, courses=2, name="Fuzz").token
        yield token


@schema.parametrize()
# FUZZ_EXAMPLES raises the count for a long local run; CI runs the same
# derandomized examples every time, so a red build is reproducible.
@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize="FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_never_fails_and_answers_as_documented(case, fuzz_token):
    # All checks but one: ids in a body must name this school's groups and
    # courses, which no schema can say, so a schema-valid body may get 422.
    # The document declares the bearer token, so a negative case may leave it
    # out on purpose (expecting 401): only a token it sends is made real.
    sent = "authorization" in {name.lower() for name in case.headers or {}}
    case.call_and_validate(
        headers={"Authorization": f"Bearer {fuzz_token}"} if sent else {},
        excluded_checks=[positive_data_acceptance],
    )


STATUSES = ["invited", "active", "deactivated", "deleting", "deleted"]
SHOWN = {"invited": {"invited"}, "active": {"active"}, "deactivated": {"deactivated", "deleting"}}


@pytest.fixture(scope="module")
def property_schools(database_url):
    """Two small schools whose learners we re-shape for each example."""
    with current().transaction() as session:
        mine = seed_school(session, learners=24, groups=2, courses=1, name="Property Mine")
        theirs = seed_school(session, learners=10, groups=1, courses=1, name="Property Theirs")
    return mine, theirs


@given(
    statuses=st.lists(st.sampled_from(STATUSES), min_size=24, max_size=24),
    members=st.lists(st.booleans(), min_size=24, max_size=24),
    wanted=st.lists(st.sampled_from(list(SHOWN)), unique=True),
    in_group=st.booleans(),
    exclude=st.lists(st.integers(0, 23), unique=True, max_size=8),
    foreign_excludes=st.integers(0, 3),
)
@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize="FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=list(HealthCheck),
)
def test_a_filter_minus_exclusions_is_exactly_the_set_that_gets_items(
    property_schools, statuses, members, wanted, in_group, exclude, foreign_excludes
):
    mine, theirs = property_schools
    with current().sessions() as session:  # rolled back: each example starts clean
        ids = learner_ids(session, mine.school_id)
        group_id = session.scalar(select(Group.id).where(Group.school_id == mine.school_id))
        session.execute(delete(GroupMembership).where(GroupMembership.learner_id.in_(ids)))
        for learner_id, status, member in zip(ids, statuses, members, strict=True):
            session.execute(update(Learner).where(Learner.id == learner_id).values(status=status))
            if member:
                session.execute(
                    insert(GroupMembership).values(learner_id=learner_id, group_id=group_id)
                )
        foreign = list(
            session.scalars(
                select(Learner.id)
                .where(Learner.school_id == theirs.school_id)
                .limit(foreign_excludes)
            )
        )
        excluded = {ids[i] for i in exclude}
        people = {"status": wanted or None, "group_id": group_id if in_group else None}
        expected = {
            learner_id
            for learner_id, status, member in zip(ids, statuses, members, strict=True)
            if status != "deleted"
            and (not wanted or any(status in SHOWN[w] for w in wanted))
            and (not in_group or member)
            and learner_id not in excluded
        }
        if not in_group and (not wanted or "active" in wanted):
            expected.add(mine.admin_id)  # the admin is an active learner too
        # A destructive action over a filter carries the count the admin confirmed.
        request = BatchRequest.model_validate(
            {
                "action": "deactivate_learner",
                "selection": {
                    "filter": {k: v for k, v in people.items() if v is not None},
                    "exclude_ids": sorted(excluded) + foreign,
                },
                "expected_total": len(expected),
            }
        )

        try:
            batch = submit(session, Actor(mine.school_id, mine.admin_id), request).batch
        except SubmitError as refused:
            session.rollback()
            assert not expected and refused.field == "selection", refused.message
            return
        items = list(
            session.scalars(select(BatchItem.learner_id).where(BatchItem.batch_id == batch.id))
        )
        session.rollback()
    assert len(items) == len(set(items)), "a learner was frozen twice"
    assert set(items) == expected
