import os
import subprocess
import sys


def test_demo_runs_with_no_services_at_all(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "BROKER_URL", "REDIS_URL", "SMTP_URL"}
    }
    env["COLUMNS"] = "120"
    # Every warning shown, DeprecationWarning included: the demo must show none.
    env["PYTHONWARNINGS"] = "default"
    result = subprocess.run(
        [sys.executable, "-m", "batchctl", "demo", "--learners", "200"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "embedded" in output and "Demo summary" in output
    assert "Warning" not in result.stderr, result.stderr[-3000:]
    assert "self: 1" in output
    assert "deletions finalized (purged to tombstones): 10" in output
    mailbox = (tmp_path / "mailbox.txt").read_text()
    assert mailbox.count("Subject: You are invited") > 0
