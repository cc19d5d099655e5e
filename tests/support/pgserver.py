"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl on a free loopback port, with a
random password (scram-sha-256), removed afterwards.

PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user.
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
from pathlib import Path


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # Debian's postgresql package keeps the server programs off PATH
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def available() -> bool:
    return all(find_bin(n) for n in ("initdb", "pg_ctl", "postgres"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self, base: Path | None = None, *, durable: bool = False):
        self._as_postgres = os.geteuid() == 0
        # under root the server runs as `postgres`, which cannot enter pytest's root-only folders
        if base is None or self._as_postgres:
            base = Path(tempfile.mkdtemp(prefix="clusterai-pg-"))
        self.base = Path(base)
        self.data = self.base / "data"
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.user = "clusterai"
        self.durable = durable  # False: fsync off, for speed; the benchmark keeps PostgreSQL's defaults

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=timeout)

    def start(self) -> PgServer:
        self.base.mkdir(parents=True, exist_ok=True)
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        initdb = find_bin("initdb")
        assert initdb, "initdb not found"
        self._run(initdb, "-D", str(self.data), "-U", self.user, "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8")
        pwfile.unlink()
        settings = [
            f"port = {self.port}", "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.base}'", "max_connections = 200",
            "shared_buffers = 64MB", "log_min_messages = warning",
        ]
        if not self.durable:
            settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n".join(settings) + "\n")
        self.resume()
        return self

    def resume(self) -> None:
        """Start (again) on the same port and data."""
        pg_ctl = find_bin("pg_ctl")
        assert pg_ctl
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not listen on {self.port}: {self.log_tail()}")

    def halt(self, mode: str = "fast") -> None:
        """Stop the server (mode: smart, fast, immediate); connections drop."""
        pg_ctl = find_bin("pg_ctl")
        assert pg_ctl
        self._run(pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self, mode: str = "fast", down_for: float = 0.0) -> None:
        self.halt(mode)
        time.sleep(down_for)
        self.resume()

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self) -> str:
        try:
            return (self.base / "log").read_text()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        self.halt("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
