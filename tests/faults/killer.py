"""Test-only, loaded into the worker processes of the crash-loop scenario:
processing learner FAULTS_KILL_LEARNER_ID kills the worker process, every
time, while its item is pending (as a crash in a native driver would). Once
the item is no longer pending, its messages kill nobody, as with a real
poison item whose work never starts again."""

from __future__ import annotations

import os

from sqlalchemy import text

from workers import actors, items

LEARNER = int(os.environ["FAULTS_KILL_LEARNER_ID"])
_process_item = items.process_item


def _pending(batch_id: int, learner_id: int) -> bool:
    with items.sessions()() as session:
        return bool(
            session.execute(
                text(
                    "SELECT 1 FROM batch_items WHERE batch_id = :b AND learner_id = :l "
                    "AND outcome = 'pending'"
                ),
                {"b": batch_id, "l": learner_id},
            ).first()
        )


def process_item(batch_id: int, learner_id: int):
    if learner_id == LEARNER and _pending(batch_id, learner_id):
        os._exit(1)
    return _process_item(batch_id, learner_id)


# The actors call the name they imported.
items.process_item = actors.process_item = process_item
