"""deploy/validate.sh passes on the deploy files as they are (a few seconds).

That it fails when a file is broken, and with the validator meant to catch
it, is tier 2's (tests/integration/test_deploy_files_broken.py: two dozen
broken copies, each through the one step meant to catch it, take about a
minute). The validators come from
deploy/install-tools.sh (`make test` installs them); a missing one fails.
"""

from __future__ import annotations

from tests.support.deploy import DEPLOY, fail_if_tools_missing, run_validate


def test_deploy_files_are_valid() -> None:
    proc = run_validate(DEPLOY)
    fail_if_tools_missing(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout
