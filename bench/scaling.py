"""The scaling series: `add_to_group` end to end with 1, 2, 4 and 8 worker
processes (the same threads each) on one seeded school, with the strict
floor at each size, and the CPU of every component per learner.

    flock /tmp/batch-actions-machine.lock .venv/bin/python -m bench.scaling \\
        --learners 50000 --sizes 1,2,4,8

Each size starts the stack anew (`batchctl worker --processes N`) and adds
everyone to a new group, so every size does the same work. It prints a
table and writes bench/results/scaling-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json

from bench.baselines import measure_floor
from bench.environment import PG_ADMIN_DSN, RESULTS
from bench.report import fmt, log, ratio
from bench.run import Bench, drop_database, parse

COMPONENTS = ("postgresql", "rabbitmq", "redis", "reconciler")


def row(size: int, floor_run: dict, run: dict) -> dict:
    services = run["service_cpu_ms_per_learner"]
    return {
        "processes": size,
        "floor_per_second": floor_run.get("per_second"),
        "floor_worker_cpu_ms": floor_run.get("worker_cpu_ms_per_learner"),
        "floor_postgresql_cpu_ms": floor_run.get("service_cpu_ms_per_learner", {}).get(
            "postgresql"
        ),
        "per_second": run["per_second"],
        "x_floor": ratio(run["per_second"], floor_run.get("per_second")),
        "worker_cpu_ms": run["worker_cpu_ms_per_learner"],
        "producer_cpu_ms": run["producer_cpu_ms_per_learner"],
        **{f"{name}_cpu_ms": services.get(name) for name in COMPONENTS},
        "p95_latency_s": run["latency_seconds"]["p95"],
    }


def table(rows: list[dict]) -> str:
    head = (
        f"{'procs':>5}{'floor/s':>9}{'per s':>8}{'x floor':>8}{'workers':>9}{'PG':>7}"
        f"{'MQ':>7}{'producer':>9}{'redis':>7}{'CPU ms/l':>9}{'cores':>7}"
    )
    lines = [head]
    for r in rows:
        cpu = sum(
            r[k] or 0
            for k in ("worker_cpu_ms", "producer_cpu_ms", "postgresql_cpu_ms", "rabbitmq_cpu_ms")
        )
        cpu += (r["redis_cpu_ms"] or 0) + (r["reconciler_cpu_ms"] or 0)
        lines.append(
            f"{r['processes']:>5}{fmt(r['floor_per_second'], 0):>9}{fmt(r['per_second'], 0):>8}"
            f"{fmt(r['x_floor'], 2):>8}{fmt(r['worker_cpu_ms'], 3):>9}"
            f"{fmt(r['postgresql_cpu_ms'], 3):>7}{fmt(r['rabbitmq_cpu_ms'], 3):>7}"
            f"{fmt(r['producer_cpu_ms'], 3):>9}{fmt(r['redis_cpu_ms'], 3):>7}"
            f"{fmt(cpu, 3):>9}{fmt(cpu * r['per_second'] / 1000, 2):>7}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling")
    parser.add_argument("--learners", type=int, default=50_000)
    parser.add_argument("--sizes", default="1,2,4,8", help="worker processes, in this order")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--no-floor", action="store_true")
    own = parser.parse_args(argv)
    args = parse(
        [
            "--learners",
            str(own.learners),
            "--threads",
            str(own.threads),
            "--actions",
            "add_to_group",
            "--fairness-tries",
            "0",
            "--strict-floor-only",
            "--label",
            f"scaling {own.sizes}",
        ]
    )
    bench = Bench(args)
    log(f"logs in {bench.logs}")
    rows: list[dict] = []
    try:
        bench.setup()
        for size in [int(n) for n in own.sizes.split(",")]:
            bench.args.processes = size
            floor_run: dict = {}
            if not own.no_floor:
                measure_floor(bench)
                floor_run = bench.result["baselines"]["floor"]
            bench.group_id = bench.pg.execute(
                "INSERT INTO groups (school_id, name) VALUES (%s, %s) RETURNING id",
                (bench.school["school_id"], f"scaling {size}"),
            ).fetchone()[0]
            bench.start_stack()
            try:
                run = bench.run_action("add_to_group")
            finally:
                bench.stop_stack()
            run.pop("samples", None)
            rows.append(row(size, floor_run, run))
            log(f"{size} processes: {run['per_second']:,.0f}/s")
            print(table(rows), flush=True)
    finally:
        bench.sampler.stop()
        bench.stop_stack()
        with contextlib.suppress(Exception):
            bench.smtp.stop()
        with contextlib.suppress(Exception):
            bench.watch.close()
        with contextlib.suppress(Exception):
            bench.vhost.delete()
        drop_database(bench.db_name, PG_ADMIN_DSN)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"scaling-{bench.stamp}.json"
    path.write_text(json.dumps({"config": bench.result["config"], "rows": rows}, indent=1))
    print(table(rows))
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
