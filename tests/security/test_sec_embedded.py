"""The embedded cluster (`clusterai up`, the demo, `clusterai.connect()`): its scheduler and workers
listen on loopback, where every user of the machine can connect. Dask's temporary TLS credentials,
made at start and held in memory, keep out everyone but the process and its workers: another
process on the machine cannot run code through them, in clear or with a certificate of its own."""

from __future__ import annotations

import asyncio
import functools
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed import Client
from distributed.core import rpc
from distributed.protocol import pickle
from distributed.security import Security
from nodes import Node, api_get, job_client, stopping

from clusterai.worker.tls import create_certs, node_security

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]


def attempt(coro: Any) -> BaseException | None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, 10)

    try:
        asyncio.run(bounded())
    except BaseException as exc:  # noqa: BLE001 - any failure is the attack failing
        return exc
    return None


def test_another_process_cannot_use_the_embedded_cluster(tmp_path: Path):
    store = f"sqlite:///{tmp_path / 'clusterai.db'}"
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "store": store, "tasks": ["testtasks"], "api": {"port": 0},
        "cluster": {"workers": 1, "dashboard": False, "memory_limit": "1GiB"}}))
    up = Node(["--config", str(tmp_path / "cluster.yaml"), "up"], tmp_path, tmp_path / "up.log")
    with stopping(up):
        line, _ = up.wait_line("clusterai is up", 90)
        scheduler = re.search(r"scheduler (\S+)", line).group(1)  # type: ignore[union-attr]
        assert scheduler.startswith("tls://127.0.0.1:"), line
        api = up.wait_line("REST API: ", 5)[0].split()[2]
        admin = (tmp_path / ".clusterai" / "admin.token").read_text().strip()
        worker = api_get(api, admin, "/api/v1/workers").json()["workers"][0]["address"]
        assert worker.startswith("tls://127.0.0.1:")

        marker = tmp_path / "ran"
        call = functools.partial(os.mkdir, str(marker))
        own_ca = tmp_path / "certs"
        create_certs(own_ca, nodes=["head", "intruder"])
        intruders: dict[str, Any] = {
            "plain tcp": None,
            "self-signed TLS": Security.temporary(),
            "a CA of its own, head role": node_security(own_ca, "head"),
            "a CA of its own, worker role": node_security(own_ca, "intruder"),
        }
        for what, security in intruders.items():
            def to(address: str, security: Any = security) -> str:
                return address.replace("tls://", "tcp://") if security is None else address

            async def as_client(security: Any = security) -> None:
                async with Client(to(scheduler), security=security, asynchronous=True, timeout=3) as client:
                    await client.run_on_scheduler(call)

            async def raw(address: str, security: Any = security) -> None:
                args = security.get_connection_args("client") if security is not None else {}
                async with rpc(to(address), connection_args=args, timeouts={"connect": 3}) as peer:
                    await peer.run(function=pickle.dumps(call))

            assert attempt(as_client()) is not None, what
            assert attempt(raw(worker)) is not None, what
        assert not marker.exists()

        # and the cluster itself works as before
        client = job_client(store)
        try:
            assert client.result(client.submit("test.where"), timeout=60)
        finally:
            client.close()
