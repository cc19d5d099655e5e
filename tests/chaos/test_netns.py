"""A worker on a network host of its own — a Linux network namespace joined to the head's by a veth
pair — and a network partition: the link goes down while the cut-off worker runs jobs. Its leases
expire, the worker left on the head's side finishes its jobs, and whatever the cut-off worker
answers once the link is back is recorded as late and ignored: every job succeeds exactly once.

Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) for `ip netns` and veth pairs; skipped otherwise."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import read_executions, wait_for
from nodes import Scheduler, Worker, job_client, not_exactly_once, stopping, with_attempts, worker_token

from clusterai.core.model import Outcome, State
from clusterai.sdk.local import Client

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

LEASE_SECONDS = 3


class Budget:
    """What is left of a test's time: every wait fits in it, so that a failing test ends in time
    (pytest-timeout is the backstop, and the nodes' shutdown comes after)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def __call__(self, cap: float) -> float:
        return max(1.0, min(cap, self.end - time.monotonic()))


# -- the network: a namespace, a veth pair, a /24 of 10.213.0.0/16 ------------------------------

@dataclass(frozen=True)
class Net:
    ns: str  # the worker host's network namespace
    root_end: str  # the veth end in the root namespace: the head's side of the cable
    ns_end: str
    head_ip: str
    worker_ip: str

    @property
    def prefix(self) -> tuple[str, ...]:
        """Runs a command on the worker host."""
        return ("ip", "netns", "exec", self.ns)

    def link(self, state: str) -> None:
        """Plug (up) or pull (down) the cable, on the head's side."""
        _ip("link", "set", self.root_end, state)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def _free_subnet() -> int:
    """N of a 10.213.N.0/24 that no interface here uses, starting from one derived from the pid."""
    used = _ip("-4", "-o", "addr", "show").stdout
    start = os.getpid() % 254
    for k in range(254):
        n = (start + k) % 254 + 1
        if f" 10.213.{n}." not in used:
            return n
    raise RuntimeError("every 10.213.N.0/24 is in use")


@pytest.fixture
def net() -> Iterator[Net]:
    pid = os.getpid()
    ns = f"cai-{pid}"
    try:
        made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, timeout=15)
    except FileNotFoundError:
        pytest.skip("needs the `ip` command (iproute2) to make network namespaces")
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace (`ip netns add` needs root: CAP_SYS_ADMIN and CAP_NET_ADMIN): "
                    f"{made.stderr.strip()}")
    root_end, ns_end = f"cai-{pid}-h", f"cai-{pid}-w"
    try:
        n = _free_subnet()
        net = Net(ns, root_end, ns_end, f"10.213.{n}.1", f"10.213.{n}.2")
        try:
            _ip("link", "add", root_end, "type", "veth", "peer", "name", ns_end)
        except RuntimeError as exc:
            pytest.skip(f"cannot make a veth pair here: {exc}")
        _ip("link", "set", ns_end, "netns", ns)
        _ip("addr", "add", f"{net.head_ip}/24", "dev", root_end)
        _ip("link", "set", root_end, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{net.worker_ip}/24", "dev", ns_end)
        _ip("-n", ns, "link", "set", ns_end, "up")
        yield net
    finally:
        # the nodes were stopped by the test; anything of ours still on the worker host goes now
        for line in _ip("netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                os.kill(int(line), signal.SIGKILL)
        _ip("link", "del", root_end, check=False)  # takes the peer with it
        _ip("netns", "del", ns, check=False)


# -- the cluster: a head on the root side, a worker on each side --------------------------------

@dataclass
class Cluster:
    head: Scheduler
    remote: Worker  # on the worker host, across the cable
    local: Worker  # beside the head
    client: Client

    def addresses(self) -> dict[str, str]:
        return {w.name: w.address for w in self.client.workers() if w.status == "ready" and w.pid}


def _ready(client: Client, name: str) -> bool:
    return any(w.name == name and w.status == "ready" and w.pid for w in client.workers())


@contextlib.contextmanager
def cluster(net: Net, url: str, tmp_path: Path, budget: Budget) -> Iterator[Cluster]:
    token = worker_token(url, "netns-workers", tmp_path)
    head_dir = tmp_path / "head"
    head_dir.mkdir()
    # the head reads ./cluster.yaml: a worker that stops answering loses its jobs after 3 s
    (head_dir / "cluster.yaml").write_text(f"coordinator:\n  lease_seconds: {LEASE_SECONDS}\n")
    # plain TCP beyond loopback: the cable joins only this test's two network namespaces
    head = Scheduler(url, head_dir, extra=["--host", net.head_ip, "--allow-plain-tcp"])
    with stopping(head) as nodes:
        head.wait_up(budget(30))
        assert head.address.startswith(f"tcp://{net.head_ip}:"), head.address
        remote = Worker(head.address, token, "remote", tmp_path / "remote", prefix=net.prefix,
                        extra=["--host", net.worker_ip, "--label", "side=far"])
        local = Worker(head.address, token, "local", tmp_path / "local",
                       extra=["--host", net.head_ip, "--label", "side=near"])
        nodes.extend([remote, local])
        client = job_client(url)
        try:
            for w in (remote, local):
                w.wait_line("joined", budget(30))
                wait_for(lambda w=w: _ready(client, w.name), budget(20), f"worker {w.name} to be ready")
            yield Cluster(head, remote, local, client)
        finally:
            client.close()


def _netns_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


@pytest.mark.timeout(90)
def test_worker_on_another_network_host_runs_jobs(net, pg_url, tmp_path):
    started, budget = time.monotonic(), Budget(70)
    with cluster(net, pg_url, tmp_path, budget) as c:
        up = time.monotonic()
        workers = {w.name: w for w in c.client.workers()}
        remote, local = workers["remote"], workers["local"]
        # the remote worker joined over the cable, from the worker host's own address
        assert remote.address.startswith(f"tcp://{net.worker_ip}:"), remote
        assert local.address.startswith(f"tcp://{net.head_ip}:"), local
        # ... and both its command and its Dask worker process live on that other network
        assert _netns_of(c.remote.pid) != _netns_of(os.getpid())
        assert _netns_of(remote.pid) == _netns_of(c.remote.pid)
        assert _netns_of(local.pid) == _netns_of(os.getpid())

        far = c.client.submit_many("test.where", [{"sleep": 0}] * 5, labels={"side": "far"})
        near = c.client.submit_many("test.where", [{"sleep": 0}] * 5, labels={"side": "near"})
        c.client.wait(far + near, timeout=budget(30))
        for jobs, name, address in ((far, "remote", remote.address), (near, "local", local.address)):
            for job in c.client.get_many(jobs):
                assert job.state is State.SUCCEEDED, job
                assert job.result == name, job
                assert job.worker == address, job
        print(f"cluster across the namespace up in {up - started:.1f} s; 10 jobs in "
              f"{time.monotonic() - up:.1f} s; remote {remote.address}, local {local.address}")


@pytest.mark.timeout(90)
def test_partition_moves_jobs_and_fences_the_cut_off_worker(net, pg_url, tmp_path):
    jobs_n = 200
    budget = Budget(70)
    with cluster(net, pg_url, tmp_path, budget) as c:
        addresses = c.addresses()
        remote, local = addresses["remote"], addresses["local"]
        log = tmp_path / "executions.log"
        jobs = c.client.submit_many("test.record", [{"path": str(log), "key": f"k{i}", "sleep": 0.05}
                                                    for i in range(jobs_n)])
        ids = [j.id for j in jobs]

        def remote_just_started() -> list[int]:
            """Jobs the head handed to the remote worker in the last 20 ms: still running there."""
            now = time.time()
            return [j.id for j in c.client.store.running_jobs() if j.worker == remote and now - j.updated_at < 0.02]

        # mid-run, while the remote worker runs a job (of 50 ms, sent 15 to 35 ms ago): pull the cable
        wait_for(lambda: c.client.counts()["succeeded"] >= 30, budget(30), "30 jobs to succeed before the cut")
        wait_for(remote_just_started, budget(10), "a job to start on the remote worker")
        time.sleep(0.015)  # for the batch to reach it
        net.link("down")
        cut_wall, cut = time.time(), time.monotonic()
        at_cut = c.client.counts()
        mark = len(c.remote.output())
        try:
            # the local worker finishes everything once the remote's leases expire
            c.client.wait(ids, timeout=budget(40))
            all_done = time.monotonic()
            during = with_attempts(c.client, jobs)
            # the cut-off worker noticed: it lost its head and looks for it again
            c.remote.wait_line("is gone; looking for a head", budget(10), after=mark)
        finally:
            net.link("up")
        healed = time.monotonic()

        # expired attempts on the remote worker: its leases ran out while it was cut off
        expired = {(j.id, a.number) for j in during for a in j.attempts
                   if a.worker == remote and a.outcome is Outcome.EXPIRED}
        moved = {job_id for job_id, _ in expired}
        last = max(j.finished_at or 0.0 for j in during) - cut_wall
        rerun = max((j.finished_at or 0.0 for j in during if j.id in moved), default=cut_wall) - cut_wall
        print(f"cut with {at_cut['succeeded']} of {jobs_n} succeeded and {at_cut['running']} running; "
              f"{len(expired)} attempts expired on the cut-off worker and ran again, done {rerun:.2f} s after the "
              f"cut (lease {LEASE_SECONDS} s); the last job finished {last:.2f} s after the cut "
              f"(seen {all_done - cut:.2f} s)")
        assert expired, ("the cut should have caught the remote worker running a job: "
                         f"{[(j.id, j.attempts) for j in during if any(a.worker == remote for a in j.attempts)][-3:]}")
        # ... each ran again beside the head, and that attempt is the one accepted
        for job in during:
            if job.id in moved:
                assert job.state is State.SUCCEEDED and job.worker == local, job

        # once the cable is back, the cut-off worker's answers for those attempts (if any reach the
        # head: its reply may still sit in a socket's send queue) are recorded as late and ignored
        def late_answers() -> list[str]:
            now = with_attempts(c.client, [j for j in jobs if j.id in moved])
            return [a.late for j in now for a in j.attempts if (j.id, a.number) in expired and a.late]

        with contextlib.suppress(AssertionError):
            wait_for(lambda: len(late_answers()) >= len(expired), budget(15), "the cut-off worker's late answers")
        late = late_answers()
        print(f"{len(late)} late answers for the {len(expired)} expired attempts within "
              f"{time.monotonic() - healed:.1f} s of the heal: {late}")

        final = with_attempts(c.client, jobs)
        problems = not_exactly_once(final)
        assert not problems, f"{len(problems)} jobs not succeeded exactly once: {problems[:10]}"
        for job in final:
            for a in job.attempts:
                if a.late:  # recorded, never accepted: the outcome stays what the head decided
                    assert a.outcome is not Outcome.SUCCEEDED and "ignored" in a.late, (job.id, a)
                    assert a.worker == remote, (job.id, a)
        assert c.client.counts()["succeeded"] == jobs_n
        # at least once underneath: every job ran; more than once only where an attempt expired
        executions = read_executions(log)
        assert set(executions) == {f"k{i}" for i in range(jobs_n)}
        assert sum(executions.values()) <= jobs_n + len(expired)
        twice = sorted(k for k, n in executions.items() if n > 1)
        print(f"{sum(executions.values())} executions for {jobs_n} jobs; run on both sides of the cut: {twice}")

        # the cut-off worker comes back on its own, as a new Dask worker, and gets work again
        c.remote.wait_line("joined", budget(30), after=mark)
        back = wait_for(lambda: [w.address for w in c.client.workers() if w.name == "remote" and w.status == "ready"
                                 and w.pid and w.address != remote], budget(15), "the remote worker back")[0]
        assert back.startswith(f"tcp://{net.worker_ip}:"), back
        again = c.client.submit_many("test.where", [{"sleep": 0}] * 3, labels={"side": "far"})
        c.client.wait(again, timeout=budget(15))
        assert [(j.state, j.result, j.worker) for j in c.client.get_many(again)] == [
            (State.SUCCEEDED, "remote", back)] * 3
        print(f"the remote worker was back {time.monotonic() - healed:.1f} s after the heal, as {back}")
