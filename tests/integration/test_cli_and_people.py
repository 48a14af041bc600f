"""The command line and the people list, as an admin uses them."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from sqlalchemy import select

from batchctl.seed import seed_school
from shared.models import Group, GroupMembership
from tests.support.factories import make_learner


def batchctl(stack, token, *args: str) -> subprocess.CompletedProcess:
    env = {**stack.env, "BATCH_API_URL": stack.base_url, "BATCH_API_TOKEN": token, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "batchctl", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_submit_watch_items_and_cancel_from_the_command_line(stack, session):
    seeded = seed_school(session, learners=300, groups=2, courses=1, name="CLI School")
    session.commit()
    group_id = session.scalar(select(Group.id).where(Group.school_id == seeded.school_id))

    dry = batchctl(
        stack,
        seeded.token,
        "submit",
        "add_to_group",
        "--status",
        "active",
        "--group-ids",
        str(group_id),
        "--dry-run",
    )
    assert dry.returncode == 0, dry.stderr
    assert "dry run: add_to_group" in dry.stderr

    run = batchctl(
        stack,
        seeded.token,
        "submit",
        "add_to_group",
        "--status",
        "active",
        "--group-ids",
        str(group_id),
        "--watch",
    )
    assert run.returncode == 0, run.stderr
    batch_id = json.loads(run.stdout.splitlines()[0])["id"]
    assert "completed" in run.stderr and "learners/s" in run.stderr

    items = batchctl(stack, seeded.token, "items", str(batch_id), "--outcome", "skipped")
    skipped = [json.loads(line) for line in items.stdout.splitlines()]
    assert skipped and {i["reason"] for i in skipped} == {"already_member"}

    status = batchctl(stack, seeded.token, "status", str(batch_id))
    assert json.loads(status.stdout)["status"] == "completed"

    cancel = batchctl(stack, seeded.token, "cancel", str(batch_id))
    assert cancel.returncode == 1 and "nothing to cancel" in cancel.stderr

    bad = batchctl(stack, seeded.token, "submit", "add_to_group", "--learner-ids", "1,x")
    assert bad.returncode != 0 and "whole numbers" in bad.stderr
    no_token = batchctl(stack, "wrong", "status", str(batch_id))
    assert no_token.returncode == 1 and "401" in no_token.stderr


def test_people_list_filters_pages_and_shows_deleting_learners_as_deactivated(stack, session):
    seeded = seed_school(session, learners=120, groups=2, courses=1, name="People School")
    session.commit()
    headers = {"Authorization": f"Bearer {seeded.token}"}
    group_id = session.scalar(select(Group.id).where(Group.school_id == seeded.school_id))
    members = set(
        session.scalars(
            select(GroupMembership.learner_id).where(GroupMembership.group_id == group_id)
        )
    )

    seen, cursor = [], None
    while True:
        params = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{stack.base_url}/v1/learners", params=params, headers=headers).json()
        seen += page["learners"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 121 and len({p["id"] for p in seen}) == 121

    in_group = httpx.get(
        f"{stack.base_url}/v1/learners",
        headers=headers,
        params={"group_id": group_id, "limit": 500},
    ).json()["learners"]
    assert {p["id"] for p in in_group} == members

    deleting = make_learner(session, seeded.school_id, status="deleting").id
    session.commit()
    shown = httpx.get(
        f"{stack.base_url}/v1/learners",
        headers=headers,
        params={"status": "deactivated", "limit": 500},
    ).json()["learners"]
    assert deleting in {p["id"] for p in shown}
    assert {p["status"] for p in shown} == {"deactivated"}
    query = httpx.get(
        f"{stack.base_url}/v1/learners", headers=headers, params={"q": seen[7]["email"][:12]}
    ).json()["learners"]
    assert seen[7]["id"] in {p["id"] for p in query}
    assert httpx.get(f"{stack.base_url}/readyz").json()["status"] == "ready"
    assert (
        httpx.get(
            f"{stack.base_url}/v1/learners", headers=headers, params={"group_id": 10**12}
        ).status_code
        == 404
    )
