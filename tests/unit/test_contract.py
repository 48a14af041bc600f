"""The deploy files are checked against the same queues the workers consume."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from shared.contract import QUEUES

CHECKS = Path(__file__).resolve().parents[2] / "deploy" / "tools" / "deploy_checks.py"


def test_the_deploy_checks_know_every_queue_of_the_contract():
    spec = importlib.util.spec_from_file_location("deploy_checks", CHECKS)
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    assert sorted(checks.ACTION_QUEUES) == sorted(QUEUES)
