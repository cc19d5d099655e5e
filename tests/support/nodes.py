"""Multi-node helpers for the e2e and chaos tests: `clusterai scheduler` and `clusterai worker` as a
user runs them, each in its own session (process group) so that a test can kill a whole node — the
command, its nanny and its Dask worker process — and always leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from clusterai.config import parse_config
from clusterai.core.model import Job, Outcome, State
from clusterai.core.tasks import import_task_modules
from clusterai.errors import StoreUnavailable
from clusterai.sdk.local import Client
from clusterai.store.open import open_store

SUPPORT = Path(__file__).resolve().parent
_CLEAN_ENV = ("CLUSTERAI_CONFIG", "CLUSTERAI_STORE", "CLUSTERAI_URL", "CLUSTERAI_TOKEN", "CLUSTERAI_ENROLLMENT_TOKEN",
              "CLUSTERAI_CA_CERT")


def node_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SUPPORT), os.environ.get("PYTHONPATH"))
                                                        if p),
           "COLUMNS": "400", "PYTHONUNBUFFERED": "1"}
    for name in _CLEAN_ENV:
        env.pop(name, None)
    return env


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One short `clusterai` command; bounded in time."""
    return subprocess.run([sys.executable, "-m", "clusterai.cli.main", *args], cwd=cwd, env=node_env(),
                          capture_output=True, text=True, timeout=timeout)


def worker_token(store: str, name: str, cwd: Path) -> str:
    """`clusterai token create NAME --role worker`: the token is the first line it prints."""
    made = cli("--store", store, "token", "create", name, "--role", "worker", cwd=cwd)
    assert made.returncode == 0, made.stdout + made.stderr
    return made.stdout.splitlines()[0].strip()


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """`sig` to the process group that `pid` leads (started with start_new_session=True)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Node:
    """A `clusterai` process started in its own session, its output in a log file."""

    def __init__(self, args: Sequence[str], cwd: Path, log: Path, *, prefix: Sequence[str] = (),
                 env: dict[str, str] | None = None):
        """`prefix`: a command that runs the node, e.g. ("ip", "netns", "exec", NAME) for a node on
        a network namespace of its own; it must exec the command (keeping its pid and session).
        `env`: variables added to its environment."""
        self.args = list(args)
        self.prefix = list(prefix)
        self.cwd = cwd
        self.log = log
        cwd.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.proc = subprocess.Popen([*self.prefix, sys.executable, "-m", "clusterai.cli.main", *self.args],
                                         cwd=cwd,
                                         env={**node_env(), **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        self.started = time.monotonic()

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_line(self, needle: str, timeout: float, *, after: int = 0) -> tuple[str, float]:
        """The first output line containing `needle` (searching from character `after`), and when it was
        seen (time.monotonic()). Fails at once if the process ends without printing it."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            at = text.find(needle, after)
            if at >= 0 and "\n" in text[at:]:
                start = text.rfind("\n", 0, at) + 1
                return text[start:text.index("\n", at)], time.monotonic()
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args[:6]} exited ({self.proc.returncode}) without printing {needle!r}:\n"
                                     + self.tail())
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.args[:6]} printed no {needle!r} within {timeout} s:\n" + self.tail())
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.args[:6]} still runs after {timeout} s:\n" + self.tail()) from None

    def tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """`sig` to the whole process group: the command and every process it started."""
        kill_group(self.pid, sig)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL to whatever is left after `grace` seconds; reaps the command."""
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL)  # the nanny's worker process may outlive its parent
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class Scheduler(Node):
    def __init__(self, store: str, cwd: Path, *, port: int = 0, tasks: Sequence[str] = ("testtasks",),
                 extra: Sequence[str] = ()):
        args = ["--store", store]
        for module in tasks:
            args += ["--tasks", module]
        super().__init__([*args, "scheduler", "--port", str(port), "--api-port", "0", *extra], cwd,
                         cwd / "scheduler.log")
        self.store = store
        self.address = ""
        self.api = ""

    def wait_up(self, timeout: float = 60, *, after: int = 0) -> Scheduler:
        line, _ = self.wait_line("clusterai is up", timeout, after=after)
        found = re.search(r"scheduler ((?:tcp|tls)://\S+)", line)
        assert found, line
        self.address = found.group(1)
        api_line, _ = self.wait_line("REST API: ", 5, after=after)
        self.api = api_line.split()[2]
        return self

    def admin_token(self) -> str:
        return (self.cwd / ".clusterai" / "admin.token").read_text().strip()


class Worker(Node):
    def __init__(self, address: str, token: str | None, name: str, cwd: Path, *, extra: Sequence[str] = (),
                 prefix: Sequence[str] = ()):
        args = ["worker", address, "--name", name, "--nthreads", "1", "--memory-limit", "1GiB"]
        if token is not None:
            args += ["--token", token]
        super().__init__([*args, *extra], cwd, cwd / f"worker-{name}.log", prefix=prefix)
        self.name = name


class ModelServer(Node):
    """`clusterai serve-model` on a loopback port, its token in its environment."""

    def __init__(self, specs: Sequence[str], port: int, token: str, cwd: Path, name: str):
        super().__init__(["serve-model", *specs, "--port", str(port)], cwd, cwd / f"serve-{name}.log",
                         env={"CLUSTERAI_MODEL_TOKEN": token})
        self.url = f"http://127.0.0.1:{port}"

    def wait_up(self, timeout: float = 120, *, after: int = 0) -> ModelServer:
        self.wait_line(f"at {self.url}", timeout, after=after)
        return self


@contextlib.contextmanager
def stopping(*nodes: Node) -> Iterator[list[Node]]:
    """Stop every node (now and any appended to the list) at the end, whatever happens."""
    started = list(nodes)
    try:
        yield started
    finally:
        for node in reversed(started):
            node.kill(signal.SIGTERM)
        for node in reversed(started):
            node.stop(grace=10)


def api_get(api: str, token: str, path: str, timeout: float = 15.0) -> httpx.Response:
    with httpx.Client(base_url=api, timeout=timeout, headers={"Authorization": f"Bearer {token}"}) as http:
        return http.get(path)


# -- jobs, read straight from the store ------------------------------------------------------------

def job_client(store: str, tasks: Sequence[str] = ("testtasks",)) -> Client:
    """A client on the store only (no runtime): it submits and reads; the head's coordinator runs."""
    import_task_modules(list(tasks))
    return Client(open_store(store), parse_config({"store": store, "tasks": list(tasks)}, source="test"),
                  runtime=None)


def succeeded(client: Client) -> int | None:
    """Jobs succeeded so far; None while the store cannot be read."""
    try:
        return client.counts()["succeeded"]
    except StoreUnavailable:
        return None


def wait_succeeded(client: Client, n: int, timeout: float, what: str = "") -> float:
    """Poll (through store outages) until at least `n` jobs succeeded; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    done: int | None = None
    while time.monotonic() < deadline:
        done = succeeded(client)
        if done is not None and done >= n:
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"only {done} jobs succeeded after {timeout} s, waiting for {n} {what}")


def accepted_successes(job: Job) -> int:
    return sum(1 for a in job.attempts if a.outcome is Outcome.SUCCEEDED)


def with_attempts(client: Client, jobs: Sequence[Job]) -> list[Job]:
    """The jobs as the store has them now, each with its attempt history."""
    return [client.get(j.id) for j in jobs]


def not_exactly_once(jobs: Sequence[Job]) -> list[str]:
    """Every job (read with its attempts) that did not end succeeded with exactly one accepted
    success, described."""
    return [f"job {j.id}: {j.state.value}, attempts {[(a.outcome and a.outcome.value, a.late) for a in j.attempts]}"
            for j in jobs if j.state is not State.SUCCEEDED or accepted_successes(j) != 1]
