"""Providers launch and retire workers for the autoscaler: local processes, SSH hosts (ssh.py), or
the operator's own scripts.

Each launched worker gets a fresh name (`as-PROFILE-xxxxxxxx`), given to the command as `{name}`
and in CLUSTERAI_WORKER_NAME, so the worker can register under it (`clusterai worker ... --name
{name}`) and the head can match what registered to what was launched. The enrollment token only ever
travels in the environment (or, over SSH, on stdin), never on a command line other users can read.

Command templates may name `{name}`, `{profile}`, `{concurrency}`, and any variable the caller gives
(e.g. `{head}`, the head's address).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import secrets
import shlex
import signal
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from clusterai.autoscale.model import Profile
from clusterai.errors import ProviderError
from clusterai.worker.enroll import TOKEN_ENV

NAME_ENV = "CLUSTERAI_WORKER_NAME"
PROFILE_ENV = "CLUSTERAI_PROFILE"
NAME_PREFIX = "as-"


@dataclass(frozen=True, slots=True)
class LaunchedWorker:
    name: str
    profile: str | None
    where: str  # "local pid 123", "gpu1:22 pid 456", "command"
    started_at: float | None = None  # epoch seconds, when the provider launched it


class Provider(Protocol):
    async def launch(self, profile: Profile, count: int) -> builtins.list[str]: ...

    async def terminate(self, names: Sequence[str]) -> None: ...

    async def list(self) -> builtins.list[LaunchedWorker]: ...


def new_name(profile: str, prefix: str = NAME_PREFIX) -> str:
    return f"{prefix}{profile}-{secrets.token_hex(4)}"


def template_fields(template: str) -> set[str]:
    """The placeholders a template names; raises ValueError on a malformed one (config.py checks)."""
    return {field.split(".")[0].split("[")[0] for _, field, _, _ in string.Formatter().parse(template)
            if field is not None}


def fill(template: str, values: Mapping[str, str], what: str) -> str:
    missing = sorted(template_fields(template) - set(values))
    if missing:
        raise ProviderError(f"{what} names {', '.join('{' + m + '}' for m in missing)} but no value was given "
                            f"(known: {', '.join(sorted(values))})")
    return template.format_map(values)


def worker_values(name: str, profile: Profile, variables: Mapping[str, str]) -> dict[str, str]:
    return {**variables, "name": name, "profile": profile.name, "concurrency": str(profile.concurrency)}


def _kill_group(pid: int, sig: signal.Signals) -> None:
    # start_new_session made the worker lead its own group: its nanny and worker children go too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _stop_process(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; the group is killed at the end whatever the leader did,
    so no child outlives its worker."""
    if proc.returncode is None:
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except asyncio.TimeoutError:
            _kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
    _kill_group(proc.pid, signal.SIGKILL)


@dataclass(slots=True)
class _Local:
    name: str
    profile: str
    proc: asyncio.subprocess.Process
    started_at: float


class LocalProcessProvider:
    """Workers as processes on this machine (`command`, e.g. ["clusterai", "worker", "{head}",
    "--name", "{name}"]); stdout and stderr go to `log_dir/NAME.log`, or this process's own."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, *, variables: Mapping[str, str] | None = None,
                 token: str | None = None, grace_s: float = 10.0, log_dir: str | Path | None = None) -> None:
        if not command:
            raise ProviderError("local provider: the command is empty")
        self.command = list(command)
        self.env = dict(env or {})
        self.cwd = cwd
        self.variables = dict(variables or {})
        self.grace_s = grace_s
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._token = token
        self._procs: dict[str, _Local] = {}

    async def launch(self, profile: Profile, count: int) -> builtins.list[str]:
        names = []
        for _ in range(count):
            name = new_name(profile.name)
            values = worker_values(name, profile, self.variables)
            argv = [fill(part, values, "local provider command") for part in self.command]
            env = {**os.environ, **self.env, NAME_ENV: name, PROFILE_ENV: profile.name}
            if self._token is not None:
                env[TOKEN_ENV] = self._token
            log: IO[bytes] | None = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps its own copy)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, env=env, cwd=self.cwd, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                    stderr=asyncio.subprocess.STDOUT if log is not None else None, start_new_session=True)
            except OSError as exc:
                raise ProviderError(f"local provider: cannot start {argv[0]!r}: {exc}") from exc
            finally:
                if log is not None:
                    log.close()
            self._procs[name] = _Local(name, profile.name, proc, time.time())
            names.append(name)
        return names

    async def terminate(self, names: Sequence[str]) -> None:
        mine = [self._procs.pop(n) for n in names if n in self._procs]  # unknown names: already gone
        await asyncio.gather(*(_stop_process(p.proc, self.grace_s) for p in mine))

    async def list(self) -> builtins.list[LaunchedWorker]:
        for name, p in builtins.list(self._procs.items()):
            if p.proc.returncode is not None:  # exited on its own: forget it
                del self._procs[name]
        return [LaunchedWorker(p.name, p.profile, f"local pid {p.proc.pid}", p.started_at)
                for p in self._procs.values()]


class NoProvider:
    """Launches nothing: the autoscaler only decides and exports `clusterai_desired_workers{profile}`,
    which a Kubernetes HPA or KEDA scales a worker Deployment on. Workers count towards a profile by
    the label profile=NAME (`clusterai worker ... --label profile=gpu`)."""

    async def launch(self, profile: Profile, count: int) -> builtins.list[str]:
        return []

    async def terminate(self, names: Sequence[str]) -> None:
        return None

    async def list(self) -> builtins.list[LaunchedWorker]:
        return []


class CommandProvider:
    """The operator's own scripts (a cloud CLI, a batch scheduler...). A command given as a string
    runs in a shell; as a list, directly.

    - launch: gets CLUSTERAI_PROFILE, CLUSTERAI_COUNT, CLUSTERAI_CONCURRENCY, CLUSTERAI_LABELS
      (comma-separated), CLUSTERAI_RESOURCES (NAME=amount, comma-separated) and CLUSTERAI_MODELS;
      prints the launched workers' names, one a line.
    - terminate: gets the names as arguments and in CLUSTERAI_WORKERS (space-separated).
    - list: prints one worker a line: its name, optionally followed by its profile.
    A non-zero exit, or running past `timeout_s`, is a ProviderError carrying the script's stderr.
    """

    def __init__(self, launch_cmd: str | Sequence[str], terminate_cmd: str | Sequence[str],
                 list_cmd: str | Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, token: str | None = None, timeout_s: float = 120.0) -> None:
        self.launch_cmd, self.terminate_cmd, self.list_cmd = launch_cmd, terminate_cmd, list_cmd
        self.env = dict(env or {})
        self.cwd = cwd
        self.timeout_s = timeout_s
        self._token = token

    async def launch(self, profile: Profile, count: int) -> builtins.list[str]:
        if count <= 0:
            return []
        out = await self._run("launch", self.launch_cmd, [], {
            PROFILE_ENV: profile.name, "CLUSTERAI_COUNT": str(count),
            "CLUSTERAI_CONCURRENCY": str(profile.concurrency),
            "CLUSTERAI_LABELS": ",".join(sorted(profile.labels)),
            "CLUSTERAI_RESOURCES": ",".join(f"{k}={v:g}" for k, v in sorted(profile.resources.items())),
            "CLUSTERAI_MODELS": ",".join(profile.models),
        })
        return [line.strip() for line in out.splitlines() if line.strip()]

    async def terminate(self, names: Sequence[str]) -> None:
        if names:
            await self._run("terminate", self.terminate_cmd, list(names), {"CLUSTERAI_WORKERS": " ".join(names)})

    async def list(self) -> builtins.list[LaunchedWorker]:
        workers = []
        for line in (await self._run("list", self.list_cmd, [], {})).splitlines():
            fields = line.split()
            if fields:
                workers.append(LaunchedWorker(fields[0], fields[1] if len(fields) > 1 else None, "command"))
        return workers

    async def _run(self, what: str, command: str | Sequence[str], args: builtins.list[str],
                   extra_env: Mapping[str, str]) -> str:
        env = {**os.environ, **self.env, **extra_env}
        if self._token is not None:
            env[TOKEN_ENV] = self._token
        shown = command if isinstance(command, str) else shlex.join(command)
        pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        try:
            if isinstance(command, str):
                proc = await asyncio.create_subprocess_shell(
                    " ".join([command, *map(shlex.quote, args)]), stdin=devnull, stdout=pipe, stderr=pipe,
                    env=env, cwd=self.cwd, start_new_session=True)
            else:
                proc = await asyncio.create_subprocess_exec(
                    *command, *args, stdin=devnull, stdout=pipe, stderr=pipe, env=env, cwd=self.cwd,
                    start_new_session=True)
        except OSError as exc:
            raise ProviderError(f"{what} command {shown!r} could not start: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except asyncio.TimeoutError:
            await _stop_process(proc, 1.0)
            raise ProviderError(f"{what} command {shown!r} did not finish within {self.timeout_s:g}s") from None
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip()[-2000:] or "(no stderr)"
            raise ProviderError(f"{what} command {shown!r} exited with status {proc.returncode}: {detail}")
        return out.decode(errors="replace")
