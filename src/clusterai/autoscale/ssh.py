"""Workers on machines reached over SSH (asyncssh, imported only when this provider connects).

Each launch goes to the host with the fewest workers that is under its `max_workers`; a host that
cannot be reached is reported in the error and the next one is tried. The remote command runs under
`/bin/sh`, which first prints its pid (so terminate can signal the worker, and its process group,
over a second channel), reads the enrollment token from stdin into the environment (never the
command line, which `ps` shows to every user of that host), then `exec`s the worker command.

The worker's output is read continuously (an unread SSH channel fills its window and stalls the
remote process) and its last lines kept, to explain a worker that died.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import shlex
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterai.autoscale.model import Profile
from clusterai.autoscale.providers import (
    NAME_ENV,
    PROFILE_ENV,
    TOKEN_ENV,
    LaunchedWorker,
    fill,
    new_name,
    worker_values,
)
from clusterai.errors import ProviderError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class SSHHost:
    host: str
    port: int = 22
    user: str | None = None
    max_workers: int
    key_path: str | None = None  # None: the agent and ~/.ssh's default keys
    known_hosts: str | None = None  # None: ~/.ssh/known_hosts; the host key is always checked
    connect_timeout_s: float = 10.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(slots=True)
class _Remote:
    name: str
    profile: str
    host: SSHHost
    pid: int
    process: Any  # asyncssh.SSHClientProcess
    started_at: float
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=50))
    pump: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        # not process.is_closing(): that turns true as soon as we send EOF after the token
        return self.process.exit_status is None and self.pump is not None and not self.pump.done()


class SSHProvider:
    def __init__(self, hosts: Sequence[SSHHost], command_template: str, *,
                 variables: Mapping[str, str] | None = None, token: str | None = None,
                 grace_s: float = 10.0, start_timeout_s: float = 15.0) -> None:
        if not hosts:
            raise ProviderError("ssh provider: no hosts")
        self.hosts = list(hosts)
        self.command_template = command_template
        self.variables = dict(variables or {})
        self.grace_s = grace_s
        self.start_timeout_s = start_timeout_s
        self._token = token
        self._connections: dict[str, Any] = {}  # address -> asyncssh.SSHClientConnection
        self._remotes: dict[str, _Remote] = {}

    def _count(self, host: SSHHost) -> int:
        return sum(1 for r in self._remotes.values() if r.host.address == host.address and r.alive)

    async def launch(self, profile: Profile, count: int) -> builtins.list[str]:
        """Up to `count` workers; fewer when hosts are full or failing (then logged). Raises
        ProviderError, naming each host's problem, when not even one could start."""
        names: builtins.list[str] = []
        failures: dict[str, str] = {}
        for _ in range(count):
            candidates = sorted((h for h in self.hosts if h.address not in failures and self._count(h) < h.max_workers),
                                key=lambda h: (self._count(h), self.hosts.index(h)))
            for host in candidates:
                try:
                    names.append(await self._start(host, profile))
                    break
                except ProviderError as exc:
                    failures[host.address] = str(exc)
            else:
                break
        if len(names) < count:
            problems = "; ".join(failures.values()) or "every host is at its max_workers"
            if not names:
                raise ProviderError(f"ssh provider: could not launch a {profile.name} worker: {problems}")
            log.warning("ssh provider launched %d of %d %s workers: %s", len(names), count, profile.name, problems)
        return names

    async def _connect(self, host: SSHHost) -> Any:
        import asyncssh

        conn = self._connections.get(host.address)
        if conn is not None and not conn.is_closed():
            return conn
        try:
            conn = await asyncio.wait_for(asyncssh.connect(
                host.host, host.port, username=host.user if host.user is not None else (),  # (): the local user
                client_keys=[host.key_path] if host.key_path else (),
                known_hosts=host.known_hosts if host.known_hosts else (),
                connect_timeout=host.connect_timeout_s), host.connect_timeout_s + 1)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ProviderError(f"ssh host {host.address} is unreachable: {reason}") from exc
        except asyncssh.Error as exc:  # reached, but the host key or our key was refused
            raise ProviderError(f"could not log in to ssh host {host.address}: {exc}") from exc
        self._connections[host.address] = conn
        return conn

    async def _start(self, host: SSHHost, profile: Profile) -> str:
        import asyncssh

        conn = await self._connect(host)
        name = new_name(profile.name)
        values = {k: shlex.quote(v) for k, v in worker_values(name, profile, self.variables).items()}
        command = fill(self.command_template, values, "ssh provider command")
        script = "echo $$; "
        if self._token is not None:
            script += f"IFS= read -r {TOKEN_ENV}; export {TOKEN_ENV}; "
        script += f"export {NAME_ENV}={shlex.quote(name)} {PROFILE_ENV}={shlex.quote(profile.name)}; exec {command}"
        try:
            process = await conn.create_process(f"exec /bin/sh -c {shlex.quote(script)}",
                                                stderr=asyncssh.STDOUT, encoding="utf-8")
            if self._token is not None:
                process.stdin.write(self._token + "\n")
            process.stdin.write_eof()
            first = await asyncio.wait_for(process.stdout.readline(), self.start_timeout_s)
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            raise ProviderError(f"ssh host {host.address}: could not start a worker: "
                                f"{str(exc) or type(exc).__name__}") from exc
        if not first.strip().isdigit():
            process.close()
            raise ProviderError(f"ssh host {host.address}: the worker shell did not report its pid "
                                f"(got {first.strip()!r})")
        remote = _Remote(name, profile.name, host, int(first), process, time.time())
        remote.pump = asyncio.ensure_future(self._pump(remote))
        self._remotes[name] = remote
        return name

    @staticmethod
    async def _pump(remote: _Remote) -> None:
        """Read the worker's output until it ends: when this returns, the remote process is over
        (or its connection is gone), which is how `alive` knows."""
        with contextlib.suppress(Exception):
            async for line in remote.process.stdout:
                remote.tail.append(line.rstrip("\n"))

    async def _signal(self, remote: _Remote, sig: str) -> None:
        conn = await self._connect(remote.host)
        # the group first (an sshd session leads its own), else the process alone; under /bin/sh
        # whatever the login shell, and without "--", which dash's kill takes for a pid
        script = f"kill -{sig} -{remote.pid} 2>/dev/null || kill -{sig} {remote.pid}"
        await conn.run(f"exec /bin/sh -c {shlex.quote(script)}", check=False)

    async def _stop(self, remote: _Remote) -> str | None:
        try:
            if remote.alive:
                await self._signal(remote, "TERM")
                try:
                    await asyncio.wait_for(remote.process.wait_closed(), self.grace_s)
                except asyncio.TimeoutError:
                    await self._signal(remote, "KILL")
                    await asyncio.wait_for(remote.process.wait_closed(), 5.0)
            return None
        except Exception as exc:  # report, and still forget it: its channel is useless now
            return f"{remote.name} on {remote.host.address} (pid {remote.pid}) may still run: {exc}"
        finally:
            remote.process.close()
            if remote.pump is not None:
                remote.pump.cancel()

    async def terminate(self, names: Sequence[str]) -> None:
        mine = [self._remotes.pop(n) for n in names if n in self._remotes]
        problems = [p for p in await asyncio.gather(*(self._stop(r) for r in mine)) if p]
        if problems:
            raise ProviderError("ssh provider: " + "; ".join(problems))

    async def list(self) -> builtins.list[LaunchedWorker]:
        for name, remote in builtins.list(self._remotes.items()):
            if not remote.alive:
                log.info("ssh worker %s on %s ended (status %s); last output: %s", name, remote.host.address,
                         remote.process.exit_status, " | ".join(remote.tail) or "(none)")
                del self._remotes[name]
        return [LaunchedWorker(r.name, r.profile, f"{r.host.address} pid {r.pid}", r.started_at)
                for r in self._remotes.values()]

    def output(self, name: str) -> builtins.list[str]:
        """The last lines the worker printed (for an operator asking why it died)."""
        remote = self._remotes.get(name)
        return builtins.list(remote.tail) if remote is not None else []

    async def close(self) -> None:
        """Close the SSH connections (the remote workers are not stopped: terminate them first)."""
        for conn in self._connections.values():
            conn.close()
        for conn in self._connections.values():
            with contextlib.suppress(Exception):
                await conn.wait_closed()
        self._connections.clear()
