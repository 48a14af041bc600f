"""Cross-file checks for deploy/ that no schema can express.

Schemas (compose-spec, Kubernetes, KEDA) and promtool/hadolint check each file
on its own, and checkov the generic good practice (non-root, resources,
probes, health checks: deploy/checkov.yaml); this module checks that the
files agree with each other and with the contract in docs/CONTRACT.md: every
metric a query selects is a known one, every alert has a runbook link and a
firing and a silent unit test, a Service or a PodDisruptionBudget selects pods
that exist, a probe names a port the container declares, the worker's grace
period covers the longest learner step in both compose and Kubernetes, the
image installs exactly requirements.lock, which pins pyproject.toml's
dependencies, and so on.

Usage: python deploy_checks.py DEPLOY_DIR SECTION...
Sections: metrics alerts dashboard compose k8s dockerfile lock monitoring kustomize,
or `list-k8s core|keda` (prints manifest files for the schema validators), or
`write-prometheusrule` (k8s/monitoring/prometheusrule.yaml from alerts.yml).
Exit status 1 on any error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The contract (docs/CONTRACT.md).
ACTION_QUEUES = (
    "resend_invitation",
    "add_to_group",
    "add_to_course",
    "deactivate_learner",
    "delete_learner",
    "reactivate_learner",
    "finalize_deletion",
    "deliver_webhook",
)
APP_COMMANDS = {"serve", "worker", "reconcile", "migrate"}
APP_SECRET_KEYS = {"DATABASE_URL", "BROKER_URL", "REDIS_URL", "SMTP_URL", "SIGNING_KEY"}
APP_CONFIG_KEYS = {
    "DISPATCH_WINDOW",
    "DELETION_GRACE_SECONDS",
    "METRICS_PORT",
    "PROMETHEUS_MULTIPROC_DIR",
}
LONGEST_LEARNER_STEP_SECONDS = 60
SECRET_NAME = "batch-actions"
RUNBOOK = "docs/OPERATIONS.md"
# Where runbook_url links point until an operator sets RUNBOOK_URL (the
# monitoring component, k8s/monitoring/): a placeholder, never a real host.
RUNBOOK_URL = "https://batch-actions.invalid/docs/OPERATIONS.md"
# The image's pinned, hashed dependencies (next to pyproject.toml; `make lock`).
LOCK = "requirements.lock"
# Project metrics the dashboard must chart (one of each family at least).
DASHBOARD_MUST_USE = {
    "batch_learners_processed_total",
    "batch_learner_latency_seconds_bucket",
    "batch_messages_published_total",
    "batch_requests_total",
    "batches_active",
    "deletions_pending",
    "deletion_finalize_lag_seconds",
    "batch_webhook_deliveries_total",
    "rabbitmq_detailed_queue_messages_ready",
    "dramatiq_message_retries_total",
    "dramatiq_message_errors_total",
}
# Files in k8s/ that are not applied by kustomization.yaml, on purpose.
K8S_NOT_IN_KUSTOMIZATION = {"secret.example.yaml"}


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")

    def warn(self, where: str, msg: str) -> None:
        self.warnings.append(f"{where}: {msg}")


def load_yaml(path: Path) -> Any:
    with path.open() as fh:
        return yaml.safe_load(fh)


def load_yaml_all(path: Path) -> list[Any]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


# --------------------------------------------------------------------- PromQL

GRAFANA_RANGE_VARS = re.compile(
    r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}"
)
GRAFANA_VARS = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana variables so the query parses as plain PromQL."""
    expr = GRAFANA_RANGE_VARS.sub("5m", expr)
    return GRAFANA_VARS.sub("var", expr)


def selected_metrics(expr: str) -> list[str | None]:
    """Metric names of every vector selector in expr (None: selector without a fixed name)."""
    names: list[str | None] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if name is None:
                for m in node.matchers.matchers:
                    if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal:
                        name = m.value
            names.append(name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def known_metrics(deploy: Path) -> set[str]:
    names = set()
    for line in (deploy / "metric-names.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line):
                raise SystemExit(f"metric-names.txt: not a metric name: {line!r}")
            names.add(line)
    return names


def alert_rules(deploy: Path) -> Iterator[dict[str, Any]]:
    doc = load_yaml(deploy / "prometheus" / "alerts.yml") or {}
    for group in doc.get("groups") or []:
        yield from group.get("rules") or []


def dashboard_queries(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels") or [])

    for p in panels(dash.get("panels") or []):
        for t in p.get("targets") or []:
            if "expr" in t:
                yield (
                    f"panel {p.get('title')!r} target {t.get('refId')}",
                    grafana_to_promql(t["expr"]),
                )
    for var in (dash.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = LABEL_VALUES.match(q)
        if m:
            yield f"variable ${var.get('name')}", grafana_to_promql(m.group(1))
        elif q.strip():
            yield f"variable ${var.get('name')}", grafana_to_promql(q)


def check_metrics(deploy: Path, r: Report) -> None:
    known = known_metrics(deploy)
    sources: list[tuple[str, str]] = []
    for rule in alert_rules(deploy):
        name = rule.get("alert") or rule.get("record")
        sources.append((f"alerts.yml {name}", str(rule.get("expr", ""))))
    dash_path = deploy / "grafana" / "batch-actions.json"
    try:
        dash = json.loads(dash_path.read_text())
    except (OSError, ValueError) as exc:
        r.error("grafana/batch-actions.json", f"not valid JSON: {exc}")
        dash = {}
    sources += [(f"batch-actions.json {w}", q) for w, q in dashboard_queries(dash)]
    for where, expr in sources:
        try:
            names = selected_metrics(expr)
        except ValueError as exc:
            r.error(where, f"PromQL does not parse: {exc}: {expr.strip()}")
            continue
        if not names:
            r.error(where, "query selects no metric")
        for n in names:
            if n is None:
                r.error(where, "selector without a fixed metric name (use a known name)")
            elif n not in known:
                r.error(where, f"unknown metric {n!r} (not in metric-names.txt)")


# --------------------------------------------------------------------- alerts


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    anchors.update(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", markdown))
    return anchors


def check_alerts(deploy: Path, r: Report) -> None:
    rules = [rule for rule in alert_rules(deploy) if "alert" in rule]
    if not rules:
        r.error("alerts.yml", "no alert rules")
    names = [rule["alert"] for rule in rules]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        r.error("alerts.yml", f"alert {dup} defined twice")
    for rule in rules:
        where = f"alerts.yml {rule['alert']}"
        ann = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook_url"):
            if not str(ann.get(key, "")).strip():
                r.error(where, f"missing annotation {key}")
        want = f"{RUNBOOK_URL}#{rule['alert'].lower()}"
        if ann.get("runbook_url") and ann["runbook_url"] != want:
            r.error(where, f"runbook_url is {ann['runbook_url']!r}, expected {want!r}")
        if (rule.get("labels") or {}).get("severity") not in {"warning", "critical"}:
            r.error(where, "labels.severity must be warning or critical")

    tests = load_yaml(deploy / "prometheus" / "alerts_test.yml") or {}
    fires: set[str] = set()
    silent: set[str] = set()
    for test in tests.get("tests") or []:
        for case in test.get("alert_rule_test") or []:
            (fires if case.get("exp_alerts") else silent).add(case.get("alertname"))
    for name in names:
        if name not in fires:
            r.error("alerts_test.yml", f"no test where {name} fires")
        if name not in silent:
            r.error("alerts_test.yml", f"no test where {name} must stay silent")
    for name in sorted((fires | silent) - set(names)):
        r.error("alerts_test.yml", f"tests alert {name!r}, which alerts.yml does not define")

    runbook = deploy.parent / RUNBOOK
    if not runbook.is_file():
        r.warn(RUNBOOK, "not found next to deploy/; runbook anchors not checked")
        return
    anchors = github_anchors(runbook.read_text())
    for name in names:
        if name.lower() not in anchors:
            r.error(RUNBOOK, f"no section for alert {name} (anchor #{name.lower()})")


# ------------------------------------------------------------------ dashboard


def check_dashboard(deploy: Path, r: Report) -> None:
    where = "grafana/batch-actions.json"
    try:
        dash = json.loads((deploy / "grafana" / "batch-actions.json").read_text())
    except (OSError, ValueError) as exc:
        r.error(where, f"not valid JSON: {exc}")
        return
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in dash:
            r.error(where, f"missing top-level {key!r}")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds_var = variables.get("datasource")
    if not ds_var or ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        r.error(where, "needs a $datasource variable of type datasource (query: prometheus)")

    provisioned = load_yaml(deploy / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uids = {d.get("uid") for d in provisioned.get("datasources") or []}
    allowed = {"${datasource}", "$datasource"} | uids
    ids: list[int] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            title = p.get("title")
            ids.append(p.get("id"))
            if "gridPos" not in p:
                r.error(where, f"panel {title!r} has no gridPos")
            if p.get("type") != "row":
                ds = p.get("datasource") or {}
                if ds.get("uid") not in allowed:
                    r.error(
                        where,
                        f"panel {title!r} datasource {ds!r} is neither $datasource nor provisioned",
                    )
                targets = p.get("targets") or []
                if not targets or not all(t.get("expr") for t in targets):
                    r.error(where, f"panel {title!r} has a target without expr")
                for t in targets:
                    tds = t.get("datasource")
                    if tds and tds.get("uid") not in allowed:
                        r.error(where, f"panel {title!r} target datasource {tds!r}")
            walk(p.get("panels") or [])

    walk(dash.get("panels") or [])
    for dup in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        r.error(where, f"panel id {dup} used twice")
    if ds_var and (ds_var.get("current") or {}).get("value") not in uids:
        r.error(
            where,
            f"$datasource default {ds_var.get('current')!r} is not a provisioned uid"
            f" {sorted(uids)}",
        )

    used: set[str] = set()
    for _, q in dashboard_queries(dash):
        with contextlib.suppress(ValueError):  # a parse error is the metrics section's report
            used.update(n for n in selected_metrics(q) if n)
    for name in sorted(DASHBOARD_MUST_USE - used):
        r.error(where, f"no panel charts {name}")

    providers = load_yaml(deploy / "grafana" / "provisioning" / "dashboards" / "batch-actions.yml")
    paths = {(p.get("options") or {}).get("path") for p in providers.get("providers") or []}
    compose = load_yaml(deploy / "docker-compose.yml")
    mounts = [_bind_mount(v) for v in compose["services"].get("grafana", {}).get("volumes", [])]
    if not any(
        src == "./grafana/batch-actions.json" and tgt and str(Path(tgt).parent) in paths
        for src, tgt in mounts
    ):
        r.error(
            "docker-compose.yml",
            "grafana must mount ./grafana/batch-actions.json into a provisioned path"
            f" {sorted(paths, key=str)}",
        )


# -------------------------------------------------------------------- compose


def _bind_mount(vol: Any) -> tuple[str | None, str | None]:
    if isinstance(vol, str):
        parts = vol.split(":")
        return (parts[0], parts[1]) if len(parts) >= 2 else (None, parts[0])
    if isinstance(vol, dict):
        return (vol.get("source"), vol.get("target"))
    return (None, None)


def _seconds(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(value)):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
    return total


# Compose variables that hold a secret: required (`${VAR:?...}`), never given a
# default a deployment could silently run with.
COMPOSE_SECRETS = (
    "SIGNING_KEY",
    "POSTGRES_PASSWORD",
    "RABBITMQ_PASSWORD",
    "REDIS_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)


def check_compose_secrets(text: str, where: str, r: Report) -> None:
    for name in COMPOSE_SECRETS:
        if re.search(r"\$\{" + name + r":?-", text):
            r.error(where, f"${{{name}}} has a default; require it: ${{{name}:?...}}")
        if not re.search(r"\$\{" + name + r":\?", text):
            r.error(where, f"${{{name}}} is not required (${{{name}:?...}})")
    if "--web.enable-lifecycle" in text:
        r.error(where, "Prometheus' lifecycle API is on (--web.enable-lifecycle)")
    if "--requirepass" not in text:
        r.error(where, "Redis runs without a password (--requirepass)")


def check_compose(deploy: Path, r: Report) -> None:
    where = "docker-compose.yml"
    check_compose_secrets((deploy / where).read_text(), where, r)
    compose = load_yaml(deploy / where)
    services: dict[str, Any] = compose.get("services") or {}
    volumes = set((compose.get("volumes") or {}).keys())
    for name, svc in services.items():
        w = f"{where} service {name}"
        for dep, cond in (
            (svc.get("depends_on") or {}).items() if isinstance(svc.get("depends_on"), dict) else []
        ):
            if dep not in services:
                r.error(w, f"depends_on unknown service {dep!r}")
                continue
            condition = (cond or {}).get("condition")
            target = services[dep]
            hc = target.get("healthcheck") or {}
            if condition == "service_healthy" and (hc.get("disable") or not hc.get("test")):
                r.error(w, f"waits for {dep} to be healthy but {dep} has no healthcheck")
            if condition == "service_completed_successfully" and target.get("restart") not in (
                "no",
                None,
            ):
                r.error(
                    w, f"waits for {dep} to complete but {dep} restarts ({target.get('restart')})"
                )
        for vol in svc.get("volumes") or []:
            src, _ = _bind_mount(vol)
            if isinstance(vol, dict) and vol.get("type") == "tmpfs":
                continue
            if src and src.startswith("."):
                if not (deploy / src).exists():
                    r.error(w, f"bind mount source {src} does not exist")
            elif src and src not in volumes:
                r.error(w, f"named volume {src!r} is not declared")
        build = svc.get("build")
        if isinstance(build, dict):
            ctx = (deploy / build.get("context", ".")).resolve()
            dockerfile = ctx / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                r.error(w, f"build dockerfile {dockerfile} does not exist")
            if not (ctx / "pyproject.toml").is_file():
                r.error(w, f"build context {ctx} has no pyproject.toml")

    app = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("batch-actions")}
    if {"migrate", "producer", "worker", "reconciler"} - set(app):
        r.error(where, "needs app services migrate, producer, worker, reconciler")
    for name, svc in app.items():
        w = f"{where} service {name}"
        command = svc.get("command") or []
        if not command or command[0] not in APP_COMMANDS:
            r.error(w, f"command must start with one of {sorted(APP_COMMANDS)}")
        env = svc.get("environment") or {}
        for key in sorted((APP_SECRET_KEYS | APP_CONFIG_KEYS) - set(env)):
            r.error(w, f"environment lacks {key}")
        mp = env.get("PROMETHEUS_MULTIPROC_DIR")
        tmpfs = [
            v.get("target")
            for v in svc.get("volumes") or []
            if isinstance(v, dict) and v.get("type") == "tmpfs"
        ]
        tmpfs += [t.split(":")[0] for t in (svc.get("tmpfs") or [])]
        if mp and mp not in tmpfs:
            r.error(w, f"PROMETHEUS_MULTIPROC_DIR {mp} is not a tmpfs")
        if name != "migrate":
            deps = svc.get("depends_on") or {}
            if (deps.get("migrate") or {}).get("condition") != "service_completed_successfully":
                r.error(w, "must wait for migrate (condition: service_completed_successfully)")
    worker = services.get("worker") or {}
    if _seconds(worker.get("stop_grace_period", "10s")) < LONGEST_LEARNER_STEP_SECONDS:
        r.error(
            f"{where} service worker",
            "stop_grace_period shorter than the longest learner step"
            f" ({LONGEST_LEARNER_STEP_SECONDS}s)",
        )

    prom = load_yaml(deploy / "prometheus" / "prometheus.yml")
    jobs = {j.get("job_name"): j for j in prom.get("scrape_configs") or []}
    for job in jobs.values():
        hosts = [
            t.split(":")[0]
            for sc in job.get("static_configs") or []
            for t in sc.get("targets") or []
        ]
        hosts += [n for sd in job.get("dns_sd_configs") or [] for n in sd.get("names") or []]
        for host in hosts:
            if host not in services and host != "localhost":
                r.error(
                    "prometheus/prometheus.yml",
                    f"job {job.get('job_name')} scrapes {host!r}, not a compose service",
                )
    for needed in (
        "batch-actions-producer",
        "batch-actions-worker",
        "batch-actions-reconciler",
        "rabbitmq",
        "rabbitmq-queues",
    ):
        if needed not in jobs:
            r.error("prometheus/prometheus.yml", f"no scrape job {needed}")
    plugins = (deploy / "rabbitmq" / "enabled_plugins").read_text()
    for plugin in ("rabbitmq_management", "rabbitmq_prometheus"):
        if plugin not in plugins:
            r.error("rabbitmq/enabled_plugins", f"{plugin} not enabled")


# ------------------------------------------------------------------------ k8s


def k8s_docs(deploy: Path) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((deploy / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_all(path):
            docs.append((path.name, doc))
    return docs


def list_k8s(deploy: Path, which: str) -> None:
    files: dict[str, set[bool]] = {}
    for fname, doc in k8s_docs(deploy):
        files.setdefault(fname, set()).add(str(doc.get("apiVersion", "")).startswith("keda.sh/"))
    for fname, kinds in sorted(files.items()):
        if len(kinds) > 1:
            raise SystemExit(
                f"k8s/{fname}: mixes KEDA and core resources; keep them in separate files"
            )
        is_keda = kinds.pop()
        if is_keda == (which == "keda"):
            print(deploy / "k8s" / fname)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_k8s(deploy: Path, r: Report) -> None:
    docs = k8s_docs(deploy)
    by_kind: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
    for fname, doc in docs:
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        if (doc.get("metadata") or {}).get("namespace"):
            r.error(
                fname,
                f"{kind}/{name} sets metadata.namespace; manifests must be namespace-agnostic",
            )
        if name in by_kind.setdefault(kind, {}):
            r.error(fname, f"{kind}/{name} defined twice")
        by_kind[kind][name] = (fname, doc)

    kust = load_yaml(deploy / "k8s" / "kustomization.yaml") or {}
    listed = set(kust.get("resources") or [])
    present = {p.name for p in (deploy / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    for res in sorted(listed - present):
        r.error("k8s/kustomization.yaml", f"resource {res} does not exist")
    for res in sorted(present - listed - K8S_NOT_IN_KUSTOMIZATION):
        r.error("k8s/kustomization.yaml", f"{res} is not listed in resources")
    for res in sorted(listed & K8S_NOT_IN_KUSTOMIZATION):
        r.error("k8s/kustomization.yaml", f"{res} must not be applied by kustomize")

    configmaps = by_kind.get("ConfigMap", {})
    config = {}
    for _, cm in configmaps.values():
        config.update(cm.get("data") or {})
    for key in sorted(APP_CONFIG_KEYS - set(config)):
        r.error("k8s ConfigMap", f"lacks {key}")
    for key in sorted(APP_SECRET_KEYS & set(config)):
        r.error("k8s ConfigMap", f"{key} is a secret; it belongs in Secret {SECRET_NAME}")
    example = by_kind.get("Secret", {}).get(SECRET_NAME)
    secret_keys = set(
        (example[1].get("stringData") or example[1].get("data") or {}) if example else {}
    )
    if secret_keys != APP_SECRET_KEYS:
        r.error(
            "k8s/secret.example.yaml",
            f"Secret {SECRET_NAME} keys {sorted(secret_keys)} != {sorted(APP_SECRET_KEYS)}",
        )
    multiproc_dir = config.get("PROMETHEUS_MULTIPROC_DIR")

    workloads = dict(by_kind.get("Deployment", {}))
    workloads.update({f"job/{n}": v for n, v in by_kind.get("Job", {}).items()})
    commands: dict[str, str] = {}
    for wname, (fname, obj) in workloads.items():
        w = f"{fname} {obj['kind']}/{obj['metadata']['name']}"
        spec = obj.get("spec") or {}
        tmpl = spec.get("template") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        pod = tmpl.get("spec") or {}
        if obj["kind"] == "Deployment" and not _matches(
            (spec.get("selector") or {}).get("matchLabels") or {}, labels
        ):
            r.error(w, "selector.matchLabels do not match the pod template labels")
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        for c in pod.get("containers") or []:
            cw = f"{w} container {c.get('name')}"
            args = c.get("args") or []
            if not args or args[0] not in APP_COMMANDS:
                r.error(cw, f"args must start with one of {sorted(APP_COMMANDS)}")
            else:
                commands[args[0]] = wname
            refs = c.get("envFrom") or []
            if not any((e.get("secretRef") or {}).get("name") == SECRET_NAME for e in refs):
                r.error(cw, f"envFrom must reference Secret {SECRET_NAME}")
            for e in refs:
                cm = (e.get("configMapRef") or {}).get("name")
                if cm and cm not in configmaps:
                    r.error(cw, f"envFrom references unknown ConfigMap {cm}")
            ports = {p.get("name") for p in c.get("ports") or []}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    r.error(cw, f"{probe} uses port {port!r}, not declared by the container")
            mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
            for path, vol in mounts.items():
                if vol not in volumes:
                    r.error(cw, f"volumeMount {path} uses unknown volume {vol}")
            if obj["kind"] == "Deployment" and multiproc_dir:
                vol = volumes.get(mounts.get(multiproc_dir))
                if not vol or "emptyDir" not in vol:
                    r.error(
                        cw, f"PROMETHEUS_MULTIPROC_DIR {multiproc_dir} must be an emptyDir mount"
                    )
            if (c.get("securityContext") or {}).get(
                "readOnlyRootFilesystem"
            ) and "/tmp" not in mounts:
                r.error(cw, "read-only root filesystem needs a writable /tmp mount")
        if obj["kind"] == "Job" and pod.get("restartPolicy") not in ("Never", "OnFailure"):
            r.error(w, "Job restartPolicy must be Never or OnFailure")
    for cmd in sorted(APP_COMMANDS - set(commands)):
        r.error("k8s", f"no workload runs `batchctl {cmd}`")

    deployments = by_kind.get("Deployment", {})

    def pod_labels(name: str) -> dict[str, str]:
        return (
            (deployments[name][1]["spec"]["template"].get("metadata") or {}).get("labels")
        ) or {}

    worker_name = commands.get("worker")
    if worker_name in deployments:
        grace = deployments[worker_name][1]["spec"]["template"]["spec"].get(
            "terminationGracePeriodSeconds", 30
        )
        if grace < LONGEST_LEARNER_STEP_SECONDS:
            r.error(
                "k8s worker",
                f"terminationGracePeriodSeconds {grace} < longest learner step"
                f" {LONGEST_LEARNER_STEP_SECONDS}s",
            )
        compose_worker = (load_yaml(deploy / "docker-compose.yml").get("services") or {}).get(
            "worker"
        ) or {}
        if _seconds(compose_worker.get("stop_grace_period", "10s")) != grace:
            r.error(
                "k8s worker",
                f"terminationGracePeriodSeconds {grace} differs from compose stop_grace_period",
            )

    for name, (fname, svc) in by_kind.get("Service", {}).items():
        sel = (svc.get("spec") or {}).get("selector") or {}
        targets = [d for d in deployments if _matches(sel, pod_labels(d))]
        if not targets:
            r.error(fname, f"Service/{name} selects no Deployment's pods")
        for port in (svc.get("spec") or {}).get("ports") or []:
            tp = port.get("targetPort")
            for d in targets:
                declared = {
                    p.get("name")
                    for c in deployments[d][1]["spec"]["template"]["spec"]["containers"]
                    for p in c.get("ports") or []
                }
                if isinstance(tp, str) and tp not in declared:
                    r.error(fname, f"Service/{name} targetPort {tp!r} not declared by {d}")

    pdb_targets = set()
    for name, (fname, pdb) in by_kind.get("PodDisruptionBudget", {}).items():
        sel = ((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        hit = [d for d in deployments if _matches(sel, pod_labels(d))]
        if not hit:
            r.error(fname, f"PodDisruptionBudget/{name} selects no Deployment's pods")
        pdb_targets.update(hit)
    for cmd in ("serve", "worker"):
        if commands.get(cmd) in deployments and commands[cmd] not in pdb_targets:
            r.error("k8s", f"no PodDisruptionBudget covers {commands[cmd]}")

    auths = by_kind.get("TriggerAuthentication", {})
    for name, (fname, ta) in auths.items():
        for ref in (ta.get("spec") or {}).get("secretTargetRef") or []:
            if ref.get("name") != SECRET_NAME or ref.get("key") not in APP_SECRET_KEYS:
                r.error(
                    fname,
                    f"TriggerAuthentication/{name} references {ref.get('name')}/{ref.get('key')},"
                    f" not a key of Secret {SECRET_NAME}",
                )
    scaled = by_kind.get("ScaledObject", {})
    if not scaled:
        r.error("k8s", "no KEDA ScaledObject")
    for name, (fname, so) in scaled.items():
        spec = so.get("spec") or {}
        target = (spec.get("scaleTargetRef") or {}).get("name")
        if target != worker_name:
            r.error(
                fname,
                f"ScaledObject/{name} scales {target!r}, not the worker Deployment {worker_name!r}",
            )
        queues = set()
        for trig in spec.get("triggers") or []:
            if trig.get("type") != "rabbitmq":
                continue
            queues.add((trig.get("metadata") or {}).get("queueName"))
            ref = (trig.get("authenticationRef") or {}).get("name")
            if ref not in auths:
                r.error(
                    fname, f"ScaledObject/{name} trigger uses unknown TriggerAuthentication {ref!r}"
                )
        for q in sorted(set(ACTION_QUEUES) - queues):
            r.error(fname, f"ScaledObject/{name} has no rabbitmq trigger for queue {q}")
        for q in sorted(queues - set(ACTION_QUEUES), key=str):
            r.error(fname, f"ScaledObject/{name} triggers on unknown queue {q!r}")


# ----------------------------------------------------------------- Dockerfile


def check_dockerfile(deploy: Path, r: Report) -> None:
    where = "Dockerfile"
    text = (deploy / where).read_text()
    lines = [
        ln.strip()
        for ln in re.sub(r"\\\n", " ", text).splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    if len(froms) < 2:
        r.error(where, "must be multi-stage (at least two FROM)")
    final = lines[lines.index(froms[-1]) :] if froms else lines
    entry = [ln for ln in final if ln.upper().startswith("ENTRYPOINT")]
    if not entry or json.loads(entry[-1].split(None, 1)[1]) != ["batchctl"]:
        r.error(where, 'final stage needs exec-form ENTRYPOINT ["batchctl"]')
    runs = [ln for ln in lines if ln.upper().startswith("RUN ") and "pip install" in ln]
    if not any(f"--require-hashes -r {LOCK}" in ln for ln in runs):
        r.error(
            where, f"dependencies must be installed with `pip install --require-hashes -r {LOCK}`"
        )
    if not any("--no-deps ." in ln for ln in runs):
        r.error(
            where, "the project must be installed with `pip install --no-deps .` (all else locked)"
        )
    unlocked = [ln for ln in runs if LOCK not in ln and "--no-deps" not in ln]
    for ln in unlocked:
        r.error(where, f"installs what the lock does not pin: {ln}")
    ignore = deploy / "Dockerfile.dockerignore"
    if not ignore.is_file():
        r.error(where, "Dockerfile.dockerignore missing (build context is the repo root)")
    elif f"!{LOCK}" not in ignore.read_text().split():
        r.error("Dockerfile.dockerignore", f"{LOCK} is not in the build context (!{LOCK})")


# ----------------------------------------------------------------- monitoring

MONITORING = "k8s/monitoring"
PROMETHEUS_RULE = f"{MONITORING}/prometheusrule.yaml"
PROMETHEUS_RULE_HEADER = """\
# GENERATED from prometheus/alerts.yml, the one source of the alert rules: do
# not edit. After changing alerts.yml, run
#   python deploy/tools/deploy_checks.py deploy write-prometheusrule
# (deploy/validate.sh fails while the two differ). The monitoring component
# rewrites each runbook_url to RUNBOOK_URL#<alert> (kustomization.yaml).
"""
# Scrape jobs (prometheus/prometheus.yml) of the processes, by their command.
PROCESS_JOBS = {
    "serve": "batch-actions-producer",
    "worker": "batch-actions-worker",
    "reconcile": "batch-actions-reconciler",
}


class _BlockStrings(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as alerts.yml writes them."""


_BlockStrings.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def prometheus_rule(deploy: Path) -> dict[str, Any]:
    """The PrometheusRule whose spec is alerts.yml."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "batch-actions",
            "labels": {
                "app.kubernetes.io/name": "batch-actions",
                "app.kubernetes.io/part-of": "batch-actions",
            },
        },
        "spec": load_yaml(deploy / "prometheus" / "alerts.yml"),
    }


def write_prometheus_rule(deploy: Path) -> None:
    body = yaml.dump(prometheus_rule(deploy), Dumper=_BlockStrings, sort_keys=False, width=1000)
    (deploy / PROMETHEUS_RULE).write_text(PROMETHEUS_RULE_HEADER + body)


def check_monitoring(deploy: Path, r: Report) -> None:
    """The Prometheus Operator component: its PrometheusRule is alerts.yml, a
    PodMonitor scrapes each process's pods under its job name, the dashboard
    ConfigMap is made from the dashboard file."""
    committed = load_yaml(deploy / PROMETHEUS_RULE)
    if committed != prometheus_rule(deploy):
        r.error(
            PROMETHEUS_RULE,
            "differs from prometheus/alerts.yml: run `python deploy/tools/deploy_checks.py"
            " deploy write-prometheusrule`",
        )
    kust = load_yaml(deploy / MONITORING / "kustomization.yaml") or {}
    if kust.get("kind") != "Component":
        r.error(f"{MONITORING}/kustomization.yaml", "must be a kustomize Component")
    listed = set(kust.get("resources") or [])
    for path in sorted((deploy / MONITORING).glob("*.yaml")):
        if path.name != "kustomization.yaml" and path.name not in listed:
            r.error(f"{MONITORING}/kustomization.yaml", f"{path.name} is not in resources")
    if "../../grafana" not in listed:
        r.error(f"{MONITORING}/kustomization.yaml", "resources lack ../../grafana (dashboard)")

    config: dict[str, Any] = {}
    deployments: dict[str, dict[str, Any]] = {}
    for _, doc in k8s_docs(deploy):
        if doc.get("kind") == "ConfigMap":
            config.update(doc.get("data") or {})
        if doc.get("kind") == "Deployment":
            pod = doc["spec"]["template"]
            for c in pod["spec"].get("containers") or []:
                if (c.get("args") or [None])[0] in PROCESS_JOBS:
                    deployments[c["args"][0]] = {
                        "labels": (pod.get("metadata") or {}).get("labels") or {},
                        "ports": {p.get("name") for p in c.get("ports") or []},
                    }
    if config.get("RUNBOOK_URL") != RUNBOOK_URL:
        r.error(
            "k8s ConfigMap",
            f"RUNBOOK_URL is {config.get('RUNBOOK_URL')!r}; the default is {RUNBOOK_URL!r}"
            " (operators set theirs in an overlay)",
        )

    monitors = [
        doc
        for path in sorted((deploy / MONITORING).glob("*.yaml"))
        for doc in load_yaml_all(path)
        if doc.get("kind") == "PodMonitor"
    ]
    for command, job in PROCESS_JOBS.items():
        target = deployments.get(command)
        if target is None:
            r.error("k8s", f"no Deployment runs `batchctl {command}`")
            continue
        found = False
        for pm in monitors:
            sel = ((pm.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not _matches(sel, target["labels"]):
                continue
            for ep in (pm.get("spec") or {}).get("podMetricsEndpoints") or []:
                jobs = {
                    rl.get("replacement")
                    for rl in ep.get("relabelings") or []
                    if rl.get("targetLabel") == "job"
                }
                where = f"{MONITORING} PodMonitor/{pm['metadata']['name']}"
                if ep.get("port") not in target["ports"]:
                    r.error(where, f"port {ep.get('port')!r} not declared by the {command} pods")
                elif jobs != {job}:
                    r.error(where, f"must set job={job} (prometheus/prometheus.yml), not {jobs}")
                else:
                    found = True
        if not found:
            r.error(MONITORING, f"no PodMonitor scrapes the {command} pods as job {job}")

    grafana = load_yaml(deploy / "grafana" / "kustomization.yaml") or {}
    dashboards = [
        g
        for g in grafana.get("configMapGenerator") or []
        if "batch-actions.json" in (g.get("files") or [])
        and "grafana_dashboard" in ((g.get("options") or {}).get("labels") or {})
    ]
    if not dashboards:
        r.error(
            "grafana/kustomization.yaml",
            "needs a configMapGenerator of batch-actions.json labelled grafana_dashboard",
        )


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def check_kustomize(deploy: Path, r: Report) -> None:
    """What `kubectl apply -k` would apply: the base (the migrate Job included),
    and an overlay with the monitoring component and its own RUNBOOK_URL."""
    command = kustomize_command()
    if command is None:
        r.error("kustomize", "neither kustomize nor kubectl on PATH (deploy/install-tools.sh)")
        return
    url = "https://runbooks.example.test/batch-actions/OPERATIONS.md"
    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp)
        base = os.path.relpath(deploy / "k8s", overlay)
        (overlay / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [base],
                    "components": [f"{base}/monitoring"],
                    "configMapGenerator": [
                        {
                            "name": "batch-actions-config",
                            "behavior": "merge",
                            "literals": [f"RUNBOOK_URL={url}"],
                        }
                    ],
                }
            )
        )
        plain = overlay / "plain"
        plain.mkdir()
        (plain / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [f"../{base}"],
                    "components": [f"../{base}/monitoring"],
                }
            )
        )
        built = {}
        for name, target in (
            ("k8s", deploy / "k8s"),
            ("k8s + monitoring", overlay),
            ("k8s + monitoring, RUNBOOK_URL not set", plain),
        ):
            proc = subprocess.run(
                [*command, str(target)], capture_output=True, text=True, timeout=120
            )
            if proc.returncode:
                r.error(f"kustomize {name}", proc.stderr.strip()[-2000:])
                return
            built[name] = [d for d in yaml.safe_load_all(proc.stdout) if d]

    kinds = {(d["kind"], d["metadata"]["name"]) for d in built["k8s"]}
    if ("Job", "batch-actions-migrate") not in kinds:
        r.error("k8s/kustomization.yaml", "does not apply the migrate Job")
    if any(d["apiVersion"].startswith("monitoring.coreos.com/") for d in built["k8s"]):
        r.error("k8s/kustomization.yaml", "the base must not need the Prometheus Operator CRDs")
    unset = [
        d for d in built["k8s + monitoring, RUNBOOK_URL not set"] if d["kind"] == "PrometheusRule"
    ]
    links = {
        (rule.get("annotations") or {}).get("runbook_url", "").split("#")[0]
        for d in unset
        for group in d["spec"].get("groups") or []
        for rule in group.get("rules") or []
        if "alert" in rule
    }
    if links != {RUNBOOK_URL}:
        r.error("kustomize k8s + monitoring", f"runbook_url bases {links} without RUNBOOK_URL set")
    monitored = built["k8s + monitoring"]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in monitored}
    for needed in (
        ("PrometheusRule", "batch-actions"),
        ("ConfigMap", "batch-actions-dashboard"),
        *(("PodMonitor", job) for job in PROCESS_JOBS.values()),
    ):
        if needed not in kinds:
            r.error("kustomize k8s + monitoring", f"no {needed[0]}/{needed[1]}")
    for doc in monitored:
        if doc["kind"] != "PrometheusRule":
            continue
        for group in doc["spec"].get("groups") or []:
            for rule in group.get("rules") or []:
                link = (rule.get("annotations") or {}).get("runbook_url")
                if "alert" in rule and link != f"{url}#{rule['alert'].lower()}":
                    r.error(
                        "kustomize k8s + monitoring",
                        f"{rule['alert']} runbook_url {link!r} does not follow RUNBOOK_URL",
                    )


# ----------------------------------------------------------------- lock file

LOCK_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def lock_entries(text: str) -> dict[str, tuple[str, int, set[str]]]:
    """name -> (version, number of hashes, what it is there for) of a
    `uv pip compile --generate-hashes` file."""
    entries: dict[str, tuple[str, int, set[str]]] = {}
    name = ""
    in_via = False
    for line in text.splitlines():
        m = LOCK_ENTRY.match(line)
        if m:
            name = canonicalize_name(m.group(1))
            entries[name] = (m.group(2), 0, set())
            in_via = False
            continue
        stripped = line.strip()
        if not name:
            continue
        version, hashes, via = entries[name]
        if stripped.startswith("--hash="):
            entries[name] = (version, hashes + 1, via)
        elif stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            if rest:
                via.add(rest)
            in_via = not rest
        elif in_via and stripped.startswith("#   "):
            via.add(stripped.removeprefix("#").strip())
        else:
            in_via = False
    return entries


def check_lock(deploy: Path, r: Report) -> None:
    """requirements.lock (the image's dependencies, `make lock`) pins exactly
    pyproject.toml's runtime dependencies, each at a version they allow, with hashes."""
    root = deploy.parent
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    project = pyproject["project"]["name"]
    wanted = {
        canonicalize_name(req.name): req
        for req in map(Requirement, pyproject["project"]["dependencies"])
    }
    entries = lock_entries((root / LOCK).read_text())
    for name, (version, hashes, _) in sorted(entries.items()):
        if not hashes:
            r.error(LOCK, f"{name}=={version} has no --hash (run `make lock`)")
    for name, req in sorted(wanted.items()):
        if name not in entries:
            r.error(LOCK, f"pyproject.toml depends on {req}, not in the lock (run `make lock`)")
            continue
        version = entries[name][0]
        if not req.specifier.contains(version, prereleases=True):
            r.error(
                LOCK,
                f"{name}=={version} is not allowed by pyproject.toml's {req} (run `make lock`)",
            )
    direct = {n for n, (_, _, via) in entries.items() if any(v.startswith(project) for v in via)}
    for name in sorted(direct - set(wanted)):
        r.error(
            LOCK,
            f"{name} is locked for {project}, which no longer depends on it (run `make lock`)",
        )


SECTIONS = {
    "metrics": check_metrics,
    "alerts": check_alerts,
    "dashboard": check_dashboard,
    "compose": check_compose,
    "k8s": check_k8s,
    "dockerfile": check_dockerfile,
    "lock": check_lock,
    "monitoring": check_monitoring,
    "kustomize": check_kustomize,
}


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    deploy = Path(argv[1]).resolve()
    if argv[2] == "write-prometheusrule":
        write_prometheus_rule(deploy)
        return 0
    if argv[2] == "list-k8s":
        list_k8s(deploy, argv[3])
        return 0
    report = Report()
    for section in argv[2:]:
        if section not in SECTIONS:
            print(f"unknown section {section!r}; one of {sorted(SECTIONS)}", file=sys.stderr)
            return 2
        try:
            SECTIONS[section](deploy, report)
        except KeyError as exc:
            report.error(section, f"missing key {exc}")
        except (OSError, yaml.YAMLError, TypeError, AttributeError, ValueError) as exc:
            report.error(section, f"{type(exc).__name__}: {exc}")
    for w in report.warnings:
        print(f"    warning: {w}")
    for e in report.errors:
        print(f"    error: {e}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
