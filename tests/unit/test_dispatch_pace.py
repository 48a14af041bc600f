"""The window the producer keeps per batch on quorum queues (`Pace`):
a quarter second of the batch's own rate, so that on quorum queues (no
priorities) a small batch published behind it waits about that long."""

from __future__ import annotations

import pytest

from shared import dispatch
from shared.dispatch import Pace

MOST = 2000  # DISPATCH_WINDOW


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(dispatch.time, "monotonic", clock)
    return clock


def run_at(pace: Pace, clock: Clock, per_second: int, passes: int) -> int:
    """Passes 0.1 s apart while the workers finish `per_second`; each pass
    tops the batch up to its window as dispatch_step does. The last window."""
    cursor, in_flight = 0, 0
    window = 0
    for _ in range(passes):
        in_flight = max(0, in_flight - per_second // 10)
        window = pace.window(1, cursor, in_flight, MOST)
        room = window - dispatch.headroom(window) - in_flight
        if room >= dispatch.refill_size(window) or (room > 0 and not in_flight):
            cursor, in_flight = cursor + room, in_flight + room
            pace.published(1, cursor, in_flight)
        clock.now += 0.1
    return window


def test_a_new_batch_starts_small_and_grows_while_the_workers_keep_up(clock):
    pace = Pace()
    assert pace.window(1, 0, 0, MOST) == dispatch.MIN_WINDOW
    pace.published(1, 95, 95)
    clock.now += 0.1
    assert pace.window(1, 95, 0, MOST) >= 2 * 95  # emptied in one pass: not the workers' limit


@pytest.mark.parametrize("per_second", [800, 2000, 4000])
def test_a_running_batch_keeps_a_quarter_second_of_its_own_rate(clock, per_second):
    window = run_at(Pace(), clock, per_second, passes=100)
    assert window == pytest.approx(per_second * dispatch.WINDOW_SECONDS, rel=0.1)


def test_the_window_stays_within_dispatch_window_and_a_floor(clock):
    assert run_at(Pace(), clock, 40_000, passes=100) == MOST
    assert run_at(Pace(), clock, 20, passes=100) == dispatch.MIN_WINDOW


def test_a_batch_another_dispatcher_moved_is_left_to_it_for_a_pass(clock):
    pace = Pace()
    pace.window(1, 0, 0, MOST)
    pace.published(1, 1900, 1900)
    clock.now += 0.1
    assert pace.window(1, 2500, 1700, MOST) == 0  # someone else published up to 2,500
    clock.now += 0.1
    assert pace.window(1, 2500, 1500, MOST) > 0


def test_the_reconciler_tops_up_only_batches_nobody_else_moves(clock):
    reconciler = Pace(seconds=None)
    assert reconciler.window(1, 0, 0, MOST) == 0  # first seen: the producer may be on it
    clock.now += 5
    assert reconciler.window(1, 900, 300, MOST) == 0  # the producer moved it
    clock.now += 5
    assert reconciler.window(1, 900, 300, MOST) == MOST  # nobody did: a whole window


def test_finished_batches_are_forgotten(clock):
    pace = Pace()
    for batch_id in (1, 2, 3):
        pace.window(batch_id, 0, 0, MOST)
    pace.forget_all_but({2})
    assert set(pace.seen) == {2}


def test_only_quorum_queues_are_paced():
    """Classic queues are priority queues: a small batch overtakes the big
    batches' windows, which stay whole for KEDA's backlog."""
    assert dispatch.pace_for("classic") is None
    assert isinstance(dispatch.pace_for("quorum"), Pace)
