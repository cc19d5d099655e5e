"""`clusterai join` end to end on loopback: a head with its CA key and an HTTPS API, a join code, and a
new machine that fetches its identity pinned to the CA and runs jobs, with nothing copied by hand.
A wrong fingerprint, a used, expired or revoked join token, and a plain worker token are refused
with exit code 4 and a message that says why."""

from __future__ import annotations

import json
import re
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pgserver
import pytest
import yaml
from conftest import wait_for
from nodes import Node, Scheduler, cli, job_client, stopping, worker_token

from clusterai.worker.discovery import Advertiser
from clusterai.worker.join import make_code, read_code

pytestmark = [pytest.mark.cluster]
EXIT_AUTH = 4


@pytest.fixture(scope="module")
def head(pg_server: pgserver.PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scheduler]:
    cwd = tmp_path_factory.mktemp("join-head")
    made = cli("certs", "create", "--dir", "certs", "--node", "head", cwd=cwd)
    assert made.returncode == 0, made.stderr
    (cwd / "cluster.yaml").write_text(yaml.safe_dump({"api": {"tls_cert": "certs/head.pem",
                                                              "tls_key": "certs/head.key"}}))
    node = Scheduler(pg_server.create_database(f"join_{time.time_ns()}"), cwd,
                     extra=["--tls-dir", "certs", "--advertise", "--beacon-port", "0"])
    with stopping(node):
        node.wait_up(90)
        assert node.api.startswith("https://")
        yield node


def advertised(head: Scheduler) -> tuple[int, str]:
    """The head's beacon port and CA fingerprint, as it printed them."""
    line, _ = head.wait_line("advertised for `clusterai join --discover`", 5)
    found = re.search(r"UDP beacon on port (\d+)\); CA fingerprint ([0-9a-f]{64})", line)
    assert found, line
    return int(found.group(1)), found.group(2)


class RogueHead:
    """Someone posing as the head on the LAN: it advertises the real head's fingerprint, serves a CA
    of its own over HTTPS, and records every request it gets (a token must never reach it)."""

    def __init__(self, tmp_path: Path, fingerprint: str):
        made = cli("certs", "create", "--dir", "rogue", "--node", "head", cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        ca = (tmp_path / "rogue" / "ca.pem").read_text()
        self.requests: list[tuple[str, str, str | None]] = []
        rogue = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                rogue.requests.append((self.command, self.path, self.headers.get("Authorization")))
                body = json.dumps({"ca": ca, "fingerprint": fingerprint}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / "rogue" / "head.pem", tmp_path / "rogue" / "head.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.advertiser = Advertiser({"api": self.url, "fingerprint": fingerprint, "cluster": "rogue",
                                      "version": "0"}, name="rogue-head", host="127.0.0.1",
                                     port=self.server.server_address[1], beacon_port=0, interfaces=["127.0.0.1"])
        self.advertiser.start()

    def close(self) -> None:
        self.advertiser.stop()
        self.server.shutdown()


def join_code(head: Scheduler, *options: str) -> str:
    made = cli("--store", head.store, "join-code", "--url", head.api, "--tls-dir", "certs", *options, cwd=head.cwd)
    assert made.returncode == 0, made.stdout + made.stderr
    return made.stdout.strip().splitlines()[-1]


def join(code: str, name: str, cwd: Path, *extra: str) -> Node:
    """`clusterai join CODE` (no code: --discover in `extra`)."""
    return Node(["join", *([code] if code else []), "--name", name, "--dir", str(cwd / "identity"), *extra], cwd,
                cwd / f"join-{name}.log")


def refused(code: str, tmp_path: Path, name: str = "refused") -> str:
    node = join(code, name, tmp_path, "--no-start")
    assert node.wait_exit(60) == EXIT_AUTH, node.output()
    assert not (tmp_path / "identity").exists(), "nothing is stored from a refused join"
    return " ".join(node.output().split())


@pytest.mark.timeout(180)
def test_a_machine_joins_with_a_join_code_and_runs_jobs(head: Scheduler, tmp_path: Path):
    code = join_code(head)
    worker = join(code, "phone-1", tmp_path, "--nthreads", "1", "--memory-limit", "1GiB")
    client = job_client(head.store)
    try:
        with stopping(worker):
            wait_for(lambda: any(w.name == "phone-1" and w.status == "ready" for w in client.workers()), 90,
                     "the joined machine to enroll and be ready")
            job = client.submit("test.record", {"path": str(tmp_path / "runs.log"), "key": "joined"})
            assert client.result(job, timeout=60)["key"] == "joined"
            identity = tmp_path / "identity"
            assert stat.S_IMODE(identity.stat().st_mode) == 0o700
            for name in ("phone-1.key", "phone-1.pem", "token"):
                assert stat.S_IMODE((identity / name).stat().st_mode) == 0o600, name
            tokens = {t.name: t for t in client.store.list_tokens()}
            assert tokens["phone-1"].role == "worker" and tokens["phone-1"].uses_left is None
            assert tokens["join"].uses_left == 0, "the join token's one use is spent"
            # the same code again: used up
            assert "is used up" in refused(code, tmp_path / "again")
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_refusals_say_why(head: Scheduler, tmp_path: Path):
    url, pin, token = read_code(join_code(head, "--uses", "5"))
    rogue_pin = "0" * 64
    assert f"the join code pins {rogue_pin}: refusing" in refused(make_code(url, rogue_pin, token), tmp_path / "pin")

    expiring = join_code(head, "--expires-in", "1s", "--name", "short-lived")
    time.sleep(1.5)
    assert "expired" in refused(expiring, tmp_path / "expired")

    revoked = join_code(head, "--name", "to-revoke")
    token_id = read_code(revoked)[2].split("_")[1]
    gone = cli("--store", head.store, "token", "revoke", token_id, cwd=head.cwd)
    assert gone.returncode == 0, gone.stderr
    assert "was revoked" in refused(revoked, tmp_path / "revoked")

    plain = worker_token(head.store, "plain-worker", head.cwd)
    assert "not a join token" in refused(make_code(url, pin, plain), tmp_path / "plain")


@pytest.mark.timeout(120)
def test_discovery_finds_the_head_and_a_rogue_advertiser_never_gets_the_token(head: Scheduler, tmp_path: Path):
    beacon, fp = advertised(head)
    token = read_code(join_code(head, "--name", "discovered"))[2]
    rogue = RogueHead(tmp_path, fp)  # it copies the real head's fingerprint into its advertisement
    try:
        common = ["--discover", "--token", token, "--discover-timeout", "2", "--beacon", f"127.0.0.1:{beacon}",
                  "--beacon", f"127.0.0.1:{rogue.advertiser.beacon_port}", "--no-start"]
        wrong = join("", "wrong-pin", tmp_path / "wrong", *common, "--fingerprint", "f" * 16)
        assert wrong.wait_exit(60) == EXIT_AUTH, wrong.output()
        assert "no head found has a CA fingerprint starting ffffffffffffffff" in " ".join(wrong.output().split())

        node = join("", "discovered-1", tmp_path, *common, "--fingerprint", fp[:16])
        assert node.wait_exit(60) == 0, node.output()
        output = " ".join(node.output().split())
        assert f"joined the head at {head.api}" in output
        assert (tmp_path / "identity" / "discovered-1.key").exists()

        # mDNS alone (no beacon answers: the broadcast goes to the default port, where nobody listens)
        token = read_code(join_code(head, "--name", "discovered-mdns"))[2]
        by_mdns = join("", "discovered-2", tmp_path / "mdns", "--discover", "--token", token, "--fingerprint",
                       fp[:16], "--mdns-interface", "127.0.0.1", "--discover-timeout", "5", "--no-start")
        assert by_mdns.wait_exit(60) == 0, by_mdns.output()
        assert f"joined the head at {head.api}" in " ".join(by_mdns.output().split())
        # the rogue, if tried at all, was asked for its CA and refused on it: no token, no POST
        assert all(method == "GET" and auth is None for method, _, auth in rogue.requests), rogue.requests
    finally:
        rogue.close()
