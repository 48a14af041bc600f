"""The baselines `make bench` measures each action against, on the same
services in the same run: raw publish, the producer's confirmed dispatch,
the floor (a bare Dramatiq actor, bench/floor.py) and one set-based SQL
statement. Each adds its numbers to `bench.result["baselines"]`."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TYPE_CHECKING

import pika

from bench import floor
from bench.report import log
from bench.watch import service_cpu, service_cpu_since, start_profilers, stop_profilers
from tests.support.services import Process, wait_until

if TYPE_CHECKING:
    from bench.run import Bench


def messages(bench: Bench, queue: str, batch_id: int = 0):
    from shared.dispatch import item_message

    for learner_id in bench.learner_ids:
        yield item_message(queue, batch_id, learner_id)


def raw_publish(bench: Bench, queue: str, declare: bool = True, batch_id: int = 0) -> float:
    """pika, no confirms, the same Dramatiq-encoded messages; seconds taken
    until the broker has answered a round trip after the last one."""
    connection = pika.BlockingConnection(pika.URLParameters(bench.vhost.url))
    channel = connection.channel()
    if declare:
        channel.queue_declare(queue, durable=True)
    properties = pika.BasicProperties(delivery_mode=2)
    started = time.perf_counter()
    for message in messages(bench, queue, batch_id):
        channel.basic_publish("", queue, message.encode(), properties)
    channel.queue_declare(queue, passive=True)
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def measure_publish(bench: Bench) -> None:
    n = len(bench.learner_ids)
    seconds = raw_publish(bench, "bench_raw")
    bench.watch.channel.queue_delete("bench_raw")
    bench.result["baselines"]["raw_publish"] = {
        "messages": n,
        "seconds": round(seconds, 3),
        "per_second": round(n / seconds, 1),
    }
    log(f"raw publish: {n / seconds:,.0f} msg/s")

    # The dispatch path: keyset query for the next window, then
    # ConfirmedPublisher (every message confirmed) - as dispatch_step does.
    from shared.broker import build_broker
    from shared.dispatch import item_message
    from shared.publish import ConfirmedPublisher
    from shared.settings import Settings

    # The product's broker: priority queues, messages signed.
    broker = build_broker(
        Settings(
            broker_url=bench.vhost.url,
            database_url=bench.database_url,
            signing_key=bench.env["SIGNING_KEY"],
        )
    )
    publisher = ConfirmedPublisher(broker)
    window = bench.args.window or 2000
    school = bench.school["school_id"]
    cursor, published = 0, 0
    started = time.perf_counter()
    while True:
        ids = [
            r[0]
            for r in bench.pg.execute(
                "SELECT id FROM learners WHERE school_id = %s AND id > %s AND NOT is_admin "
                "ORDER BY id LIMIT %s",
                (school, cursor, window),
            )
        ]
        if not ids:
            break
        publisher.publish([item_message("bench_dispatch", 0, lid) for lid in ids])
        published += len(ids)
        cursor = ids[-1]
    seconds = time.perf_counter() - started
    publisher.close()
    broker.close()
    for queue in ("bench_dispatch", "bench_dispatch.DQ", "bench_dispatch.XQ"):
        with contextlib.suppress(Exception):
            bench.watch.channel.queue_delete(queue)
    bench.result["baselines"]["dispatch_confirmed"] = {
        "messages": published,
        "seconds": round(seconds, 3),
        "per_second": round(published / seconds, 1),
        "window": window,
    }
    log(f"dispatch with confirms: {published / seconds:,.0f} msg/s")


# The floors' batch ids: the fed floor's messages pass their gate at once,
# the strict floor's wait until all of them are published.
FED, STRICT = 1, 2


def measure_floor(bench: Bench) -> None:
    """Both floors, on one set of floor workers: `floor_fed` (the raw
    publisher feeds the workers while they run, so for its first seconds it
    competes with them for the cores), then `floor` (the strict one, which
    the targets use): every message published first, then the workers timed
    from the first row committed to the last."""
    bench.pg.execute(floor.TABLE_DDL)
    bench.pg.execute("TRUNCATE bench_floor RESTART IDENTITY")
    gates = bench.logs / "floor-gates"
    gates.mkdir(exist_ok=True)
    for gate in gates.iterdir():  # an earlier measurement's, opened
        gate.unlink()
    env = {**bench.env, "BENCH_FLOOR_DSN": bench.dsn, "BENCH_FLOOR_GATES": str(gates)}
    for name in ("PROMETHEUS_MULTIPROC_DIR",):
        env.pop(name, None)
    workers = Process(
        [
            sys.executable,
            "-m",
            "dramatiq",
            "bench.floor",
            "--processes",
            str(bench.args.processes),
            "--threads",
            str(bench.args.threads),
        ],
        env,
        bench.logs / "floor-workers.log",
    )
    try:
        wait_until(lambda: bench.vhost.queues.consumers(floor.QUEUE), 90, "floor workers", workers)
        time.sleep(2)  # every process consuming
        if not bench.args.strict_floor_only:
            bench.result["baselines"]["floor_fed"] = _fed_floor(bench, workers, gates)
        bench.result["baselines"]["floor"] = _strict_floor(bench, workers, gates)
    finally:
        workers.stop(timeout=60)


def _committed(bench: Bench, batch_id: int) -> int:
    return bench.pg.execute(
        "SELECT count(*) FROM bench_floor WHERE batch_id = %s", (batch_id,)
    ).fetchone()[0]


def _floor_phase(bench: Bench, name: str, batch_id: int, workers: Process):
    phase = bench.sampler.start_phase(name, lambda: _committed(bench, batch_id), floor.QUEUE)
    profilers = (
        start_profilers(bench.logs, name, [("workers", workers, ["--subprocesses"])])
        if bench.args.profile
        else []
    )
    return phase, profilers


def _wait_drained(bench: Bench, batch_id: int, workers: Process) -> None:
    n = len(bench.learner_ids)
    wait_until(
        lambda: _committed(bench, batch_id) >= n,
        max(900, n / 50),
        "floor to finish",
        workers,
        every=0.05,
    )


def _floor_result(bench, batch_id, seconds, cpu, services, phase, **extra) -> dict:
    rows = _committed(bench, batch_id)
    return {
        "learners": rows,
        "seconds": round(seconds, 3),
        "per_second": round(rows / seconds, 1),
        "worker_cpu_seconds": round(cpu, 2),
        "worker_cpu_ms_per_learner": round(1000 * cpu / rows, 4),
        "service_cpu_ms_per_learner": {
            k: round(1000 * v / rows, 4) for k, v in sorted(services.items())
        },
        "peak_queue_ready": phase["peak_ready"],
        **extra,
        "samples": phase["samples"],
    }


def _fed_floor(bench: Bench, workers: Process, gates) -> dict:
    (gates / str(FED)).touch()
    cpu0, services0 = workers.cpu_seconds(), service_cpu()
    phase, profilers = _floor_phase(bench, "floor_fed", FED, workers)
    started = time.time()
    publish_seconds = raw_publish(bench, floor.QUEUE, declare=False, batch_id=FED)
    _wait_drained(bench, FED, workers)
    stop_profilers(profilers)
    last = bench.pg.execute(
        "SELECT max(created_at) FROM bench_floor WHERE batch_id = %s", (FED,)
    ).fetchone()[0]
    cpu = workers.cpu_seconds() - cpu0
    services = service_cpu_since(services0)
    phase = bench.sampler.end_phase()
    seconds = last.timestamp() - started
    result = _floor_result(
        bench, FED, seconds, cpu, services, phase, publish_seconds=round(publish_seconds, 3)
    )
    log(
        f"floor fed by the publisher: {result['per_second']:,.0f} learners/s, "
        f"{result['worker_cpu_ms_per_learner']:.3f} ms CPU/learner"
    )
    return result


def _strict_floor(bench: Bench, workers: Process, gates) -> dict:
    """Publish everything, then open the gate; CPU is counted from the gate
    on, the rate from the first row committed to the last."""
    publish_seconds = raw_publish(bench, floor.QUEUE, declare=False, batch_id=STRICT)
    time.sleep(1)
    cpu0, services0 = workers.cpu_seconds(), service_cpu()
    phase, profilers = _floor_phase(bench, "floor", STRICT, workers)
    (gates / str(STRICT)).touch()
    _wait_drained(bench, STRICT, workers)
    stop_profilers(profilers)
    cpu = workers.cpu_seconds() - cpu0
    services = service_cpu_since(services0)
    phase = bench.sampler.end_phase()
    first, last = bench.pg.execute(
        "SELECT min(created_at), max(created_at) FROM bench_floor WHERE batch_id = %s", (STRICT,)
    ).fetchone()
    seconds = (last - first).total_seconds()
    result = _floor_result(
        bench,
        STRICT,
        seconds,
        cpu,
        services,
        phase,
        published_before_seconds=round(publish_seconds, 3),
    )
    log(
        f"strict floor (drains what was published before): {result['per_second']:,.0f} "
        f"learners/s, {result['worker_cpu_ms_per_learner']:.3f} ms CPU/learner"
    )
    return result


def measure_set_based(bench: Bench) -> None:
    school = bench.school["school_id"]
    group = bench.pg.execute(
        "INSERT INTO groups (school_id, name) VALUES (%s, 'bench set-based') RETURNING id",
        (school,),
    ).fetchone()[0]
    started = time.perf_counter()
    with bench.pg.transaction():
        inserted = bench.pg.execute(
            "INSERT INTO group_memberships (learner_id, group_id) "
            "SELECT id, %s FROM learners WHERE school_id = %s "
            "AND status NOT IN ('deleting', 'deleted') ON CONFLICT DO NOTHING",
            (group, school),
        ).rowcount
    seconds = time.perf_counter() - started
    bench.result["baselines"]["set_based"] = {
        "statement": "INSERT INTO group_memberships ... SELECT ... ON CONFLICT DO NOTHING",
        "learners": inserted,
        "seconds": round(seconds, 3),
        "per_second": round(inserted / seconds, 1) if seconds else None,
    }
    log(f"set-based: {inserted:,} rows in {seconds:.2f}s")


# -- the product ------------------------------------------------------
