"""`batchctl submit` shows the count and asks before it deactivates or deletes
over a filter, and `batchctl retry` retries a batch's failed learners
(batchctl/cli.py; issue #14 sections 3 and 5).

The API is the app itself, in process on the embedded database (as in
test_cli_parsing.py); what a command did is read back through the API.
"""

from __future__ import annotations

import json
import os

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from batchctl import cli
from shared.models import Batch, BatchItem
from tests.support.factories import learner_ids


@pytest.fixture
def api(school):
    """The school admin's client of the in-process API."""
    from fastapi.testclient import TestClient

    from batch_actions_client import BatchClient
    from producer.app import create_app

    return BatchClient("", school.token, http=TestClient(create_app(dispatch=False)))


@pytest.fixture
def batchctl(api, school, monkeypatch: pytest.MonkeyPatch):
    """Run `batchctl ARGS...` as the school's admin; `terminal` says whether
    someone sits at it (CliRunner's stdin is never a terminal)."""
    monkeypatch.setattr(cli, "_client", lambda url, token: _unclosed(api))
    monkeypatch.setattr(os, "execv", _no_exec)
    runner = CliRunner()

    def run(*args: str, terminal: bool = False, answer: str = "", token: str = school.token):
        monkeypatch.setattr(cli, "_interactive", lambda: terminal)
        return runner.invoke(cli.app, list(args), env={"BATCH_API_TOKEN": token}, input=answer)

    return run


class _unclosed:
    """The shared client, left open when a command's `with` block ends."""

    def __init__(self, client) -> None:
        self.client = client

    def __enter__(self):
        return self.client

    def __exit__(self, *exc) -> None:
        return None


def _no_exec(*argv) -> None:
    raise AssertionError(f"batchctl would have run {argv}")


def batch_ids(api) -> list[int]:
    return [b["id"] for b in api.batches(limit=500)]


def test_a_filter_deactivation_shows_the_count_and_asks(batchctl, api, session, school) -> None:
    invited = len(learner_ids(session, school.school_id, "invited"))
    result = batchctl(
        "submit", "deactivate_learner", "--status", "invited", terminal=True, answer="y\n"
    )
    assert result.exit_code == 0, result.output
    assert f"Deactivate {invited:,} learners? [y/N]" in result.output
    made = json.loads(result.stdout.strip().splitlines()[-1])
    assert api.batch(made["id"])["total"] == invited


def test_no_for_an_answer_submits_nothing(batchctl, api) -> None:
    before = batch_ids(api)
    result = batchctl("submit", "delete_learner", "--status", "active", terminal=True, answer="n\n")
    assert result.exit_code == 1, result.output
    assert "Delete" in result.output and "nothing submitted" in result.output
    assert batch_ids(api) == before


def test_without_a_terminal_it_refuses_unless_told_yes(batchctl, api, session, school) -> None:
    before = batch_ids(api)
    refused = batchctl("submit", "delete_learner", "--status", "invited")
    assert refused.exit_code == 2, refused.output
    assert "pass --yes" in refused.output
    assert batch_ids(api) == before

    told = batchctl("submit", "delete_learner", "--status", "invited", "--yes")
    assert told.exit_code == 0, told.output
    made = json.loads(told.stdout.strip().splitlines()[-1])
    assert api.batch(made["id"])["total"] == len(learner_ids(session, school.school_id, "invited"))


def test_explicit_ids_and_other_actions_are_not_asked_about(batchctl, session, school) -> None:
    ids = learner_ids(session, school.school_id)[:2]
    by_id = batchctl("submit", "deactivate_learner", "--learner-ids", f"{ids[0]},{ids[1]}")
    assert by_id.exit_code == 0, by_id.output
    resend = batchctl("submit", "resend_invitation", "--status", "invited")
    assert resend.exit_code == 0, resend.output
    assert "?" not in by_id.output + resend.output


def test_the_api_refuses_a_filter_delete_without_the_count(api, session, school) -> None:
    """An upstream service skipping the dry run; and a count that changed."""
    from batch_actions_client import ApiError

    before = batch_ids(api)
    selection = {"filter": {"status": ["invited"]}}
    with pytest.raises(ApiError) as unconfirmed:
        api.submit("delete_learner", selection)
    assert unconfirmed.value.status == 422
    assert "expected_total" in str(unconfirmed.value) and "dry run" in str(unconfirmed.value)
    total = api.submit("delete_learner", selection, dry_run=True)["total"]
    with pytest.raises(ApiError) as stale:
        api.submit("delete_learner", selection, expected_total=total - 1)
    assert stale.value.status == 409 and f"{total:,} learners now" in str(stale.value)
    assert batch_ids(api) == before, "a refused submit left a batch behind"


def finished_with_failures(session, batch_id: int, failed: list[int]) -> None:
    """The batch ended with these learners `failed` (as the workers record an
    error they gave up on), the rest applied."""
    session.commit()  # a fresh snapshot: the API wrote since this session last read
    session.execute(
        update(BatchItem).where(BatchItem.batch_id == batch_id).values(outcome="applied")
    )
    session.execute(
        update(BatchItem)
        .where(BatchItem.batch_id == batch_id, BatchItem.learner_id.in_(failed))
        .values(outcome="failed", error="OperationalError")
    )
    session.execute(update(Batch).where(Batch.id == batch_id).values(status="completed", counts={}))
    session.commit()


def test_retry_makes_a_batch_of_the_failed_learners(batchctl, api, session, school) -> None:
    ids = learner_ids(session, school.school_id)[:5]
    first = api.submit("deactivate_learner", {"learner_ids": ids})
    finished_with_failures(session, first["id"], ids[1:3])

    result = batchctl("retry", str(first["id"]))
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout.strip().splitlines()[-1])
    retried = api.batch(made["id"])
    assert retried["retry_of"] == first["id"] and retried["action"] == "deactivate_learner"
    assert sorted(i["learner_id"] for i in api.items(made["id"])) == ids[1:3]
    assert api.batch(first["id"])["retry_of"] is None
    # In the audit trail like any submit, by the admin who retried.
    submitted = list(api.audit(batch_id=made["id"], action="batch.submitted"))
    assert [e["actor_id"] for e in submitted] == [school.admin_id]


def test_retry_of_a_batch_with_nothing_failed_or_still_running_is_refused(
    batchctl, api, session, school
) -> None:
    ids = learner_ids(session, school.school_id)[:3]
    running = api.submit("deactivate_learner", {"learner_ids": ids})
    early = batchctl("retry", str(running["id"]))
    assert early.exit_code == 1 and "HTTP 409" in early.output and "running" in early.output
    finished_with_failures(session, running["id"], [])
    before = batch_ids(api)
    nothing = batchctl("retry", str(running["id"]))
    assert nothing.exit_code == 1, nothing.output
    assert "HTTP 409" in nothing.output and "no failed learners" in nothing.output
    assert batch_ids(api) == before
    missing = batchctl("retry", "999999999")
    assert missing.exit_code == 1 and "HTTP 404" in missing.output
