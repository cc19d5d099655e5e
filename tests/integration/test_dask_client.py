"""A Dask client on the cluster clusterai manages: `Client.dask_client()` on the embedded cluster and
`clusterai.dask_client()` on a head over TLS (`clusterai scheduler --tls-dir`), as an operator uses them.

dask.bag and dask.dataframe run on the cluster's own workers, next to the jobs, which keep running;
only a certificate of role client (or the head's own) is used, and every certificate, address or
folder that could not work is refused before a connection is opened."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.bag as db
import pytest
from conftest import live_workers, make_config, wait_for
from nodes import Scheduler, Worker, stopping, worker_token

import clusterai
from clusterai.errors import AuthRefused, BadInput, ConfigError, Unreachable
from clusterai.sdk import dask_access
from clusterai.worker.tls import create_certs

pytestmark = [pytest.mark.cluster]

SQUARES = sum(x * x for x in range(1000))
NOWHERE = "192.0.2.1"  # TEST-NET-1: never routed; only used where the refusal comes before any packet


def squares_bag() -> Any:
    return db.from_sequence(range(1000), npartitions=8).map(lambda x: x * x)


def bag_pids() -> set[int]:
    """The pids of the processes that computed a bag's partitions."""
    return set(db.from_sequence(range(16), npartitions=8).map_partitions(lambda part: [os.getpid()]).compute())


# -- the embedded cluster ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[clusterai.Client]:
    """One 2-worker embedded cluster for this module's tests (each opens and closes its own Dask client)."""
    config = make_config(tmp_path_factory.mktemp("embedded"))
    with clusterai.connect(config) as c:
        wait_for(lambda: len(live_workers(c)) >= 2, 60, "workers to join")
        yield c


def worker_pids(c: clusterai.Client) -> set[int]:
    return {w.pid for w in live_workers(c)}


@pytest.mark.timeout(90)
def test_a_dask_bag_runs_on_the_embedded_clusters_workers(embedded: clusterai.Client):
    pids = worker_pids(embedded)
    assert len(pids) == 2
    with embedded.dask_client() as dc:
        assert dc.scheduler.address.startswith("tls://"), "the embedded cluster's own temporary credentials"
        assert squares_bag().sum().compute() == SQUARES  # Dask's default client: this one
        assert set(dc.run(os.getpid).values()) == pids
        ran = bag_pids()
        assert ran <= pids and os.getpid() not in ran


@pytest.mark.timeout(90)
def test_a_dask_dataframe_groupby_runs_on_the_embedded_cluster(embedded: clusterai.Client):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    frame = pd.DataFrame({"key": [i % 7 for i in range(700)], "value": range(700)})
    with embedded.dask_client():
        got = dd.from_pandas(frame, npartitions=4).groupby("key")["value"].sum().compute().sort_index()
    expected = frame.groupby("key")["value"].sum().sort_index()
    assert got.to_dict() == expected.to_dict()


@pytest.mark.timeout(90)
def test_jobs_run_while_a_dask_client_is_open_and_after_it_closes(embedded: clusterai.Client):
    pids = worker_pids(embedded)
    dc = embedded.dask_client()
    try:
        future = dc.submit(sum, range(10))
        job = embedded.submit("test.pid")
        assert embedded.result(job, timeout=60) in pids
        assert future.result(timeout=30) == 45
    finally:
        dc.close()
    # closing the Dask client closes nothing of the cluster's
    assert worker_pids(embedded) == pids
    assert embedded.result(embedded.submit("test.pid"), timeout=60) in pids
    with embedded.dask_client() as again:  # and another one opens as before
        assert squares_bag().sum().compute() == SQUARES
        assert set(again.run(os.getpid).values()) == pids


def test_a_client_attached_to_the_store_only_has_no_dask_client(embedded: clusterai.Client):
    attached = clusterai.connect(embedded.config, store=embedded.config.store)
    try:
        with pytest.raises(BadInput, match=r"clusterai\.dask_client\('tls://head:8786'\)"):
            attached.dask_client()
    finally:
        attached.close()


# -- a head over TLS ------------------------------------------------------------------------------

class TlsHead:
    def __init__(self, address: str, certs: Path):
        self.address, self.certs = address, certs


@pytest.fixture(scope="module")
def tls_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsHead]:
    """`clusterai scheduler --tls-dir` and one `clusterai worker --tls-dir`, certificates from
    create_certs: head (role head), w1 (role worker), ops (role client, as the admin makes one)."""
    root = tmp_path_factory.mktemp("tls-head")
    certs = root / "certs"
    create_certs(certs, nodes=["head"])
    create_certs(certs, nodes=["w1"])
    create_certs(certs, nodes=["ops"], role="client")
    store = f"sqlite:///{root / 'head' / 'clusterai.db'}"
    head = Scheduler(store, root / "head", extra=["--tls-dir", str(certs)])
    with stopping(head) as nodes:
        head.wait_up(90)
        worker = Worker(head.address, worker_token(store, "w1", root), "w1", root,
                        extra=["--tls-dir", str(certs), "--tls-node", "w1"])
        nodes.append(worker)
        worker.wait_line(f"joined {head.address}", 90)
        yield TlsHead(head.address, certs)


@pytest.mark.timeout(180)
def test_a_client_certificate_computes_on_a_tls_head(tls_head: TlsHead, monkeypatch: pytest.MonkeyPatch):
    assert tls_head.address.startswith("tls://")
    # the only certificate of role client in the folder is picked, not the head's beside it
    with clusterai.dask_client(tls_head.address, certs=tls_head.certs, timeout=20) as dc:
        assert squares_bag().sum().compute() == SQUARES
        assert len(dc.run(os.getpid)) == 1
    # the address and the folder from the environment, the certificate named
    monkeypatch.setenv(dask_access.SCHEDULER_ENV, tls_head.address)
    monkeypatch.setenv(dask_access.CERTS_ENV, str(tls_head.certs))
    with clusterai.dask_client(name="ops", timeout=20):
        assert squares_bag().sum().compute() == SQUARES
    # on the head, its own certificate when named
    with clusterai.dask_client(tls_head.address, certs=tls_head.certs, name="head", timeout=20):
        assert squares_bag().sum().compute() == SQUARES


@pytest.mark.timeout(60)
def test_a_worker_certificate_is_refused_before_connecting(tls_head: TlsHead):
    for address in (tls_head.address, f"tls://{NOWHERE}:8786"):  # nothing is sent: it fails the same, at once
        with pytest.raises(AuthRefused, match="of role worker") as refused:
            clusterai.dask_client(address, certs=tls_head.certs, name="w1", timeout=5)
        assert "clusterai certs create --node NAME --role client" in str(refused.value)
        assert refused.value.status == 403


@pytest.fixture
def worker_certs_only(tmp_path: Path) -> Path:
    create_certs(tmp_path / "certs", nodes=["head", "w1"])
    return tmp_path / "certs"


def test_a_folder_without_a_client_certificate_says_how_to_make_one(worker_certs_only: Path):
    with pytest.raises(ConfigError, match="no certificate of role client") as missing:
        clusterai.dask_client(f"tls://{NOWHERE}:8786", certs=worker_certs_only)
    assert "--role client" in str(missing.value)
    with pytest.raises(ConfigError, match=r"no .*nobody\.pem or .*nobody\.key"):
        clusterai.dask_client(f"tls://{NOWHERE}:8786", certs=worker_certs_only, name="nobody")


def test_several_client_certificates_need_a_name(tmp_path: Path):
    create_certs(tmp_path / "certs", nodes=["alice", "bob"], role="client")
    with pytest.raises(ConfigError, match=r"several client certificates .*\(alice, bob\): pass name="):
        clusterai.dask_client(f"tls://{NOWHERE}:8786", certs=tmp_path / "certs")


def test_a_missing_certs_folder_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ConfigError, match=r"ca\.pem: a Dask client needs the cluster's CA certificate") as missing:
        clusterai.dask_client(f"tls://{NOWHERE}:8786", certs=tmp_path / "absent")
    assert "--role client" in str(missing.value)
    monkeypatch.setenv(dask_access.CERTS_ENV, str(tmp_path / "absent-too"))
    with pytest.raises(ConfigError, match="absent-too"):
        clusterai.dask_client(f"tls://{NOWHERE}:8786")


def test_no_scheduler_address_is_a_config_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(dask_access.SCHEDULER_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"no scheduler address.*{dask_access.SCHEDULER_ENV}"):
        clusterai.dask_client()


def test_another_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match=r"listens on tls://.*not udp://"):
        clusterai.dask_client(f"udp://{NOWHERE}:8786")


class Connects:
    """Stands in for the connection: records what dask_client would connect to, and sends nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, float]] = []

    def __call__(self, address: str, security: Any, timeout: float) -> str:
        self.calls.append((address, security, timeout))
        return "connected"


@pytest.mark.parametrize("address", [f"tcp://{NOWHERE}:8786", f"{NOWHERE}:8786", f"ws://{NOWHERE}:8786",
                                     "tcp://head.example:8786"])
def test_plain_tcp_to_another_machine_is_refused_unless_allowed(address: str, monkeypatch: pytest.MonkeyPatch):
    connects = Connects()
    monkeypatch.setattr(dask_access, "_connect", connects)
    with pytest.raises(ConfigError, match="to another machine.*allow_plain_tcp=True"):
        clusterai.dask_client(address)
    assert connects.calls == []
    assert clusterai.dask_client(address, allow_plain_tcp=True, timeout=3) == "connected"
    assert connects.calls == [(address, None, 3)], "in clear: no certificate presented"


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "tcp://localhost:8786", "tcp://[::1]:8786"])
def test_plain_tcp_on_loopback_needs_no_permission(address: str, monkeypatch: pytest.MonkeyPatch):
    connects = Connects()
    monkeypatch.setattr(dask_access, "_connect", connects)
    assert clusterai.dask_client(address) == "connected"
    assert connects.calls == [(address, None, dask_access.DEFAULT_TIMEOUT)]


def test_certificates_with_a_plain_address_are_refused(worker_certs_only: Path, monkeypatch: pytest.MonkeyPatch):
    connects = Connects()
    monkeypatch.setattr(dask_access, "_connect", connects)
    for options in ({"certs": worker_certs_only}, {"name": "ops"}):
        with pytest.raises(ConfigError, match=r"plain tcp but certificates were given: use tls://127\.0\.0\.1:8786"):
            clusterai.dask_client("tcp://127.0.0.1:8786", **options)
    assert connects.calls == []


@pytest.mark.timeout(30)
def test_a_scheduler_that_does_not_answer_is_unreachable():
    with socket.socket() as held:  # a loopback port nobody listens on
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with pytest.raises(Unreachable, match=f"tcp://127.0.0.1:{port} within 1"):
            clusterai.dask_client(f"tcp://127.0.0.1:{port}", timeout=1)
