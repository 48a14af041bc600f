"""`batchctl` turns its options into the request the API gets, and refuses
what it cannot turn into one before anything is sent (batchctl/cli.py).

The API is the app itself, in process on the embedded database: what a
command submitted is read back with `batchctl items` and `batchctl status`.
"""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from batchctl import cli
from tests.support.factories import learner_ids


@pytest.fixture
def batchctl(school, monkeypatch: pytest.MonkeyPatch):
    """Run `batchctl ARGS...` as the school's admin against the in-process API."""
    from fastapi.testclient import TestClient

    from batch_actions_client import BatchClient
    from producer.app import create_app

    app = create_app(dispatch=False)
    monkeypatch.setattr(
        cli, "_client", lambda url, token: BatchClient("", token, http=TestClient(app))
    )
    monkeypatch.setattr(os, "execv", _no_exec)
    runner = CliRunner()

    def run(*args: str, token: str | None = school.token):
        env = {"BATCH_API_TOKEN": token} if token else {}
        return runner.invoke(cli.app, list(args), env=env)

    return run


def _no_exec(*argv) -> None:
    raise AssertionError(f"batchctl would have run {argv}")


def submitted(batchctl, result) -> tuple[dict, set[int]]:
    """The batch a `submit` created (as `status` shows it) and its learners (from `items`)."""
    assert result.exit_code == 0, result.output
    batch_id = json.loads(result.stdout.strip().splitlines()[-1])["id"]
    shown = batchctl("status", str(batch_id))
    assert shown.exit_code == 0, shown.output
    items = batchctl("items", str(batch_id))
    assert items.exit_code == 0, items.output
    chosen = {json.loads(line)["learner_id"] for line in items.stdout.splitlines()}
    return json.loads(shown.stdout.strip().splitlines()[-1]), chosen


def test_learner_ids_are_read_with_commas_or_spaces_and_from_a_file(
    batchctl, session, school, tmp_path
) -> None:
    ids = learner_ids(session, school.school_id)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"{ids[3]}\n{ids[4]}\n")
    result = batchctl(
        "submit",
        "deactivate_learner",
        "--learner-ids",
        f"{ids[0]}, {ids[1]} {ids[2]}",
        "--ids-file",
        str(ids_file),
    )
    batch, chosen = submitted(batchctl, result)
    assert batch["action"] == "deactivate_learner"
    assert chosen == set(ids[:5])


def test_a_filter_takes_repeated_statuses_and_leaves_out_excluded_ids(
    batchctl, session, school
) -> None:
    active = learner_ids(session, school.school_id, "active")
    invited = learner_ids(session, school.school_id, "invited")
    result = batchctl(
        "submit",
        "add_to_group",
        "--status",
        "active",
        "--status",
        "invited",
        "--exclude-ids",
        f"{active[0]},{invited[0]}",
        "--group-ids",
        str(school_group(session, school)),
    )
    batch, chosen = submitted(batchctl, result)
    # The admin is active too (the action skips them: `self`).
    assert chosen == {school.admin_id, *active[1:], *invited[1:]}
    assert batch["params"] == {"group_ids": [school_group(session, school)]}


def test_all_not_activated_selects_the_invited(batchctl, session, school) -> None:
    batch, chosen = submitted(
        batchctl, batchctl("submit", "resend_invitation", "--all-not-activated")
    )
    assert chosen == set(learner_ids(session, school.school_id, "invited"))


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        (["--learner-ids", "12,x"], "ids are whole numbers separated by commas"),
        (["--learner-ids", "1.5"], "ids are whole numbers separated by commas"),
        (["--status", "active", "--exclude-ids", "3;4"], "ids are whole numbers"),
        ([], "select learners: --learner-ids, --ids-file, a filter"),
    ],
    ids=["letter-in-ids", "fraction", "bad-separator", "no-selection"],
)
def test_a_submit_that_cannot_become_a_request_is_refused_as_a_usage_error(
    batchctl, args: list[str], refusal: str
) -> None:
    result = batchctl("submit", "deactivate_learner", *args)
    assert result.exit_code == 2, result.output
    assert refusal in squeezed(result.output)


def test_a_batch_id_must_be_a_number(batchctl) -> None:
    for command in ("status", "items", "cancel"):
        result = batchctl(command, "latest")
        assert result.exit_code == 2, result.output
        assert "Invalid value for 'batch_id'" in squeezed(result.output)


def test_commands_that_call_the_api_need_a_token(batchctl) -> None:
    result = batchctl("status", "1", token=None)
    assert result.exit_code == 2
    assert "Missing option '--token'" in squeezed(result.output)


def test_an_unknown_action_is_the_api_refusal_naming_the_field(batchctl) -> None:
    result = batchctl("submit", "promote", "--learner-ids", "1")
    assert result.exit_code == 1
    assert "HTTP 422" in result.output and "action" in result.output


def test_a_worker_for_an_unknown_queue_is_refused_before_it_starts(batchctl) -> None:
    result = batchctl("worker", "--queues", "add_to_group", "--queues", "promote")
    assert result.exit_code == 2, result.output
    assert "unknown queues ['promote']" in squeezed(result.output)


def test_dead_letters_need_rabbitmq(batchctl) -> None:
    result = batchctl("dlq", "list")
    assert result.exit_code == 1
    assert "dead-letter queues need RabbitMQ" in squeezed(result.output)


def school_group(session, school) -> int:
    from sqlalchemy import select

    from shared.models import Group

    return session.scalar(
        select(Group.id).where(Group.school_id == school.school_id).order_by(Group.id).limit(1)
    )


def squeezed(output: str) -> str:
    """Click's error box, on one line: its borders and wrapping removed."""
    lines = [line.strip(" │╭╮╰╯─\n") for line in output.splitlines()]
    return " ".join(line for line in lines if line)
