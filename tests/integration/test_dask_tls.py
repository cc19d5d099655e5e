"""Dask comms over TLS with certificates from clusterai.worker.tls: a real scheduler, worker and client on
loopback talk, and every peer that is not part of the cluster is refused quickly instead of hanging.

In-process Scheduler/Worker on one event loop: the comms are the same as across machines, and each
test takes well under a second apart from the one that waits out a worker's retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from distributed import Client, Scheduler, Worker
from distributed.comm.core import FatalCommClosedError
from distributed.security import Security

from clusterai.errors import ConfigError
from clusterai.worker.tls import create_certs, dask_security, node_security, require_tls_address

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(30)]

REFUSE_WITHIN = 3  # seconds a refused peer may try before it must give up


def one() -> int:
    return 1


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    create_certs(tmp_path / "certs", nodes=["head", "worker", "laptop"])
    return tmp_path / "certs"


def run_with_scheduler(certs: Path, scenario: Callable[[Scheduler], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Scheduler(security=node_security(certs, "head"), host="127.0.0.1", port=0,
                             dashboard=False) as scheduler:
            await scenario(scheduler)

    asyncio.run(main())


async def connect_client(address: str, security: Security | None) -> None:
    """Connect a client and close it again, also when connecting fails (an unclosed asynchronous
    Client warns when it is collected)."""
    client = Client(address, security=security, asynchronous=True, timeout=REFUSE_WITHIN)
    try:
        await client
    finally:
        await client.close()


def plain(address: str) -> str:
    return address.replace("tls://", "tcp://", 1)


def test_scheduler_worker_and_client_work_over_tls(certs: Path):
    async def scenario(scheduler: Scheduler) -> None:
        assert scheduler.address.startswith("tls://127.0.0.1:"), "TLS security makes tls:// the default"
        async with Worker(scheduler.address, security=node_security(certs, "worker"), nthreads=1,
                          local_directory=str(certs.parent)) as worker:
            assert worker.address.startswith("tls://")
            async with Client(scheduler.address, security=node_security(certs, "laptop"),
                              asynchronous=True, timeout=10) as client:
                assert await client.submit(one) == 1
                assert list(scheduler.workers) == [worker.address]

    run_with_scheduler(certs, scenario)


def test_peers_without_tls_are_refused_and_do_not_hang(certs: Path):
    async def scenario(scheduler: Scheduler) -> None:
        started = time.monotonic()
        with pytest.raises(OSError):
            await connect_client(plain(scheduler.address), security=None)
        assert time.monotonic() - started < REFUSE_WITHIN + 2

        # A worker retries its registration until death_timeout, then gives up.
        started = time.monotonic()
        worker = Worker(plain(scheduler.address), nthreads=1, death_timeout=REFUSE_WITHIN,
                        local_directory=str(certs.parent))
        try:
            with pytest.raises((OSError, TimeoutError)):
                await worker
        finally:
            await worker.close()
        assert time.monotonic() - started < REFUSE_WITHIN + 2
        assert not scheduler.workers

    run_with_scheduler(certs, scenario)


def test_a_tls_peer_given_a_tcp_address_is_refused(certs: Path):
    security = node_security(certs, "laptop")

    async def scenario(scheduler: Scheduler) -> None:
        address = plain(scheduler.address)
        with pytest.raises(ConfigError, match="plain tcp, which is refused because TLS is configured"):
            require_tls_address(address, security)
        require_tls_address(scheduler.address, security)
        # Dask's own refusal, which require_tls_address puts into clusterai's words before it happens.
        with pytest.raises(RuntimeError, match="encryption required by Dask configuration"):
            await connect_client(address, security)

    run_with_scheduler(certs, scenario)


def test_certificates_of_another_ca_are_refused(certs: Path, tmp_path: Path):
    other = tmp_path / "other"
    create_certs(other)
    # A stranger who knows the cluster's CA certificate (it is public) but has no key it signed.
    # dask_security refuses that combination up front, so build the Security by hand as an attacker would.
    with pytest.raises(ConfigError, match="not signed by this CA"):
        dask_security(certs / "ca.pem", other / "worker.pem", other / "worker.key")
    stranger = Security(require_encryption=True, tls_ca_file=str(certs / "ca.pem"),
                        tls_client_cert=str(other / "worker.pem"), tls_client_key=str(other / "worker.key"))

    async def scenario(scheduler: Scheduler) -> None:
        started = time.monotonic()
        # The client refuses the scheduler's certificate: it trusts only the other CA.
        with pytest.raises(FatalCommClosedError, match="TLS certificate does not match"):
            await connect_client(scheduler.address, node_security(other, "worker"))
        # The scheduler refuses the client's certificate.
        with pytest.raises(OSError, match="unknown ca"):
            await connect_client(scheduler.address, stranger)
        assert time.monotonic() - started < REFUSE_WITHIN
        assert not scheduler.workers

    run_with_scheduler(certs, scenario)

