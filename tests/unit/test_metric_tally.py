"""The workers' buffered metric updates export exactly what direct updates
would, bucket edges included (the end-to-end check is tests/test_metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workers.metrics import Tally

AMOUNTS = [0, 0.05, 0.0500001, 1, 2.5, 7, 3600, 10**9, 0.3, 0.3]


def metrics(registry: CollectorRegistry):
    return (
        Counter("learners", "n", ["action", "outcome"], registry=registry),
        Gauge("in_progress", "n", ["queue"], registry=registry),
        Histogram(
            "latency_seconds", "s", ["action"], buckets=(0.05, 1, 2.5, 3600), registry=registry
        ),
    )


def samples(registry: CollectorRegistry) -> dict:
    """Every exported sample but the creation timestamps (two registries, two times)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_tallied_updates_export_the_same_series_as_direct_updates():
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    counter, gauge, histogram = metrics(direct)
    t_counter, t_gauge, t_histogram = metrics(tallied)
    tally = Tally()
    for i, amount in enumerate(AMOUNTS):
        outcome = "applied" if i % 3 else "skipped"
        counter.labels("add_to_group", outcome).inc()
        tally.inc(t_counter, ("add_to_group", outcome))
        histogram.labels("add_to_group").observe(amount)
        tally.observe(t_histogram, ("add_to_group",), amount)
        gauge.labels("q").inc()
        tally.inc(t_gauge, ("q",))
        if i % 2:
            gauge.labels("q").dec()
            tally.inc(t_gauge, ("q",), -1)

    assert samples(tallied) != samples(direct)  # nothing written yet
    tally.flush()
    assert samples(tallied) == samples(direct)
    tally.flush()  # a second flush adds nothing
    assert samples(tallied) == samples(direct)
