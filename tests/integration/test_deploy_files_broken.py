"""deploy/validate.sh fails when a deploy file is broken.

Each case copies deploy/ to a temporary directory, breaks one file the way a
careless edit would, and checks that validate.sh exits 1 *and* that the
validator meant to catch it is the one that failed. That the files as they
are pass is tier 1's (tests/unit/test_deploy_files.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.deploy import DEPLOY, REPO, fail_if_tools_missing, failed_steps, run_validate


def replace(path: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(deploy: Path) -> None:
        target = deploy / path
        text = target.read_text()
        assert old in text, f"{old!r} not in {path}: the test no longer breaks anything"
        target.write_text(text.replace(old, new, 1))

    return edit


# (id, how to break a copy of deploy/, the validation step that must fail)
BROKEN = [
    (
        "compose-unknown-key",
        replace(
            "docker-compose.yml",
            "    stop_grace_period: 75s\n",
            "    stop_grace_period: 75s\n    restart_policy: always\n",
        ),
        "compose: compose-spec JSON schema",
    ),
    (
        "compose-secret-with-a-default",
        replace(
            "docker-compose.yml",
            "${SIGNING_KEY:?set SIGNING_KEY (32+ bytes), e.g. openssl rand -hex 32}",
            "${SIGNING_KEY:-dev-only-signing-key-change-me}",
        ),
        "compose: services, mounts, depends_on, env",
    ),
    (
        "compose-worker-grace-too-short",
        replace("docker-compose.yml", "stop_grace_period: 75s", "stop_grace_period: 10s"),
        "compose: services, mounts, depends_on, env",
    ),
    (
        "alert-bad-promql",
        replace(
            "prometheus/alerts.yml",
            "max(deletion_finalize_lag_seconds) > 1800",
            "max(deletion_finalize_lag_seconds > 1800",
        ),
        "prometheus: promtool check rules",
    ),
    (
        "alert-threshold-breaks-unit-test",
        replace(
            "prometheus/alerts.yml",
            "max(deletion_finalize_lag_seconds) > 1800",
            "max(deletion_finalize_lag_seconds) > 2700",
        ),
        "prometheus: promtool test rules (alerts_test.yml)",
    ),
    (
        "alert-unknown-metric",
        replace(
            "prometheus/alerts.yml",
            "max(deletion_finalize_lag_seconds) > 3000",
            "max(deletion_lag_seconds) > 3000",
        ),
        "metrics: every queried metric is in metric-names.txt",
    ),
    (
        "alert-without-runbook",
        replace(
            "prometheus/alerts.yml",
            'runbook_url: "https://batch-actions.invalid/docs/OPERATIONS.md#batchtargetdown"',
            'runbook_url: ""',
        ),
        "alerts: annotations, runbook links, test coverage",
    ),
    (
        "alert-without-unit-test",
        replace(
            "prometheus/alerts.yml",
            "    rules:\n",
            "    rules:\n"
            "      - alert: BatchUntested\n"
            "        expr: up == 0\n"
            "        labels: {severity: warning}\n"
            "        annotations:\n"
            "          summary: s\n"
            "          description: d\n"
            '          runbook_url: "https://batch-actions.invalid/docs/OPERATIONS.md#batchuntested"\n',
        ),
        "alerts: annotations, runbook links, test coverage",
    ),
    (
        "prometheus-config-bad-duration",
        replace("prometheus/prometheus.yml", "scrape_interval: 15s", "scrape_interval: 15 seconds"),
        "prometheus: promtool check config",
    ),
    (
        "k8s-unknown-field",
        replace(
            "k8s/worker.yaml",
            "      terminationGracePeriodSeconds: 75\n",
            "      terminationGracePeriodSeconds: 75\n      terminationGracePeriod: 75\n",
        ),
        "k8s: kubernetes-validate --strict",
    ),
    (
        "k8s-service-selects-nothing",
        replace(
            "k8s/producer.yaml",
            "  selector:\n    app.kubernetes.io/name: batch-actions\n"
            "    app.kubernetes.io/component: producer",
            "  selector:\n    app.kubernetes.io/name: batch-actions\n"
            "    app.kubernetes.io/component: api",
        ),
        "k8s: selectors, ports, probes, secret refs, KEDA targets",
    ),
    (
        "keda-unknown-trigger-metadata",
        replace("k8s/keda-scaledobject.yaml", "queueName: add_to_group", "queuName: add_to_group"),
        "k8s: KEDA ScaledObject/TriggerAuthentication schema",
    ),
    (
        "dockerfile-shell-form-entrypoint",
        replace("Dockerfile", 'ENTRYPOINT ["batchctl"]', "ENTRYPOINT batchctl"),
        "docker: hadolint",
    ),
    # Generic good practice: checkov's (deploy/checkov.yaml).
    (
        "k8s-no-memory-limit",
        replace(
            "k8s/worker.yaml",
            '              cpu: "2"\n              memory: 1Gi\n',
            '              cpu: "2"\n',
        ),
        "checkov:",
    ),
    (
        "dockerfile-without-healthcheck",
        replace("Dockerfile", "HEALTHCHECK --interval", "# HEALTHCHECK --interval"),
        "checkov:",
    ),
    (
        "compose-password-in-a-url",
        replace(
            "docker-compose.yml",
            "postgresql://batch:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD,"
            " e.g. openssl rand -hex 16}@",
            "postgresql://batch:Vq7rT2mXk9LpZ3wN@",
        ),
        "checkov:",
    ),
    # The image installs exactly the lock, and the lock follows pyproject.toml.
    (
        "lock-lacks-a-new-dependency",
        replace("../pyproject.toml", '    "rich>=13",\n', '    "rich>=13",\n    "six>=1.16",\n'),
        "lock: requirements.lock pins",
    ),
    (
        "dockerfile-installs-without-hashes",
        replace("Dockerfile", "--require-hashes -r requirements.lock", "-r requirements.lock"),
        "docker: multi-stage, exec ENTRYPOINT, installs requirements.lock",
    ),
    # The Prometheus Operator component (k8s/monitoring/).
    (
        "prometheusrule-edited-by-hand",
        replace("k8s/monitoring/prometheusrule.yaml", "for: 10m", "for: 20m"),
        "k8s monitoring:",
    ),
    (
        "podmonitor-wrong-port",
        replace("k8s/monitoring/podmonitors.yaml", "    - port: metrics", "    - port: metric"),
        "k8s monitoring:",
    ),
    (
        "runbook-url-setting-missing",
        replace(
            "k8s/configmap.yaml",
            "  RUNBOOK_URL: https://batch-actions.invalid/docs/OPERATIONS.md\n",
            "",
        ),
        "k8s: kustomize build",
    ),
    (
        "migrate-job-not-applied",
        replace("k8s/kustomization.yaml", "  - migrate-job.yaml\n", ""),
        "k8s: kustomize build",
    ),
    (
        "dashboard-not-json",
        replace("grafana/batch-actions.json", '"panels": [', '"panels": [,'),
        "grafana: dashboard JSON and provisioning",
    ),
    (
        "dashboard-unknown-metric",
        replace("grafana/batch-actions.json", "max(deletions_pending)", "max(deletions_waiting)"),
        "metrics: every queried metric is in metric-names.txt",
    ),
]


@pytest.fixture(scope="module")
def broken_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, subprocess.CompletedProcess[str]]:
    """validate.sh on one broken copy of deploy/ per case, run concurrently,
    each running only the step meant to catch it (checkov alone takes seconds)."""

    def run(
        case: str, break_it: Callable[[Path], None], step: str
    ) -> subprocess.CompletedProcess[str]:
        root = tmp_path_factory.mktemp(case)
        copy = root / "deploy"
        shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("__pycache__"))
        # docker-compose.yml builds from the directory above deploy/.
        # The image's lock file is checked against it, next to it.
        shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
        shutil.copy(REPO / "requirements.lock", root / "requirements.lock")
        break_it(copy)
        # One Kubernetes version is enough to prove a broken manifest fails.
        return run_validate(copy, KUBE_VERSIONS="1.37.0", STEPS="^" + re.escape(step))

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {case: pool.submit(run, case, break_it, step) for case, break_it, step in BROKEN}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.parametrize(("case", "step"), [pytest.param(c, s, id=c) for c, _, s in BROKEN])
def test_broken_deploy_file_fails_validation(
    broken_runs: dict[str, subprocess.CompletedProcess[str]], case: str, step: str
) -> None:
    proc = broken_runs[case]
    fail_if_tools_missing(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert any(failed.startswith(step) for failed in failed_steps(proc.stdout)), proc.stdout
