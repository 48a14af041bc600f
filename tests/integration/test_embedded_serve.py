"""Without BROKER_URL, `batchctl serve` is a complete system: the broker is in
memory, so it runs the workers and the reconciler in its own process; a
`batchctl worker` or `reconcile` beside it could never share that broker, so
they refuse to start and say what to set (issue #12 item 20)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.services import Process, free_port, http_ok, wait_until


def embedded_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.db'}",
        "BROKER_URL": "",
        "REDIS_URL": "",
        "SMTP_URL": "",
        "SIGNING_KEY": "",
        "MAILBOX_PATH": str(tmp_path / "mailbox.txt"),
    }


def batchctl(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run a command in its own process group; kill the group if it does not end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchctl", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"batchctl {' '.join(args)} still running after {timeout:g} s:\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_an_embedded_serve_completes_a_batch_submitted_over_http(tmp_path):
    env = embedded_env(tmp_path)
    assert batchctl(["migrate"], env).returncode == 0
    seeded = json.loads(batchctl(["seed", "--learners", "30", "--json"], env).stdout)
    port = free_port()
    serve = Process.batchctl(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{base}/readyz"), 60, "the embedded producer", serve)
        auth = {"Authorization": f"Bearer {seeded['token']}"}
        body = {"action": "deactivate_learner", "selection": {"filter": {"status": ["active"]}}}
        dry = httpx.post(
            f"{base}/v1/batches", json={**body, "dry_run": True}, headers=auth, timeout=10
        )
        body["expected_total"] = dry.json()["total"]
        batch = httpx.post(f"{base}/v1/batches", json=body, headers=auth, timeout=10).json()

        def finished():
            view = httpx.get(f"{base}/v1/batches/{batch['id']}", headers=auth, timeout=10).json()
            return view if view["status"] != "running" else None

        view = wait_until(finished, 60, "the batch to finish", serve)
        ready = httpx.get(f"{base}/readyz", timeout=10).json()
    finally:
        serve.stop()
    assert view["status"] == "completed"
    assert view["counts"]["applied"] == view["total"] - 1  # all but the acting admin
    assert view["counts"]["reasons"] == {"self": 1}
    assert ready == {"status": "ready"}
    assert "QueueNotFound" not in serve.output()


@pytest.mark.parametrize("command", [["worker"], ["reconcile"], ["reconcile", "--once"]])
def test_worker_and_reconcile_without_a_broker_url_say_what_to_set(tmp_path, command):
    result = batchctl(command, embedded_env(tmp_path), timeout=30)
    said = " ".join(result.stderr.split())  # the console wraps long lines
    assert result.returncode == 1
    assert "set BROKER_URL" in said and "batchctl serve" in said
