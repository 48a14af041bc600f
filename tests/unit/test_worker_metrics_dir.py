"""`batchctl worker`'s metrics directory is its own: a fresh private one by
default, and nothing outside the directory it is given is ever removed."""

from __future__ import annotations

import os
import stat
import tempfile

from batchctl.cli import worker_metrics_env


def test_without_a_given_directory_each_pool_gets_a_new_private_one(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    first, second = worker_metrics_env(), worker_metrics_env()
    directory = first["PROMETHEUS_MULTIPROC_DIR"]
    assert directory != second["PROMETHEUS_MULTIPROC_DIR"]  # not a predictable name
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert first["dramatiq_prom_db"] == directory


def test_a_link_planted_where_the_directory_used_to_be_is_not_followed(monkeypatch, tmp_path):
    # The old default was <tmp>/batch-actions-metrics-<port>: anyone could
    # create it first as a link to another directory, whose *.db files the
    # worker then deleted.
    port = 20000 + os.getpid() % 10000
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.db").write_text("keep me")
    planted = os.path.join(tempfile.gettempdir(), f"batch-actions-metrics-{port}")
    os.symlink(victim, planted)
    try:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        monkeypatch.setenv("METRICS_PORT", str(port))
        env = worker_metrics_env()
    finally:
        os.unlink(planted)
    assert (victim / "data.db").read_text() == "keep me"
    assert os.path.realpath(env["PROMETHEUS_MULTIPROC_DIR"]) != str(victim)
