"""Running deploy/validate.sh, for the deploy-file tests of tier 1 (the files
as they are) and tier 2 (each broken the way a careless edit would)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VALIDATE = DEPLOY / "validate.sh"
TOOLS_MISSING = 3


def run_validate(deploy_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(VALIDATE), str(deploy_dir)],
        capture_output=True,
        text=True,
        # checkov alone starts in seconds, in minutes on a loaded machine.
        timeout=600,
        env={**os.environ, **env},
    )


def fail_if_tools_missing(proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode == TOOLS_MISSING:
        pytest.fail(
            f"deploy validators missing, run deploy/install-tools.sh: {proc.stderr.strip()}"
        )


def failed_steps(output: str) -> list[str]:
    return re.findall(r"^    FAILED: (.+)$", output, flags=re.M)
