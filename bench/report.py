"""The bench's numbers made readable: percentiles, the issue's targets with
what this run measured against each, the table printed at the end, and the
progress lines printed while it runs."""

from __future__ import annotations

import math
from datetime import datetime


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (p95 of 5 values is the largest)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            width = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / width if width else 0)
        lower_le, lower_count = le, count
    return lower_le


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def targets(result: dict) -> list[dict]:
    """The issue's targets, each with the measured value; `met` is None when
    this run did not measure it (e.g. the 1M-only targets in a 100k run)."""
    base, actions = result["baselines"], result["actions"]
    learners = result["config"]["learners"]
    out = []

    def add(name, value, limit, better, note=""):
        met = None
        if value is not None:
            met = value >= limit if better == "higher" else value <= limit
        out.append({"target": name, "value": value, "limit": limit, "met": met, "note": note})

    group = actions.get("add_to_group", {})
    floor_run = base.get("floor", {})
    add(
        "add_to_group end-to-end / floor (learners/s)",
        ratio(group.get("per_second"), floor_run.get("per_second")),
        0.75,
        "higher",
    )
    add(
        "dispatch with confirms / raw publish (msg/s)",
        ratio(
            base.get("dispatch_confirmed", {}).get("per_second"),
            base.get("raw_publish", {}).get("per_second"),
        ),
        0.6,
        "higher",
    )
    add(
        "worker CPU per learner / floor's (add_to_group)",
        ratio(group.get("worker_cpu_ms_per_learner"), floor_run.get("worker_cpu_ms_per_learner")),
        1.3,
        "lower",
    )
    window = result["config"]["dispatch_window"] or 2000
    peak_depth = max((a.get("peak_queue_depth", 0) for a in actions.values()), default=None)
    note = "" if learners >= 1_000_000 else "target is for 1,000,000 learners"
    add("producer peak memory (MB)", result.get("producer_peak_rss_mb"), 150, "lower", note)
    depth = ratio(peak_depth, window)
    add("peak RabbitMQ depth (ready + unacked) / window", depth, 1.0, "lower", note)
    fair = group.get("fairness", {})
    add("10-learner batch during the big one, p95 (s)", fair.get("p95_seconds"), 2.0, "lower")
    finalize = actions.get("delete_learner", {}).get("finalize", {})
    add("finalize_deletion lag p99 (s)", finalize.get("lag_p99_seconds"), 60, "lower")
    return out


def log(text: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)


def fmt(value, digits=1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(result: dict) -> str:
    base, actions = result["baselines"], result["actions"]
    floor_run = base.get("floor", {})
    lines = [
        f"Batch Actions bench: {result['config']['learners']:,} learners, "
        f"{result['config']['processes']} processes x {result['config']['threads']} threads, "
        f"window {result['config']['dispatch_window'] or 2000}, {result['machine']['cpus']} CPUs",
        "",
        f"{'run':<22}{'learners':>10}{'seconds':>10}{'per s':>10}{'x floor':>9}"
        f"{'CPU ms/l':>10}{'x floor':>9}{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}"
        f"{'depth':>7}{'RSS MB':>8}",
    ]
    if floor_run:
        lines.append(
            f"{'floor (bare actor)':<22}{fmt(floor_run['learners']):>10}"
            f"{fmt(floor_run['seconds']):>10}{fmt(floor_run['per_second'], 0):>10}{'1.00':>9}"
            f"{fmt(floor_run['worker_cpu_ms_per_learner'], 3):>10}{'1.00':>9}"
        )
    floor_cpu = floor_run.get("worker_cpu_ms_per_learner")
    for name, run in actions.items():
        lat = run["latency_seconds"]
        lines.append(
            f"{name:<22}{fmt(run['learners']):>10}{fmt(run['seconds']):>10}"
            f"{fmt(run['per_second'], 0):>10}"
            f"{fmt(ratio(run['per_second'], floor_run.get('per_second')), 2):>9}"
            f"{fmt(run['worker_cpu_ms_per_learner'], 3):>10}"
            f"{fmt(ratio(run['worker_cpu_ms_per_learner'], floor_cpu), 2):>9}"
            f"{fmt(lat['p50'], 2):>8}{fmt(lat['p95'], 2):>8}{fmt(lat['p99'], 2):>8}"
            f"{fmt(run['peak_queue_depth']):>7}"
            f"{fmt(run['producer_peak_rss_mb']):>8}"
        )
    lines.append("")
    for name in ("raw_publish", "dispatch_confirmed"):
        if name in base:
            lines.append(f"{name:<22}{fmt(base[name]['per_second'], 0):>10} msg/s")
    if "set_based" in base:
        sb = base["set_based"]
        lines.append(
            f"{'set_based':<22}{fmt(sb['per_second'], 0):>10} learners/s "
            f"({fmt(sb['learners'])} in {sb['seconds']} s)"
        )
    fair = actions.get("add_to_group", {}).get("fairness")
    if fair:
        lines.append(f"fairness (10 learners): {fair['seconds']} s, p95 {fair['p95_seconds']} s")
    finalize = actions.get("delete_learner", {}).get("finalize")
    if finalize:
        lines.append(
            f"finalize_deletion lag: p50 {finalize['lag_p50_seconds']} s, "
            f"p99 {finalize['lag_p99_seconds']} s, max {finalize['lag_max_seconds']} s"
        )
    lines.append("")
    lines.append("targets:")
    for t in result["targets"]:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        note = f"  ({t['note']})" if t["note"] else ""
        value = fmt(t["value"], 3)
        lines.append(f"  {t['target']:<52}{value:>10}  limit {t['limit']}: {verdict}{note}")
    return "\n".join(lines)
