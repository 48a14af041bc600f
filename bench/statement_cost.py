"""PostgreSQL's own CPU per learner for each action's single statement,
without workers or a broker: the statement alone, one learner after the other
on one autocommit connection, timed by the CPU of that connection's backend
process (so the other sessions sharing the machine do not count).

    python -m bench.statement_cost --learners 20000 --actions add_to_group,deactivate_learner

It makes its own database (dropped at the end), seeds a school, and per action
freezes a running batch over every learner and runs the statement
`workers.statements` prepares for it. Per learner it reports the backend's
CPU, the round trip as the client saw it, and the WAL written. This is for
A/B of the statement and the table layout (compare runs of this module before
and after a change); it leaves out the WAL writer, checkpoints and autovacuum,
which the bench's service CPU includes.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid

import psutil
import psycopg

from bench.environment import PG_ADMIN_DSN
from tests.support.services import create_database, drop_database

EXPLAINED = 300


def freeze_batch(pg: psycopg.Connection, school: dict, action: str, group: int) -> int:
    params = {"add_to_group": {"group_ids": [group]}}.get(action, {})
    if action == "add_to_course":
        course = pg.execute(
            "SELECT min(id) FROM courses WHERE school_id = %s", (school["school_id"],)
        ).fetchone()[0]
        params = {"course_ids": [course]}
    batch_id = pg.execute(
        "INSERT INTO batches (school_id, actor_id, action, params, selection, status, total, "
        "counts, dispatch_cursor) VALUES (%s, %s, %s, %s, '{}', 'running', 0, '{}', 0) "
        "RETURNING id",
        (school["school_id"], school["admin_id"], action, json.dumps(params)),
    ).fetchone()[0]
    total = pg.execute(
        "INSERT INTO batch_items (batch_id, learner_id, outcome, attempts) "
        "SELECT %s, id, 'pending', 0 FROM learners WHERE school_id = %s AND NOT is_admin",
        (batch_id, school["school_id"]),
    ).rowcount
    pg.execute("UPDATE batches SET total = %s WHERE id = %s", (total, batch_id))
    pg.execute("ANALYZE")
    return batch_id


def measure(database_url: str, batch_id: int, learner_ids: list[int], threads: int) -> dict:
    from shared.actions import new_token_hash
    from shared.batches import load_context
    from shared.runtime import current
    from workers import statements

    with current().sessions() as session:
        ctx = load_context(session, batch_id)
    assert ctx is not None
    prepared = statements.prepare(ctx, 3600)
    connections = statements.Connections(database_url)
    invite = ctx.action == "resend_invitation"
    warm, timed = learner_ids[: 50 * threads], learner_ids[50 * threads : -EXPLAINED]
    explained = learner_ids[-EXPLAINED:]
    backends: list[psutil.Process] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def work(share: list[int], warm_share: list[int]) -> None:
        connection = connections.get()
        with lock:
            backends.append(psutil.Process(connection.info.backend_pid))
        for learner_id in warm_share:  # plan cached, caches warm
            statements.run(connections, prepared, learner_id, new_token_hash() if invite else None)
        barrier.wait()
        barrier.wait()
        for learner_id in share:
            outcome = statements.run(
                connections, prepared, learner_id, new_token_hash() if invite else None
            )
            label = outcome.label if outcome else "none"
            with lock:
                outcomes[label] = outcomes.get(label, 0) + 1
        barrier.wait()  # done
        barrier.wait()  # CPU read: the backend may go
        connections.discard()

    pool = [
        threading.Thread(target=work, args=(timed[i::threads], warm[i::threads]))
        for i in range(threads)
    ]
    for thread in pool:
        thread.start()
    barrier.wait()  # every thread warm
    cpu0 = sum(sum(b.cpu_times()[:2]) for b in backends)
    started = time.perf_counter()
    barrier.wait()
    barrier.wait()
    wall = time.perf_counter() - started
    cpu = sum(sum(b.cpu_times()[:2]) for b in backends) - cpu0
    barrier.wait()
    for thread in pool:
        thread.join()
    connection = connections.get()
    plans = {"WAL Records": 0, "WAL FPI": 0, "WAL Bytes": 0, "Shared Dirtied Blocks": 0}
    for learner_id in explained:
        params = {"learner": learner_id, "token": new_token_hash() if invite else None}
        plan = connection.execute(
            "EXPLAIN (ANALYZE, WAL, BUFFERS, FORMAT JSON) " + prepared.sql, params
        ).fetchone()[0][0]
        for key in plans:
            plans[key] += plan["Plan"].get(key, 0)
    connections.discard()
    n = len(timed)
    return {
        "learners": n,
        "threads": threads,
        "backend_cpu_us_per_learner": round(1e6 * cpu / n, 1),
        "per_second": round(n / wall, 1),
        # The statement's own, from EXPLAIN (ANALYZE, WAL) of the last learners.
        "statement_per_learner": {k: round(v / EXPLAINED, 2) for k, v in plans.items()},
        "outcomes": outcomes,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.statement_cost")
    parser.add_argument("--learners", type=int, default=20_000)
    parser.add_argument("--actions", default="add_to_group,deactivate_learner")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument(
        "--ddl", action="append", default=[], help="SQL run after seeding (to try a layout)"
    )
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    name = f"batch_actions_stmt_{uuid.uuid4().hex[:8]}"
    database_url = create_database(name, PG_ADMIN_DSN)
    os.environ["DATABASE_URL"] = database_url
    os.environ.pop("REDIS_URL", None)
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        from batchctl.migrate import upgrade
        from batchctl.seed import seed_school
        from shared import runtime

        upgrade(database_url)
        with runtime.start().transaction() as session:
            school = seed_school(session, learners=args.learners).as_dict()
        results = {}
        with psycopg.connect(dsn, autocommit=True) as pg:
            group = pg.execute(
                "INSERT INTO groups (school_id, name) VALUES (%s, 'statement cost') RETURNING id",
                (school["school_id"],),
            ).fetchone()[0]
            learner_ids = [
                r[0]
                for r in pg.execute(
                    "SELECT id FROM learners WHERE school_id = %s AND NOT is_admin ORDER BY id",
                    (school["school_id"],),
                )
            ]
            for ddl in args.ddl:
                pg.execute(ddl)
            for action in args.actions.split(","):
                batch_id = freeze_batch(pg, school, action, group)
                pg.execute("CHECKPOINT")
                results[action] = measure(database_url, batch_id, learner_ids, args.threads)
                print(action, json.dumps(results[action]), flush=True)
        print(json.dumps({"label": args.label, "results": results}))
    finally:
        from shared import runtime

        runtime.current().close()
        drop_database(name, PG_ADMIN_DSN)


if __name__ == "__main__":
    main()
