"""On SQLite (the embedded mode), the generic path and the dry run derived
from the same rules agree for every action and every kind of learner."""

from __future__ import annotations

import pytest

from shared.contract import Action
from tests.support.rules_check import Scene, reasons


@pytest.fixture
def scene(session, school) -> Scene:
    return Scene(session, school)


@pytest.mark.parametrize("action", list(Action))
def test_the_dry_run_predicts_what_the_generic_path_does(scene, action):
    assert scene.predicted(action) == reasons(scene.generic(action))


def test_every_kind_of_learner_gets_an_outcome_from_every_action(scene):
    for action in Action:
        results = scene.generic(action)
        assert set(results) == {*scene.learners[action]}
        assert all(kind in {"applied", "skipped"} for kind, _, _ in results.values())
