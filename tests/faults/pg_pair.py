"""A PostgreSQL primary and a synchronous standby of the scenario's own.

The machine's cluster (port 5432) accepts no replication connections and is
shared with everyone, so the failover scenario builds a pair from the
PostgreSQL 15 binaries: `initdb` a primary, `pg_basebackup -R -X stream` a
standby from it, both run by `pg_ctl` as the `postgres` user with their data
and unix sockets in a temporary directory. `kill_primary` is the machine
dying (SIGKILL to the postmaster and its children), `promote` is what an
operator or Patroni does next. `stop` leaves nothing running or on disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.support.services import free_port, wait_until

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "postgres"
STANDBY_NAME = "standby1"  # its application_name, named in synchronous_standby_names


def _as_postgres(*argv: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["runuser", "-u", USER, "--", *argv], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


class PgPair:
    """Primary on `primary_port`, standby on `standby_port`, both on 127.0.0.1."""

    def __init__(self, synchronous: bool = True) -> None:
        self.synchronous = synchronous
        self.root = Path(tempfile.mkdtemp(prefix="pgpair-"))
        shutil.chown(self.root, USER, USER)
        self.primary_dir, self.standby_dir = self.root / "primary", self.root / "standby"
        self.primary_port, self.standby_port = free_port(), free_port()

    # Building and running.

    def start(self) -> None:
        _as_postgres(
            str(BIN / "initdb"), "-D", str(self.primary_dir), "-U", USER, "--auth=trust", "-N"
        )
        sync_names = f"'{STANDBY_NAME}'" if self.synchronous else "''"
        self._configure(
            self.primary_dir,
            self.primary_port,
            wal_level="replica",
            max_wal_senders="5",
            synchronous_standby_names=sync_names,
            synchronous_commit="on",
        )
        with (self.primary_dir / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        self._pg_ctl(self.primary_dir, "start")
        _as_postgres(
            str(BIN / "pg_basebackup"),
            "-D",
            str(self.standby_dir),
            "-R",
            "-X",
            "stream",
            "-d",
            f"host=127.0.0.1 port={self.primary_port} user={USER} application_name={STANDBY_NAME}",
        )
        # Promoted, the standby runs alone: waiting for a standby of its own
        # would block every commit until one is built.
        self._configure(self.standby_dir, self.standby_port, synchronous_standby_names="''")
        self._pg_ctl(self.standby_dir, "start")
        wanted = "sync" if self.synchronous else "async"
        wait_until(lambda: self.sync_state() == wanted, 60, f"the standby to report {wanted}")

    def _configure(self, data: Path, port: int, **settings: str) -> None:
        # Later lines win: appended after initdb's (or the base backup's) own.
        lines = {
            "port": str(port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",
            "shared_buffers": "32MB",
            **settings,
        }
        with (data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in lines.items())

    def _pg_ctl(self, data: Path, *args: str) -> None:
        log = self.root / f"{data.name}.log"
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", *args)

    def url(self, database: str = "postgres") -> str:
        """A multi-host URL in SQLAlchemy's query form: whichever accepts writes."""
        return (
            f"postgresql+psycopg://{USER}@/{database}?host=127.0.0.1:{self.primary_port}"
            f"&host=127.0.0.1:{self.standby_port}&target_session_attrs=read-write"
        )

    def create_database(self, name: str) -> str:
        with psycopg.connect(self._conninfo(self.primary_port), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _conninfo(self, port: int) -> str:
        return f"host=127.0.0.1 port={port} user={USER} dbname=postgres connect_timeout=5"

    def sync_state(self) -> str | None:
        with psycopg.connect(self._conninfo(self.primary_port)) as conn:
            row = conn.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                (STANDBY_NAME,),
            ).fetchone()
        return row[0] if row else None

    def in_recovery(self, port: int) -> bool:
        with psycopg.connect(self._conninfo(port)) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])

    # Faults.

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and every process it started, as
        when its machine dies: nothing is flushed, no connection is closed."""
        pid = self._postmaster_pid(self.primary_dir)
        assert pid is not None, "the primary is not running"
        for victim in [pid, *_children(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 10, "the primary to die", every=0.05)

    def promote(self) -> None:
        self._pg_ctl(self.standby_dir, "promote")
        wait_until(lambda: not self.in_recovery(self.standby_port), 30, "the standby to promote")

    # Cleanup.

    def stop(self) -> None:
        """Stop both servers (whatever state they are in) and delete their data."""
        for data in (self.primary_dir, self.standby_dir):
            pid = self._postmaster_pid(data)
            if pid is None or not _alive(pid):
                continue
            with contextlib.suppress(Exception):
                self._pg_ctl(data, "stop", "-m", "immediate")
            if _alive(pid):
                for victim in [pid, *_children(pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            (pid := self._postmaster_pid(d)) is not None and _alive(pid)
            for d in (self.primary_dir, self.standby_dir)
        ):
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.root.glob("*.log"))
        )

    @staticmethod
    def _postmaster_pid(data: Path) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((data / "postmaster.pid").read_text().split()[0])
        return None


def _alive(pid: int) -> bool:
    """Running, and not a zombie (a killed postmaster is pg_ctl's child no longer)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found
