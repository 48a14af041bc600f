"""Test-only, loaded into the worker processes of the crash-loop scenario:
processing learner FAULTS_KILL_LEARNER_ID kills the worker process, every
time, while its item is pending (as a crash in a native driver would). Once
the item is no longer pending, its messages kill nobody, as with a real
poison item whose work never starts again."""

from __future__ import annotations

import os

from sqlalchemy import text

from workers.items import Items

LEARNER = int(os.environ["FAULTS_KILL_LEARNER_ID"])
_process = Items.process


def _pending(items: Items, batch_id: int, learner_id: int) -> bool:
    with items.sessions() as session:
        return bool(
            session.execute(
                text(
                    "SELECT 1 FROM batch_items WHERE batch_id = :b AND learner_id = :l "
                    "AND outcome = 'pending'"
                ),
                {"b": batch_id, "l": learner_id},
            ).first()
        )


def process(items: Items, batch_id: int, learner_id: int):
    if learner_id == LEARNER and _pending(items, batch_id, learner_id):
        os._exit(1)
    return _process(items, batch_id, learner_id)


# Dramatiq imports this module after `workers.runtime:start_worker` has run;
# the actors look the method up on each call.
Items.process = process  # type: ignore[method-assign]
