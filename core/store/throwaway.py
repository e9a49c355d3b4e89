"""A throwaway PostgreSQL server in a temporary folder, for tests and the service benchmark.

It runs the machine's own PostgreSQL binaries (``initdb`` + ``pg_ctl``, found on PATH or under
``/usr/lib/postgresql/*/bin``) on a free loopback port, trusts local connections, and is removed
whole when it stops. PostgreSQL refuses to run as root, so as root it runs as the ``postgres``
user (``runuser``), in a folder that user owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from factory.errors import ConfigError

INSTALL = "install PostgreSQL (e.g. apt-get install postgresql) so initdb and pg_ctl exist"


def find_binaries() -> Path:
    """The folder holding initdb and pg_ctl, or a ConfigError telling how to get them."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    raise ConfigError(f"no PostgreSQL server binaries (initdb, pg_ctl) on this machine; {INSTALL}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayPostgres:
    """A running server; :meth:`new_database` gives each user a fresh, empty database."""

    def __init__(self, folder: Path, port: int, bin_dir: Path, as_user: list[str]) -> None:
        self.folder, self.port, self.bin_dir, self._as = folder, port, bin_dir, as_user

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://factory@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=factory dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")


@contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """Start a server (fsync off: it is thrown away) and remove it afterwards."""
    bin_dir = find_binaries()
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="factory-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, user="postgres")
    port = _free_port()
    server = ThrowawayPostgres(folder, port, bin_dir, as_user)
    try:
        try:
            server._run(
                str(bin_dir / "initdb"),
                "-D",
                str(folder / "data"),
                "-A",
                "trust",
                "-U",
                "factory",
                "-E",
                "UTF8",
                "--no-sync",
            )
            server._run(
                str(bin_dir / "pg_ctl"),
                "-D",
                str(folder / "data"),
                "-l",
                str(folder / "log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                "start",
            )
        except subprocess.CalledProcessError as exc:
            log = (folder / "log").read_text(errors="replace")[-2000:] if (folder / "log").exists() else ""
            raise ConfigError(
                f"the throwaway PostgreSQL server did not start ({(exc.stderr or '').strip()} {log}".strip()
                + f"); {INSTALL}"
            ) from None
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
