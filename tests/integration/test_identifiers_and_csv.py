"""Issue #13 sections 1 and 2 through the real producer and workers: an
upstream service selects learners by its own identifiers (emails in any
case, `external_id`s), hears which ones matched nobody (never stored), and
downloads a batch's results as CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import func, select, update

from batchctl.seed import seed_school
from shared.models import AuditEntry, Batch, BatchItem, Learner
from tests.integration.test_erasure_and_idempotency import tables_mentioning
from tests.support.factories import learner_ids, make_group
from tests.support.services import wait_until

HEADER = ["learner_id", "external_id", "email", "outcome", "reason", "error", "finished_at"]


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def post_batch(stack, token: str, body: dict) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/batches", json=body, headers=auth(token), timeout=60)


def finished(stack, token: str, batch_id: int) -> dict:
    def done() -> dict | None:
        view = httpx.get(f"{stack.base_url}/v1/batches/{batch_id}", headers=auth(token)).json()
        return view if view["status"] == "completed" else None

    return wait_until(done, 120, f"batch {batch_id} to complete", stack.worker)


def item_ids(session, batch_id: int) -> list[int]:
    session.expire_all()
    query = select(BatchItem.learner_id).where(BatchItem.batch_id == batch_id)
    return list(session.scalars(query.order_by(BatchItem.learner_id)))


def learners(session, ids: list[int]) -> list[Learner]:
    return [session.get(Learner, i) for i in ids]


def test_emails_in_any_case_select_the_schools_learners_and_the_rest_are_only_answered(
    stack, session, school
):
    theirs = seed_school(session, learners=3, groups=1, courses=1, name="Theirs")
    group_id, _, _ = make_group(session, school.school_id)
    session.commit()
    ann, bob = learners(session, learner_ids(session, school.school_id, status="active")[:2])
    their_email = session.scalar(
        select(Learner.email).where(Learner.school_id == theirs.school_id, ~Learner.is_admin)
    )
    nobody = "Nobody.Qx7@Nowhere.example.org"
    body = {
        "action": "add_to_group",
        "params": {"group_ids": [group_id]},
        "selection": {
            "emails": [ann.email.upper(), nobody, bob.email.title(), their_email, ann.email]
        },
    }

    dry = post_batch(stack, school.token, {**body, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["total"] == 2 and dry.json()["counts"]["applied"] == 2
    assert dry.json()["unmatched"] == {"count": 2, "first": [nobody, their_email]}

    submitted = post_batch(stack, school.token, body)
    assert submitted.status_code == 202, submitted.text
    answer = submitted.json()
    assert answer["total"] == 2
    assert answer["unmatched"] == {"count": 2, "first": [nobody, their_email]}
    assert finished(stack, school.token, answer["id"])["counts"]["applied"] == 2
    assert item_ids(session, answer["id"]) == sorted([ann.id, bob.id])

    # The batch keeps how many emails were sent, not one of them.
    assert session.get(Batch, answer["id"]).selection == {"emails": 5}
    audit = session.scalars(select(AuditEntry).where(AuditEntry.batch_id == answer["id"])).all()
    assert {e.learner_id for e in audit if e.learner_id} == {ann.id, bob.id}
    assert tables_mentioning(session, nobody, nobody.lower()) == {}


def test_external_ids_select_exactly_and_need_no_expected_total_to_deactivate(
    stack, session, school
):
    # 60 learners: sis-41..sis-60 exist in their school only.
    seed_school(session, learners=60, groups=1, courses=1, name="Theirs")
    session.commit()
    chosen = learners(session, learner_ids(session, school.school_id, status="active")[:3])
    shown = httpx.get(
        f"{stack.base_url}/v1/learners", params={"limit": 500}, headers=auth(school.token)
    ).json()["learners"]
    shown_ids = {p["id"]: p["external_id"] for p in shown}
    assert {le.id: shown_ids[le.id] for le in chosen} == {le.id: le.external_id for le in chosen}
    assert all(le.external_id.startswith("sis-") for le in chosen)

    wanted = [le.external_id for le in chosen]
    body = {
        "action": "deactivate_learner",
        "selection": {"external_ids": [*wanted, "sis-50", "SIS-1", "sis-gone-77"]},
    }
    dry = post_batch(stack, school.token, {**body, "dry_run": True}).json()
    assert dry["total"] == 3
    assert dry["unmatched"] == {"count": 3, "first": ["sis-50", "SIS-1", "sis-gone-77"]}

    submitted = post_batch(stack, school.token, body)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["unmatched"]["count"] == 3
    finished(stack, school.token, submitted.json()["id"])
    assert item_ids(session, submitted.json()["id"]) == sorted(le.id for le in chosen)
    assert tables_mentioning(session, "sis-gone-77") == {}

    # Every other kind of selection answers an empty `unmatched` too.
    by_ids = post_batch(
        stack,
        school.token,
        {"action": "resend_invitation", "selection": {"learner_ids": [chosen[0].id]}},
    )
    assert by_ids.json()["unmatched"] == {"count": 0, "first": []}


def test_a_list_over_the_cap_or_with_a_bad_identifier_is_a_422_naming_the_field(stack, school):
    batches_before = httpx.get(f"{stack.base_url}/v1/batches", headers=auth(school.token)).json()
    for selection, field in (
        ({"emails": [f"{n}@x.org" for n in range(100_001)]}, "emails"),
        ({"external_ids": ["sis-1", "bad\nid"]}, "external_ids"),
        ({"external_ids": ["x" * 256]}, "external_ids"),
        ({"external_ids": []}, "external_ids"),
    ):
        answer = post_batch(
            stack, school.token, {"action": "resend_invitation", "selection": selection}
        )
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["detail"]
        assert field in error["loc"]
    batches_after = httpx.get(f"{stack.base_url}/v1/batches", headers=auth(school.token)).json()
    assert batches_after == batches_before


def csv_rows(answer: httpx.Response) -> list[dict]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(answer.text))
    assert reader.fieldnames == HEADER
    return list(reader)


@pytest.mark.usefixtures("deletions_finalized")
def test_items_as_csv_by_accept_or_format_whole_filtered_and_safe_in_a_spreadsheet(
    stack, session, school
):
    theirs = seed_school(session, learners=2, groups=1, courses=1, name="Theirs")
    session.commit()
    sly, plain, leaving = learner_ids(session, school.school_id, status="active")[:3]
    their_learner = learner_ids(session, theirs.school_id)[0]
    session.execute(
        update(Learner)
        .where(Learner.id == sly)
        .values(external_id="=HYPERLINK(1)", email="@sly.qx@mail.example.org")
    )
    session.commit()
    url = f"{stack.base_url}/v1/batches"

    gone = post_batch(
        stack, school.token, {"action": "delete_learner", "selection": {"learner_ids": [leaving]}}
    ).json()
    finished(stack, school.token, gone["id"])

    def purged() -> bool:
        session.expire_all()
        return session.scalar(select(Learner.status).where(Learner.id == leaving)) == "deleted"

    wait_until(purged, 60, "the deletion to be finalized", stack.worker, every=0.3)
    [row] = csv_rows(httpx.get(f"{url}/{gone['id']}/items?format=csv", headers=auth(school.token)))
    # Purged: the email and the school's own identifier of the person are gone.
    assert (row["learner_id"], row["email"], row["external_id"], row["outcome"]) == (
        str(leaving),
        "",
        "",
        "applied",
    )

    selected = [sly, plain, their_learner, 2**62]
    batch = post_batch(
        stack,
        school.token,
        {"action": "deactivate_learner", "selection": {"learner_ids": selected}},
    ).json()
    finished(stack, school.token, batch["id"])
    by_accept = csv_rows(
        httpx.get(
            f"{url}/{batch['id']}/items", headers={**auth(school.token), "Accept": "text/csv"}
        )
    )
    by_format = csv_rows(
        httpx.get(
            f"{url}/{batch['id']}/items", params={"format": "csv"}, headers=auth(school.token)
        )
    )
    assert by_accept == by_format
    assert [int(r["learner_id"]) for r in by_accept] == sorted(selected)
    rows = {int(r["learner_id"]): r for r in by_accept}
    # A cell a spreadsheet would run as a formula starts with a quote instead.
    assert rows[sly]["external_id"] == "'=HYPERLINK(1)"
    assert rows[sly]["email"] == "'@sly.qx@mail.example.org"
    plain_learner = session.get(Learner, plain)
    assert (rows[plain]["external_id"], rows[plain]["email"]) == (
        plain_learner.external_id,
        plain_learner.email,
    )
    assert rows[plain]["outcome"] == "applied" and rows[plain]["reason"] == ""
    finished_at = datetime.fromisoformat(rows[plain]["finished_at"])
    assert finished_at.utcoffset() == UTC.utcoffset(None)
    # Another school's learner is an unknown id: named by nothing of theirs.
    for unknown in (their_learner, 2**62):
        assert rows[unknown]["external_id"] == rows[unknown]["email"] == ""
        assert (rows[unknown]["outcome"], rows[unknown]["reason"]) == ("skipped", "not_found")

    skipped = csv_rows(
        httpx.get(
            f"{url}/{batch['id']}/items",
            params={"format": "csv", "outcome": "skipped"},
            headers=auth(school.token),
        )
    )
    assert [int(r["learner_id"]) for r in skipped] == sorted([their_learner, 2**62])
    # JSON stays the paged answer it was.
    page = httpx.get(f"{url}/{batch['id']}/items", params={"limit": 2}, headers=auth(school.token))
    assert page.headers["content-type"] == "application/json"
    assert [i["learner_id"] for i in page.json()["items"]] == sorted(selected)[:2]
    assert page.json()["next_cursor"] == sorted(selected)[1]

    other_school = httpx.get(
        f"{url}/{batch['id']}/items", params={"format": "csv"}, headers=auth(theirs.token)
    )
    assert other_school.status_code == 404
    assert session.scalar(select(func.count()).where(BatchItem.batch_id == batch["id"])) == 4
