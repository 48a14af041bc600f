#!/usr/bin/env bash
# Validate every deploy file offline: no Docker engine, no cluster, no network.
#
#   deploy/validate.sh [DEPLOY_DIR]      (default: the directory of this script)
#
# Tools come from deploy/install-tools.sh (the project's venv, $VENV, default
# <repo>/.venv, then PATH). Exit status: 0 all good, 1 something is invalid,
# 3 a validator is missing (run deploy/install-tools.sh).
#
# Environment: VENV (tool venv), KUBE_VERSIONS (Kubernetes versions to
# validate against, default "1.28.0 1.37.0"), STEPS (an extended regex: only
# the steps whose name it matches run; tests use it). An alert without a section in
# docs/OPERATIONS.md fails the check. The generic good practice (non-root,
# resources, probes, health checks, hard-coded secrets) is checkov's, with the
# skips and their reasons in deploy/checkov.yaml; tools/deploy_checks.py keeps
# the checks that need several files or the project's contract.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
deploy="$(cd "${1:-$here}" && pwd)"
VENV="${VENV:-$repo/.venv}"
VENV="$(cd "$VENV" 2>/dev/null && pwd || echo "$VENV")"
export PATH="$VENV/bin:$PATH"
KUBE_VERSIONS="${KUBE_VERSIONS:-1.28.0 1.37.0}"

missing=()
for tool in check-jsonschema kubernetes-validate promtool hadolint checkov; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
command -v kustomize >/dev/null 2>&1 || command -v kubectl >/dev/null 2>&1 || missing+=("kustomize|kubectl")
python="$VENV/bin/python"
[[ -x "$python" ]] || python="$(command -v python3)"
"$python" -c 'import yaml, promql_parser, packaging' 2>/dev/null || missing+=("python:yaml+promql_parser+packaging")
if ((${#missing[@]})); then
    echo "validate.sh: missing validators: ${missing[*]} (run deploy/install-tools.sh)" >&2
    exit 3
fi

checks="$deploy/tools/deploy_checks.py"
failed=()
step() {
    local name="$1"
    shift
    [[ -z "${STEPS:-}" ]] || grep -qE -- "$STEPS" <<<"$name" || return 0
    local start=$SECONDS
    echo "==> $name"
    if "$@"; then
        echo "    ok ($((SECONDS - start))s)"
    else
        echo "    FAILED: $name"
        failed+=("$name")
    fi
}

# Output of a validator that reports problems on stdout with exit status 0.
no_warnings() {
    local out
    out="$("$@" 2>&1)" || { echo "$out"; return 1; }
    if grep -E '^(WARN|ERROR)' <<<"$out"; then
        return 1
    fi
}

compose_schema() {
    check-jsonschema --check-metaschema "$deploy/schemas/compose-spec.json" "$deploy/schemas/keda.sh-v1alpha1.json" &&
        check-jsonschema --schemafile "$deploy/schemas/compose-spec.json" "$deploy/docker-compose.yml"
}

k8s_core() {
    local files version
    mapfile -t files < <("$python" "$checks" "$deploy" list-k8s core)
    ((${#files[@]})) || { echo "    no Kubernetes manifests found"; return 1; }
    for version in $KUBE_VERSIONS; do
        # --strict rejects unknown fields; a kind without a schema is only a
        # WARN for kubernetes-validate, so treat warnings as failures too.
        no_warnings kubernetes-validate --strict --quiet -k "$version" "${files[@]}" || return 1
    done
}

k8s_keda() {
    local files
    mapfile -t files < <("$python" "$checks" "$deploy" list-k8s keda)
    ((${#files[@]})) || { echo "    no KEDA manifests found"; return 1; }
    check-jsonschema --schemafile "$deploy/schemas/keda.sh-v1alpha1.json" "${files[@]}"
}

prom_config() { (cd "$deploy/prometheus" && promtool check config prometheus.yml); }
prom_rules() { (cd "$deploy/prometheus" && promtool check rules alerts.yml); }
prom_tests() { (cd "$deploy/prometheus" && promtool test rules alerts_test.yml); }
dockerfile_lint() { hadolint --failure-threshold style "$deploy/Dockerfile"; }
# One run for every framework (its start-up is most of its time). No network:
# no guideline download, no version check, no upload.
checkov_scan() {
    (cd "$deploy" && BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE LOG_LEVEL=WARNING \
        checkov --config-file checkov.yaml --skip-results-upload \
        -f k8s/*.yaml k8s/monitoring/*.yaml Dockerfile docker-compose.yml)
}
cross() { "$python" "$checks" "$deploy" "$@"; }

echo "Validating $deploy"
step "compose: compose-spec JSON schema" compose_schema
step "compose: services, mounts, depends_on, env" cross compose
step "k8s: kubernetes-validate --strict ($KUBE_VERSIONS)" k8s_core
step "k8s: KEDA ScaledObject/TriggerAuthentication schema" k8s_keda
step "k8s: selectors, ports, probes, secret refs, KEDA targets" cross k8s
step "k8s: kustomize build (base; with monitoring/ and a RUNBOOK_URL)" cross kustomize
step "k8s monitoring: PodMonitors, PrometheusRule = alerts.yml, dashboard" cross monitoring
step "checkov: Kubernetes, Dockerfile, secrets (checkov.yaml)" checkov_scan
step "prometheus: promtool check config" prom_config
step "prometheus: promtool check rules" prom_rules
step "prometheus: promtool test rules (alerts_test.yml)" prom_tests
step "alerts: annotations, runbook links, test coverage" cross alerts
step "grafana: dashboard JSON and provisioning" cross dashboard
step "metrics: every queried metric is in metric-names.txt" cross metrics
step "docker: hadolint" dockerfile_lint
step "docker: multi-stage, exec ENTRYPOINT, installs requirements.lock" cross dockerfile
step "lock: requirements.lock pins pyproject.toml's dependencies" cross lock

if ((${#failed[@]})); then
    echo
    echo "validate.sh: ${#failed[@]} check(s) failed:"
    printf '  - %s\n' "${failed[@]}"
    exit 1
fi
echo
echo "validate.sh: all checks passed"
