"""A throwaway PostgreSQL server for tests and benchmarks.

Debian's server binaries (``/usr/lib/postgresql/N/bin``) run ``initdb`` into a
temp dir and ``pg_ctl start`` it listening only on a Unix socket in that dir
(as the ``postgres`` user when we are root: the server refuses to run as
root). Trust authentication, fsync on (crash tests rely on durability). One
server per test process, stopped at exit; each test gets a fresh database.

Missing binaries: the test is skipped, or fails when ``CI`` is set.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_server: PgServer | None = None
_counter = itertools.count()


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PgServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
        self.data = self.dir / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.dsn_base = f"host={self.dir} user=postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            check=True,
            user=self.user,
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        opts = f"-c listen_addresses='' -k {self.dir} -c max_connections=200"
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
            "-l", str(self.dir / "log"), "-o", opts,
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.data))
        shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty database; its DSN."""
        import psycopg

        name = f"kiln_{os.getpid()}_{next(_counter)}"
        with psycopg.connect(f"{self.dsn_base} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@/{name}?host={self.dir}"


def server() -> PgServer:
    """The test process's server, started on first use."""
    global _server
    if _server is None:
        bindir = pg_bindir()
        if bindir is None:
            msg = "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): apt-get install postgresql"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
        s = PgServer(bindir)
        s.start()
        atexit.register(s.stop)
        _server = s
    return _server


def fresh_database() -> str:
    return server().create_database()
