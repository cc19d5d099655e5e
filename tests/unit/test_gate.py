"""The role check in front of Dask's handlers (worker/gate.py), on comms that carry a peer
certificate as Dask's TLS comm does. The attacks over real connections are in tests/security."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from distributed.comm.core import CommClosedError

from clusterai.worker.gate import HARMLESS, WORKER_TO_SCHEDULER, Gate, GatedHandlers
from clusterai.worker.tls import Identity


class FakeComm:
    def __init__(self, serial: str | None, role: str | None = "worker", name: str = "n"):
        subject: list[Any] = [(("commonName", name),)]
        if role is not None:
            subject.append((("organizationalUnitName", role),))
        self.extra_info = {"peercert": {"serialNumber": serial, "subject": tuple(subject)}} if serial else {}
        self.peer_address = "tls://127.0.0.1:1"
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


HEAD = Identity("AA", "head", "head")


def scheduler_gate() -> Gate:
    return Gate("scheduler", HEAD, WORKER_TO_SCHEDULER)


def test_trusted_roles_and_the_server_itself_may_do_anything_but_register_as_workers():
    gate = scheduler_gate()
    for comm in (FakeComm("AA", "head"), FakeComm("BB", "client"), FakeComm("0AA", "head")):
        assert gate.refusal(comm, "run_function", {}) is None
        assert "only worker certificates" in str(gate.refusal(comm, "register-worker", {"address": "x"}))


def test_a_worker_certificate_gets_its_allow_list_only():
    gate = scheduler_gate()
    worker = FakeComm("C1")
    for op in ("run_function", "register-client", "register_scheduler_plugin", "connection_stream", "restart"):
        assert "may not call" in str(gate.refusal(worker, op, {})), op
    assert gate.refusal(worker, "clusterai_enroll", {}) is None
    assert gate.refusal(worker, "register-worker", {"address": "tls://w1:1"}) is None
    assert gate.refusal(worker, "heartbeat_worker", {"address": "tls://w1:1"}) is None
    # another worker's address: neither taken over nor unregistered, retired or heartbeated for
    other = FakeComm("C2")
    assert "another certificate" in str(gate.refusal(other, "register-worker", {"address": "tls://w1:1"}))
    for op, args in (("unregister", {"address": "tls://w1:1"}), ("retire_workers", {"workers": ["tls://w1:1"]}),
                     ("heartbeat_worker", {"address": "tls://w1:1"})):
        assert "did not register" in str(gate.refusal(other, op, args)), op
    gate.forget("tls://w1:1")
    assert gate.refusal(other, "register-worker", {"address": "tls://w1:1"}) is None


def test_no_certificate_no_role_or_a_revoked_one_may_do_nothing():
    gate = scheduler_gate()
    gate.revoked = frozenset({"D1"})
    assert "no client certificate" in str(gate.refusal(FakeComm(None), "identity", {}))
    assert "no clusterai role" in str(gate.refusal(FakeComm("E1", role=None), "identity", {}))
    assert "revoked" in str(gate.refusal(FakeComm("D1", "head"), "identity", {}))
    assert gate.refusal(FakeComm("E1"), "identity", {}) is None


def test_handlers_are_wrapped_with_their_signature_and_refusals_close_the_comm():
    calls: list[Any] = []

    def with_comm(comm: Any, x: int, serializers: Any = None) -> int:
        calls.append((comm, x, serializers))
        return x

    async def without_comm(y: int) -> int:
        return y * 2

    table = GatedHandlers(Gate("nanny", Identity("F1", "w", "worker"), HARMLESS),
                          {"kill": with_comm, "identity": without_comm}.items())
    import inspect

    assert list(inspect.signature(table["kill"]).parameters) == ["comm", "x", "serializers"]
    me, stranger = FakeComm("F1"), FakeComm("F2")
    assert table["kill"](me, x=3) == 3 and calls[0][0] is me
    assert asyncio.run(table["identity"](stranger, y=2)) == 4
    with pytest.raises(CommClosedError):
        table["kill"](stranger, x=1)
    assert stranger.aborted and len(calls) == 1
    table["later"] = with_comm  # added after install (a plugin's handler): checked too
    with pytest.raises(CommClosedError):
        table["later"](FakeComm("F3"), x=1)
