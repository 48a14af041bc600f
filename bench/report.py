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


def service_ratio(run: dict, floor_run: dict, service: str):
    return ratio(
        run.get("service_cpu_ms_per_learner", {}).get(service),
        floor_run.get("service_cpu_ms_per_learner", {}).get(service),
    )


def targets(result: dict, reference: dict | None = None) -> list[dict]:
    """The issue's targets (#16), each with the measured value; `met` is None
    when this run did not measure it. Ratios are against the strict floor
    (`baselines.floor`: it drains messages published before it starts).
    `reference`, a 100,000-learner run's JSON, gives a 1,000,000-learner run
    its per-learner time ratio."""
    base, actions = result["baselines"], result["actions"]
    learners = result["config"]["learners"]
    floor_run = base.get("floor", {})
    out = []

    def add(name, value, limit, better, note=""):
        met = None
        if value is not None:
            met = value >= limit if better == "higher" else value <= limit
        out.append({"target": name, "value": value, "limit": limit, "met": met, "note": note})

    def rate(action):
        return ratio(actions.get(action, {}).get("per_second"), floor_run.get("per_second"))

    def worker_cpu(action):
        return ratio(
            actions.get(action, {}).get("worker_cpu_ms_per_learner"),
            floor_run.get("worker_cpu_ms_per_learner"),
        )

    group = actions.get("add_to_group", {})
    add("add_to_group end-to-end / strict floor", rate("add_to_group"), 0.8, "higher")
    add("worker CPU per learner, add_to_group / floor's", worker_cpu("add_to_group"), 1.2, "lower")
    add(
        "PostgreSQL CPU per learner, add_to_group / floor's",
        service_ratio(group, floor_run, "postgresql"),
        1.8,
        "lower",
    )
    add("deactivate_learner end-to-end / strict floor", rate("deactivate_learner"), 0.75, "higher")
    add("resend_invitation end-to-end / strict floor", rate("resend_invitation"), 0.5, "higher")
    add(
        "worker CPU per learner, resend_invitation / floor's",
        worker_cpu("resend_invitation"),
        3,
        "lower",
    )
    add("delete_learner end-to-end / strict floor", rate("delete_learner"), 0.5, "higher")
    add(
        "worker CPU per learner, delete_learner / floor's", worker_cpu("delete_learner"), 2, "lower"
    )
    finalize = actions.get("delete_learner", {}).get("finalize", {})
    add("finalize_deletion lag p99 (s)", finalize.get("lag_p99_seconds"), 30, "lower")
    fair = group.get("fairness", {})
    add(
        "10-learner batch during the big one, p95 (s)",
        fair.get("p95_seconds"),
        1.0,
        "lower",
        f"QUEUE_TYPE={result['config'].get('queue_type') or 'default'}",
    )
    note = "" if learners >= 1_000_000 else "target is for 1,000,000 learners"
    add("producer peak memory (MB)", result.get("producer_peak_rss_mb"), 150, "lower", note)
    per_learner = None
    if reference and group.get("seconds"):
        before = reference.get("actions", {}).get("add_to_group", {})
        if before.get("seconds"):
            per_learner = ratio(
                group["seconds"] / group["learners"], before["seconds"] / before["learners"]
            )
    add(
        "add_to_group time per learner / the reference run's",
        per_learner,
        1.1,
        "lower",
        "with --reference <100,000 run JSON>, for 1,000,000 learners",
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
    window = result["config"]["dispatch_window"] or 2000
    peak_depth = max((a.get("peak_queue_depth", 0) for a in actions.values()), default=None)
    add("peak RabbitMQ depth (ready + unacked) / window", ratio(peak_depth, window), 1.0, "lower")
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
        f"{'CPU ms/l':>10}{'x floor':>9}{'PG ms/l':>9}{'x floor':>9}{'MQ ms/l':>9}"
        f"{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}{'depth':>7}{'RSS MB':>8}",
    ]
    floor_cpu = floor_run.get("worker_cpu_ms_per_learner")

    def services(run) -> str:
        cpu = run.get("service_cpu_ms_per_learner", {})
        return (
            f"{fmt(cpu.get('postgresql'), 3):>9}"
            f"{fmt(service_ratio(run, floor_run, 'postgresql'), 2):>9}"
            f"{fmt(cpu.get('rabbitmq'), 3):>9}"
        )

    for label, name in (("strict floor (drain)", "floor"), ("floor fed by publisher", "floor_fed")):
        run = base.get(name)
        if run:
            lines.append(
                f"{label:<22}{fmt(run['learners']):>10}{fmt(run['seconds']):>10}"
                f"{fmt(run['per_second'], 0):>10}"
                f"{fmt(ratio(run['per_second'], floor_run.get('per_second')), 2):>9}"
                f"{fmt(run['worker_cpu_ms_per_learner'], 3):>10}"
                f"{fmt(ratio(run['worker_cpu_ms_per_learner'], floor_cpu), 2):>9}" + services(run)
            )
    for name, run in actions.items():
        lat = run["latency_seconds"]
        lines.append(
            f"{name:<22}{fmt(run['learners']):>10}{fmt(run['seconds']):>10}"
            f"{fmt(run['per_second'], 0):>10}"
            f"{fmt(ratio(run['per_second'], floor_run.get('per_second')), 2):>9}"
            f"{fmt(run['worker_cpu_ms_per_learner'], 3):>10}"
            f"{fmt(ratio(run['worker_cpu_ms_per_learner'], floor_cpu), 2):>9}"
            + services(run)
            + f"{fmt(lat['p50'], 2):>8}{fmt(lat['p95'], 2):>8}{fmt(lat['p99'], 2):>8}"
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
