"""The floor: what a per-learner message design costs with nothing else.

A bare Dramatiq actor (Dramatiq's default middleware, its own broker) doing one
`INSERT ... ON CONFLICT DO NOTHING` per learner, committed (an autocommit
connection per worker thread: the statement is its own transaction). It runs
under the same `dramatiq` CLI with the same processes and threads as the real
workers: `python -m dramatiq bench.floor --processes P --threads T`.

Two floors are measured with it (`bench.baselines.measure_floor`): one fed by
a publisher while it runs, and the strict one, which drains messages published
beforehand. For the strict one the actor holds each batch's first messages at
a gate (a file named after the batch id in `BENCH_FLOOR_GATES`) until the bench
has published them all and opens it, so that every process and thread starts
from a full queue at the same moment; once a batch's gate is open, the check is
one set lookup per message.
"""

from __future__ import annotations

import os
import threading
import time

import dramatiq
import psycopg
from dramatiq.brokers.rabbitmq import RabbitmqBroker

QUEUE = "bench_floor"
TABLE_DDL = """
CREATE TABLE IF NOT EXISTS bench_floor (
    id bigserial,
    batch_id bigint NOT NULL,
    learner_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, learner_id)
)"""
INSERT = "INSERT INTO bench_floor (batch_id, learner_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"

broker = RabbitmqBroker(url=os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672"))
dramatiq.set_broker(broker)
_local = threading.local()
_open: set[int] = set()


def gate_path(gates: str, batch_id: int) -> str:
    return os.path.join(gates, str(batch_id))


def _wait_for_gate(batch_id: int) -> None:
    path = gate_path(os.environ["BENCH_FLOOR_GATES"], batch_id)
    while not os.path.exists(path):
        time.sleep(0.01)
    _open.add(batch_id)


def _connection() -> psycopg.Connection:
    connection = getattr(_local, "connection", None)
    if connection is None or connection.closed:
        connection = psycopg.connect(os.environ["BENCH_FLOOR_DSN"], autocommit=True)
        _local.connection = connection
    return connection


@dramatiq.actor(actor_name=QUEUE, queue_name=QUEUE)
def bench_floor(batch_id: int, learner_id: int) -> None:
    if batch_id not in _open:
        _wait_for_gate(batch_id)
    _connection().execute(INSERT, (batch_id, learner_id))
