"""`batchctl`: one command line for every role (serve, worker, reconcile, seed...)."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)


@app.command()
def migrate() -> None:
    """Apply the database migrations to DATABASE_URL."""
    from shared.migrate import upgrade

    upgrade()
    console.print("[green]database is at the latest migration[/]")


@app.command()
def seed(
    learners: int = typer.Option(1000, min=0, help="How many learners to create."),
    groups: int = typer.Option(5, min=1, help="How many groups."),
    courses: int = typer.Option(10, min=1, help="How many courses."),
    as_json: bool = typer.Option(False, "--json", help="Print only the result as JSON."),
) -> None:
    """Create a realistic school with an admin and an API token for that admin."""
    from shared.db import session_scope
    from shared.seed import seed_school

    started = time.perf_counter()
    with session_scope() as session:
        seeded = seed_school(session, learners=learners, groups=groups, courses=courses)
    if as_json:
        typer.echo(json.dumps(seeded.as_dict()))
        return
    console.print(
        f"seeded school {seeded.school_id} with {learners:,} learners "
        f"in {time.perf_counter() - started:.1f}s; admin {seeded.admin_id}"
    )
    typer.echo(json.dumps(seeded.as_dict()))


@app.command()
def demo(learners: int = typer.Option(500, min=10, help="Learners in the demo school.")) -> None:
    """Seed a school in the embedded SQLite database and apply an action to everyone."""
    from rich.table import Table
    from sqlalchemy import select

    from shared.actions import Actor, add_to_group
    from shared.db import session_scope
    from shared.migrate import upgrade
    from shared.models import Group, Learner
    from shared.seed import seed_school

    upgrade()
    with session_scope() as session:
        seeded = seed_school(session, learners=learners, name="Demo School")
        actor = Actor(seeded.school_id, seeded.admin_id)
        group_id = session.scalar(select(Group.id).where(Group.school_id == seeded.school_id))
        ids = session.scalars(select(Learner.id).where(Learner.school_id == seeded.school_id))
        outcomes: dict[str, int] = {}
        for learner_id in ids:
            label = add_to_group(session, actor, learner_id, [group_id]).label
            outcomes[label] = outcomes.get(label, 0) + 1
    table = Table(title=f"add_to_group on school {seeded.school_id}")
    table.add_column("outcome")
    table.add_column("learners", justify="right")
    for label, n in sorted(outcomes.items()):
        table.add_row(label, f"{n:,}")
    Console().print(table)
