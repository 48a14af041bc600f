"""Issue #13 sections 1 and 2 on the embedded mode (SQLite): which
identifiers are one, what a spreadsheet would run, what the schema refuses,
and a selection by identifiers and its CSV through the API. The real
pipeline's version is tests/integration/test_identifiers_and_csv.py."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select, update

from producer.items import cell
from producer.schemas import BatchRequest, EmailsSelection, ExternalIdsSelection
from producer.selection import IDENTIFIER_CHUNK, identifiers
from shared.models import Batch, Learner
from tests.support.factories import learner_ids


def test_an_email_in_any_case_is_one_identifier_kept_as_first_sent():
    sent = EmailsSelection(emails=["Ann@X.org", "bob@x.org", "ann@x.org", "BOB@X.ORG", "c@x.org"])
    assert identifiers(sent) == ["Ann@X.org", "bob@x.org", "c@x.org"]
    # External ids are the school's own: their case is part of them.
    ids = ExternalIdsSelection(external_ids=["sis-1", "SIS-1", "sis-1"])
    assert identifiers(ids) == ["sis-1", "SIS-1"]


@pytest.mark.parametrize("text", ["=1+2", "+31 6", "-2", "@SUM(A1)"])
def test_a_cell_that_a_spreadsheet_would_run_starts_with_a_quote(text):
    assert cell(text) == "'" + text


@pytest.mark.parametrize("text", ["sis-1", "a=b@x.org", "", None])
def test_other_cells_are_as_they_are(text):
    assert cell(text) == text


@pytest.mark.parametrize(
    ("selection", "where"),
    [
        ({"emails": ["a@x.org"] * 100_001}, ("selection", "emails", "emails")),
        ({"emails": []}, ("selection", "emails", "emails")),
        (
            {"external_ids": ["ok", ""] + [""] * 50_000},
            ("selection", "external_ids", "external_ids", 1),
        ),
        ({"external_ids": ["tab\there"]}, ("selection", "external_ids", "external_ids", 0)),
        ({"external_ids": ["x" * 256]}, ("selection", "external_ids", "external_ids", 0)),
        ({"external_ids": [7]}, ("selection", "external_ids", "external_ids", 0)),
    ],
)
def test_the_schema_refuses_a_bad_list_in_one_error_naming_where(selection, where):
    with pytest.raises(ValidationError) as refused:
        BatchRequest.model_validate({"action": "resend_invitation", "selection": selection})
    [error] = refused.value.errors()
    assert error["loc"] == where


@pytest.fixture
def api(school):
    from producer.app import create_app

    client = TestClient(create_app(dispatch=False))
    client.headers["Authorization"] = f"Bearer {school.token}"
    return client


def test_selecting_by_emails_and_external_ids_and_the_items_as_csv(api, session, school):
    first, second = learner_ids(session, school.school_id, status="active")[:2]
    session.execute(update(Learner).where(Learner.id == first).values(external_id="-7"))
    session.commit()
    email = session.scalar(select(Learner.email).where(Learner.id == second))

    answer = api.post(
        "/v1/batches",
        json={
            "action": "deactivate_learner",
            "selection": {"external_ids": ["-7", "nobody", "sis-0"]},
            "dry_run": True,
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["total"] == 1
    assert answer.json()["unmatched"] == {"count": 2, "first": ["nobody", "sis-0"]}

    answer = api.post(
        "/v1/batches",
        json={"action": "resend_invitation", "selection": {"emails": [email.upper(), "no@x.org"]}},
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["unmatched"] == {"count": 1, "first": ["no@x.org"]}
    batch_id = answer.json()["id"]
    assert session.get(Batch, batch_id).selection == {"emails": 2}

    answer = api.post(
        "/v1/batches",
        json={"action": "deactivate_learner", "selection": {"external_ids": ["-7"]}},
    )
    assert answer.status_code == 202, answer.text
    rows = list(
        csv.reader(io.StringIO(api.get(f"/v1/batches/{answer.json()['id']}/items?format=csv").text))
    )
    assert rows == [
        ["learner_id", "external_id", "email", "outcome", "reason", "error", "finished_at"],
        [str(first), "'-7", rows[1][2], "pending", "", "", ""],
    ]


def test_a_list_longer_than_a_chunk_is_resolved_whole(api, session, school):
    ids = [f"sis-{n}" for n in range(1, 41)] + [f"none-{n}" for n in range(IDENTIFIER_CHUNK)]
    answer = api.post(
        "/v1/batches",
        json={"action": "resend_invitation", "selection": {"external_ids": ids}, "dry_run": True},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["total"] == 40
    assert answer.json()["unmatched"]["count"] == IDENTIFIER_CHUNK
    assert answer.json()["unmatched"]["first"] == [f"none-{n}" for n in range(20)]
