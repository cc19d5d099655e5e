"""Dask is not a security boundary: the attacks a worker machine's key made possible, tried the way an
attacker would, each refused, with nothing run.

One head (`clusterai scheduler --tls-dir`) and workers (`clusterai worker --tls-dir`) as a user runs
them, on loopback. The attacker holds a worker's certificate and key (what any worker machine has)
and uses `distributed` directly. Each refused attack has a control beside it: the same call with an
admin-issued client certificate does run, so what stops the attack is the role check, not a broken
call."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from distributed import Client
from distributed.core import rpc
from distributed.protocol import pickle
from nodes import Node, Scheduler, Worker, cli, stopping, worker_token

from clusterai.worker.tls import node_security

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

EXIT_REFUSED = 4
NODES = ("w-attacker", "w-victim", "w-cert-revoked", "w-token-revoked")


class Cluster:
    def __init__(self, root: Path, head: Scheduler, workers: dict[str, Worker], tokens: dict[str, str]):
        self.root, self.head, self.workers, self.tokens = root, head, workers, tokens
        self.certs = root / "certs"

    def security(self, node: str) -> Any:
        return node_security(self.certs, node)

    def cli(self, *args: str) -> Any:
        return cli("--store", self.head.store, *args, cwd=self.root)

    def workers_info(self) -> dict[str, dict[str, Any]]:
        """The scheduler's workers by name, asked with the admin's client certificate."""
        async def ask() -> dict[str, dict[str, Any]]:
            async with Client(self.head.address, security=self.security("ops"), asynchronous=True,
                              timeout=10) as client:
                info = (await client.scheduler.identity(n_workers=-1))["workers"]
                return {str(w["name"]): {**w, "address": address} for address, w in info.items()}

        return asyncio.run(ask())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("dask-trust")
    node_args = [arg for name in NODES for arg in ("--node", name)]
    for args in (["--node", "head"], node_args, ["--node", "ops", "--role", "client"]):
        made = cli("certs", "create", "--dir", str(root / "certs"), *args, cwd=root)
        assert made.returncode == 0, made.stdout + made.stderr
    store = f"sqlite:///{root / 'head' / 'clusterai.db'}"
    head = Scheduler(store, root / "head", extra=["--tls-dir", str(root / "certs")])
    with stopping(head) as nodes:
        head.wait_up(90)
        tokens = {name: worker_token(store, name, root) for name in NODES}
        workers = {name: Worker(head.address, tokens[name], name, root,
                                extra=["--tls-dir", str(root / "certs"), "--tls-node", name]) for name in NODES}
        nodes.extend(workers.values())
        for worker in workers.values():
            worker.wait_line(f"joined {head.address}", 90)
        yield Cluster(root, head, workers, tokens)


def mkdir_call(path: Path) -> Any:
    """What the attacker wants run: harmless here, and leaves a trace if it ran."""
    return functools.partial(os.mkdir, str(path))


def attempt(coro: Any) -> BaseException | None:
    """Run one attack; the exception it ended with (None if it went through)."""
    async def bounded() -> None:
        await asyncio.wait_for(coro, 10)

    try:
        asyncio.run(bounded())
    except BaseException as exc:  # noqa: BLE001 - any failure is the attack failing
        return exc
    return None


def test_a_worker_certificate_cannot_run_code_on_the_head(cluster: Cluster, tmp_path: Path):
    marker = tmp_path / "ran-on-the-head"
    attacker = cluster.security("w-attacker")

    async def as_a_client() -> None:
        async with Client(cluster.head.address, security=attacker, asynchronous=True, timeout=5) as client:
            await client.run_on_scheduler(mkdir_call(marker))

    async def raw_run_function() -> None:
        async with rpc(cluster.head.address, connection_args=attacker.get_connection_args("client")) as head:
            await head.run_function(function=pickle.dumps(mkdir_call(marker)))

    async def register_a_plugin() -> None:
        async with rpc(cluster.head.address, connection_args=attacker.get_connection_args("client")) as head:
            await head.register_scheduler_plugin(plugin=pickle.dumps(object()), name="x", idempotent=False)

    for attack in (as_a_client, raw_run_function, register_a_plugin):
        assert attempt(attack()) is not None, attack.__name__
    assert not marker.exists()
    assert "may not call 'register-client' on a scheduler" in cluster.head.output()

    # control: the same call with the admin's client certificate runs
    control = tmp_path / "ran-for-the-admin"

    async def as_the_admin() -> None:
        async with Client(cluster.head.address, security=cluster.security("ops"), asynchronous=True,
                          timeout=10) as client:
            await client.run_on_scheduler(mkdir_call(control))

    assert attempt(as_the_admin()) is None
    assert control.is_dir()


def test_a_worker_certificate_cannot_command_another_worker_its_nanny_or_the_head(cluster: Cluster,
                                                                                    tmp_path: Path):
    victim = cluster.workers_info()["w-victim"]
    marker = tmp_path / "ran-on-the-victim"
    args = cluster.security("w-attacker").get_connection_args("worker")

    async def run_on(address: str) -> None:
        async with rpc(address, connection_args=args) as peer:
            await peer.run(function=pickle.dumps(mkdir_call(marker)))

    async def unregister_it() -> None:
        async with rpc(cluster.head.address, connection_args=args) as head:
            await head.unregister(address=victim["address"], stimulus_id="attack")

    async def retire_it() -> None:
        async with rpc(cluster.head.address, connection_args=args) as head:
            await head.retire_workers(workers=[victim["address"]], stimulus_id="attack")

    for name, attack in (("worker run", run_on(victim["address"])), ("nanny run", run_on(victim["nanny"])),
                         ("unregister", unregister_it()), ("retire", retire_it())):
        assert attempt(attack) is not None, name
    assert not marker.exists()
    time.sleep(1)
    assert "w-victim" in cluster.workers_info(), "the victim is still a worker"

    # control: the admin's client certificate can run code on that worker through the scheduler
    control = tmp_path / "ran-for-the-admin"

    async def as_the_admin() -> None:
        async with Client(cluster.head.address, security=cluster.security("ops"), asynchronous=True,
                          timeout=10) as client:
            await client.run(mkdir_call(control), workers=[victim["address"]])

    assert attempt(as_the_admin()) is None
    assert control.is_dir()


def test_only_a_worker_certificate_registers_a_worker(cluster: Cluster):
    for node in ("ops", "head"):
        worker = Worker(cluster.head.address, cluster.tokens["w-attacker"], f"as-{node}", cluster.root,
                        extra=["--tls-dir", str(cluster.certs), "--tls-node", node])
        with stopping(worker):
            code = worker.wait_exit(60)
        out = " ".join(worker.output().split())
        assert code == EXIT_REFUSED, out
        assert "worker certificate" in out
    assert f"as-{node}" not in cluster.workers_info()


def test_a_revoked_certificate_is_closed_within_seconds_and_cannot_join_again(cluster: Cluster):
    revoked = cluster.cli("certs", "revoke", "w-cert-revoked", "--dir", str(cluster.certs))
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    began = time.monotonic()
    wait_for(lambda: "w-cert-revoked" not in cluster.workers_info(), 15, "the revoked worker to be closed")
    assert time.monotonic() - began < 10
    worker = cluster.workers["w-cert-revoked"]
    assert worker.wait_exit(60) == EXIT_REFUSED, worker.tail()
    assert "refuses this machine's certificate" in worker.output()

    again = Worker(cluster.head.address, cluster.tokens["w-cert-revoked"], "w-cert-revoked-again", cluster.root,
                   extra=["--tls-dir", str(cluster.certs), "--tls-node", "w-cert-revoked"])
    with stopping(again):
        assert again.wait_exit(60) == EXIT_REFUSED, again.tail()
    assert "is revoked" in again.output()
    listed = cluster.cli("certs", "list", "--dir", str(cluster.certs))
    assert any(line.startswith("w-cert-revoked\t") and line.endswith("REVOKED") for line in listed.stdout.splitlines())
    assert "w-victim" in cluster.workers_info(), "other workers stay"


def test_a_revoked_worker_token_closes_its_worker_within_seconds(cluster: Cluster):
    listed = cluster.cli("token", "list", "--json")
    token_id = next(t["id"] for t in __import__("json").loads(listed.stdout) if t["name"] == "w-token-revoked")
    revoked = cluster.cli("token", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    began = time.monotonic()
    wait_for(lambda: "w-token-revoked" not in cluster.workers_info(), 15, "the worker to be closed")
    assert time.monotonic() - began < 10
    worker: Node = cluster.workers["w-token-revoked"]
    assert worker.wait_exit(60) == EXIT_REFUSED, worker.tail()
    assert "the enrollment token is invalid, revoked" in worker.output()
