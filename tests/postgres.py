"""A throwaway PostgreSQL server for the tests: Debian's ``postgresql`` binaries, 127.0.0.1, a temp directory.

The server lives for one test session; each test asks for a fresh database with
``postgres.new_database()``. Running as root, the server runs as the ``postgres`` user (initdb
refuses root). Required in CI (``CI=true``): there a missing server is a failure, never a skip.

    def test_x(postgres):
        url = postgres.new_database()   # postgresql+psycopg://nas:PASSWORD@127.0.0.1:PORT/test_1
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server; ``password`` is a fresh random secret that the tests search outputs for."""

    port: int
    user: str = "nas"
    password: str = field(default_factory=lambda: "SECRET" + secrets.token_hex(8))
    host: str = "127.0.0.1"
    databases: int = 0
    control: list[str] = field(default_factory=list)  # pg_ctl with its data directory and options

    def restart(self, down_seconds: float = 0.0) -> None:
        """Restart the server (``pg_ctl``, fast mode), down for ``down_seconds``: every open connection is dropped."""
        run = dict(check=True, capture_output=True, text=True, timeout=120)
        if not down_seconds:
            subprocess.run(_as_postgres([*self.control[:-1], "-m", "fast", "-w", "restart"]), **run)
            return
        subprocess.run(_as_postgres([*self.control[:3], "-m", "fast", "-w", "stop"]), **run)
        time.sleep(down_seconds)
        subprocess.run(_as_postgres([*self.control[:-1], "-w", "start"]), **run)

    def url(self, database: str, with_password: bool = True) -> str:
        auth = f"{self.user}:{self.password}" if with_password else self.user
        return f"postgresql+psycopg://{auth}@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL (password included)."""
        import psycopg

        self.databases += 1
        name = f"test_{self.databases}_{secrets.token_hex(3)}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def postgres():
    """Start a PostgreSQL server on 127.0.0.1 for the session; skip (fail in CI) when it cannot be had."""
    bin_dir = _bin_dir()
    problem = None
    if bin_dir is None:
        problem = "Debian's postgresql is not installed (apt-get install postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            problem = "psycopg is not installed (pip install -e '.[postgres]')"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL tests are required in CI: {problem}")
        pytest.skip(problem)
    root = Path(tempfile.mkdtemp(prefix="nas-pg-"))
    server = PostgresServer(port=_free_port())
    data, pwfile = root / "data", root / "pwfile"
    pwfile.write_text(server.password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    os.chmod(root, 0o700)
    os.chmod(pwfile, 0o600)
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", server.user, "-A", "scram-sha-256",
                                 f"--pwfile={pwfile}"]), **run)
    pwfile.unlink()
    options = f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    server.control = [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "start"]
    subprocess.run(_as_postgres([*server.control[:-1], "-w", "start"]), **run)
    try:
        yield server
    finally:
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
