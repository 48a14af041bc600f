#!/usr/bin/env python3
"""Helpers of deploy/podman/deploy-test.sh (run by its venv's python: PyYAML).

    stack.py waves MERGED_COMPOSE.yml
        The start order docker compose would follow: one line per wave,
        "svc svc ...|dep=condition dep=condition ...", every service of a wave
        depending only on services of earlier waves.

    stack.py check --producer URL --prometheus URL --mailpit URL --token T
                   --group-id G --course-id C [--workers N] [--timeout S]
        Over HTTP: one batch of every action on the seeded school, each must
        complete with no failed learner; invitation emails reach the SMTP sink;
        Prometheus scrapes every target of deploy/prometheus/prometheus.yml
        (N worker replicas) and has the metrics the dashboard and alerts chart.

Exit status 0 ok, 1 a check failed (the reason on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
ACTIONS = (
    "resend_invitation",
    "add_to_group",
    "add_to_course",
    "deactivate_learner",
    "delete_learner",
)
FINISHED = {"completed", "cancelled", "failed"}
# Metrics that alerts.yml and the dashboard select, one per scraped component.
METRICS = (
    "batch_requests_total",  # producer
    "batch_learners_processed_total",  # workers
    "dramatiq_messages_total",  # workers (Dramatiq middleware)
    "rabbitmq_detailed_queue_consumers",  # rabbitmq-queues
)


class CheckFailed(Exception):
    pass


def log(msg: str) -> None:
    print(f"    {msg}", flush=True)


# ---------------------------------------------------------------- start order


def waves(config: Path) -> None:
    services = (yaml.safe_load(config.read_text()) or {}).get("services") or {}
    deps: dict[str, dict[str, str]] = {}
    for name, svc in services.items():
        raw = svc.get("depends_on") or {}
        if isinstance(raw, list):
            raw = {d: {} for d in raw}
        deps[name] = {d: (c or {}).get("condition", "service_started") for d, c in raw.items()}
        for dep in deps[name]:
            if dep not in services:
                raise CheckFailed(f"{name} depends on {dep}, which is not started")
    started: list[str] = []
    remaining = sorted(services)
    while remaining:
        wave = [s for s in remaining if set(deps[s]) <= set(started)]
        if not wave:
            raise CheckFailed(f"depends_on cycle among {remaining}")
        waits = sorted({f"{d}={c}" for s in wave for d, c in deps[s].items()})
        print(" ".join(wave) + "|" + " ".join(waits))
        started += wave
        remaining = [s for s in remaining if s not in wave]


# ---------------------------------------------------------------------- HTTP


def http(method: str, url: str, token: str | None = None, body: dict | None = None) -> dict:
    headers = {"Accept": "application/json"}
    data = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise CheckFailed(f"{method} {url}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc
    except OSError as exc:
        raise CheckFailed(f"{method} {url}: {exc}") from exc


def learners(api: str, token: str) -> list[dict]:
    out: list[dict] = []
    cursor = None
    while True:
        q = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = http("GET", f"{api}/v1/learners?{urllib.parse.urlencode(q)}", token)
        out += page.get("learners") or page.get("items") or []
        cursor = page.get("next_cursor")
        if not cursor:
            return out


def run_batches(args: argparse.Namespace) -> None:
    api, token = args.producer.rstrip("/"), args.token
    people = [p for p in learners(api, token) if not p.get("is_admin")]
    if len(people) < 40:
        raise CheckFailed(f"GET /v1/learners: {len(people)} learners, the seed made more")
    ids = [p["id"] for p in people]
    log(f"GET /v1/learners: {len(people)} learners (not admins)")
    requests = {
        # Disjoint learners per batch: no batch skips a learner because another
        # one deleted or deactivated it first. Activated ones are skipped.
        "resend_invitation": ({}, {"learner_ids": ids[40:]}),
        "add_to_group": ({"group_ids": [args.group_id]}, {"learner_ids": ids[0:20]}),
        "add_to_course": ({"course_ids": [args.course_id]}, {"learner_ids": ids[0:20]}),
        "deactivate_learner": ({}, {"learner_ids": ids[20:30]}),
        "delete_learner": ({}, {"learner_ids": ids[30:40]}),
    }
    assert set(requests) == set(ACTIONS)
    batches: dict[str, int] = {}
    for action in ACTIONS:
        params, selection = requests[action]
        batch = http(
            "POST",
            f"{api}/v1/batches",
            token,
            {"action": action, "params": params, "selection": selection},
        )
        batches[action] = batch["id"]
        log(f"POST /v1/batches {action}: batch {batch['id']}, {batch.get('total')} learners")

    deadline = time.monotonic() + args.timeout
    views: dict[str, dict] = {}
    while True:
        for action, bid in batches.items():
            if views.get(action, {}).get("status") not in FINISHED:
                views[action] = http("GET", f"{api}/v1/batches/{bid}", token)
        if all(v["status"] in FINISHED for v in views.values()):
            break
        if time.monotonic() > deadline:
            pending = {a: (v["status"], v["counts"]) for a, v in views.items()}
            raise CheckFailed(f"batches not finished after {args.timeout}s: {pending}")
        time.sleep(1)
    for action, view in views.items():
        c = view["counts"]
        log(
            f"{action}: {view['status']}, total {view['total']}, applied {c['applied']}, "
            f"skipped {c['skipped']} {c.get('reasons') or ''}, failed {c['failed']}"
        )
        if view["status"] != "completed" or c["failed"] or c["cancelled"] or c["pending"]:
            raise CheckFailed(f"batch {view['id']} ({action}) did not complete cleanly: {view}")
        if c["applied"] < 1 or c["applied"] + c["skipped"] != view["total"]:
            raise CheckFailed(f"batch {view['id']} ({action}) applied nothing: {view}")

    sent = views["resend_invitation"]["counts"]["applied"]
    deadline = time.monotonic() + 30
    while True:
        got = http("GET", f"{args.mailpit.rstrip('/')}/api/v1/messages").get("total", 0)
        if got >= sent:
            log(f"SMTP sink: {got} emails received, {sent} invitations applied")
            break
        if time.monotonic() > deadline:
            raise CheckFailed(f"SMTP sink received {got} emails, {sent} invitations applied")
        time.sleep(1)


# ---------------------------------------------------------------- Prometheus


def expected_targets(workers: int) -> dict[str, int]:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    counts = {}
    for job in prom["scrape_configs"]:
        n = sum(len(sc.get("targets") or []) for sc in job.get("static_configs") or [])
        for sd in job.get("dns_sd_configs") or []:
            for name in sd.get("names") or []:
                n += workers if name == "worker" else 1
        counts[job["job_name"]] = n
    return counts


def check_prometheus(args: argparse.Namespace) -> None:
    prom = args.prometheus.rstrip("/")
    want = expected_targets(args.workers)
    deadline = time.monotonic() + args.scrape_timeout
    while True:
        targets = http("GET", f"{prom}/api/v1/targets?state=active")["data"]["activeTargets"]
        up: dict[str, int] = {}
        down = []
        for t in targets:
            job = t["labels"].get("job", "?")
            if t["health"] == "up":
                up[job] = up.get(job, 0) + 1
            else:
                down.append(f"{job} {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}")
        missing = {j: (up.get(j, 0), n) for j, n in want.items() if up.get(j, 0) != n}
        if not missing:
            break
        if time.monotonic() > deadline:
            raise CheckFailed(
                f"Prometheus targets not all up after {args.scrape_timeout}s: "
                f"(up, expected) per job {missing}; not up: {down}"
            )
        time.sleep(2)
    log("Prometheus targets up: " + ", ".join(f"{j} {n}" for j, n in sorted(want.items())))
    deadline = time.monotonic() + args.scrape_timeout
    for metric in METRICS:
        while True:
            q = urllib.parse.urlencode({"query": f"count({metric})"})
            result = http("GET", f"{prom}/api/v1/query?{q}")["data"]["result"]
            if result:
                log(f"Prometheus has {metric} ({result[0]['value'][1]} series)")
                break
            if time.monotonic() > deadline:
                raise CheckFailed(f"Prometheus has no {metric} series")
            time.sleep(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("waves")
    w.add_argument("config", type=Path)
    c = sub.add_parser("check")
    c.add_argument("--producer", required=True)
    c.add_argument("--prometheus", required=True)
    c.add_argument("--mailpit", required=True)
    c.add_argument("--token", required=True)
    c.add_argument("--group-id", type=int, required=True)
    c.add_argument("--course-id", type=int, required=True)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--timeout", type=float, default=180)
    c.add_argument("--scrape-timeout", type=float, default=90)
    args = parser.parse_args()
    try:
        if args.cmd == "waves":
            waves(args.config)
        else:
            run_batches(args)
            check_prometheus(args)
    except CheckFailed as exc:
        print(f"stack.py {args.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
