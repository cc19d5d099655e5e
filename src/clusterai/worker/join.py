"""`clusterai join CODE`: a new machine joins with one command and no file copying.

The join code (`clusterai join-code` on the head) carries the head's API URL, the SHA-256
fingerprint of the cluster's CA and a join token. This side
1. fetches the CA from the head and refuses it unless its fingerprint is the one in the code
   (a spoofed address or a rogue head has another CA: nothing is sent to it),
2. asks for its identity over TLS verified by that CA, with the join token (one use spent),
3. stores the CA, its certificate, key and own enrollment token, private to its user (0600 in a
   0700 folder), and starts `clusterai worker` with them.
Standard library only: it runs on a light worker (a phone under Termux, an ARM board).
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import socket
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from clusterai.errors import EXIT_AUTH, EXIT_BAD_INPUT, EXIT_UNAVAILABLE
from clusterai.worker.discovery import BEACON_PORT, Advertised, discover
from clusterai.worker.tls import CA_CERT, fingerprint

CODE_PREFIX = "caijoin1."
TOKEN_FILE = "token"


class JoinFailed(Exception):
    def __init__(self, exit_code: int, message: str):
        self.exit_code = exit_code
        self.before_token = False  # True: it failed before the token was sent anywhere
        super().__init__(message)


def make_code(url: str, ca_fingerprint: str, token: str) -> str:
    body = json.dumps({"u": url.rstrip("/"), "f": ca_fingerprint, "t": token}, separators=(",", ":"))
    return CODE_PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def read_code(code: str) -> tuple[str, str, str]:
    """(url, CA fingerprint, token) from a join code."""
    code = code.strip()
    if not code.startswith(CODE_PREFIX):
        raise JoinFailed(EXIT_BAD_INPUT, f"not a join code (it starts with {CODE_PREFIX!r}; make one on the head "
                                         "with `clusterai join-code`)")
    raw = code[len(CODE_PREFIX):]
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        url, pin, token = str(data["u"]), str(data["f"]).lower(), str(data["t"])
    except (ValueError, KeyError, TypeError):
        raise JoinFailed(EXIT_BAD_INPUT, "the join code is damaged (copy it again, whole)") from None
    return url, pin, token


def _first_identity(candidates: list[tuple[str, str, str]], node: str, tried: set[str] | None = None
                    ) -> dict[str, Any]:
    """Try each candidate head in turn: one whose CA does not match its pin, or that cannot be
    reached, is passed over (it never saw the token); the last refusal is what the user sees."""
    failure: JoinFailed | None = None
    for url, pin, token in candidates:
        if tried is not None:
            tried.add(url)
        try:
            identity = fetch_identity(url, pin, token, node)
        except JoinFailed as exc:
            if not exc.before_token:
                raise
            failure = exc
            if len(candidates) > 1:
                print(f"passing over {url}: {exc}", file=sys.stderr, flush=True)
            continue
        print(f"joined the head at {url} (CA {pin[:16]}...)", flush=True)
        return identity
    assert failure is not None
    raise failure


def fingerprint_prefix(text: str) -> str:
    """The operator's --fingerprint, normalised: at least 16 hex digits, colons allowed."""
    prefix = text.lower().replace(":", "")
    if len(prefix) < 16 or any(c not in "0123456789abcdef" for c in prefix):
        raise JoinFailed(EXIT_BAD_INPUT, "--fingerprint: at least 16 hex digits of the head's CA fingerprint "
                                         "(`clusterai join-code --fingerprint` on the head prints it)")
    return prefix


def choose(heads: list[Advertised], prefix: str) -> list[Advertised]:
    """The discovered heads whose CA fingerprint starts with `prefix` (from fingerprint_prefix); all
    of one fingerprint (a spoofed advertisement may copy it: the CA check then tells them apart)."""
    if not heads:
        raise JoinFailed(EXIT_UNAVAILABLE, "no head answered (mDNS and the UDP beacon); give its join code instead")
    matching = [h for h in heads if h.fingerprint.startswith(prefix)]
    listed = "; ".join(f"{h.api} (CA {h.fingerprint[:16]}..., via {h.via})" for h in heads)
    if not matching:
        raise JoinFailed(EXIT_AUTH, f"no head found has a CA fingerprint starting {prefix}: refusing the others "
                                    f"(found: {listed})")
    if len({h.fingerprint for h in matching}) > 1:
        raise JoinFailed(EXIT_BAD_INPUT, f"several heads match {prefix}: give more of the fingerprint; found: {listed}")
    return matching


def _request(url: str, context: ssl.SSLContext | None, *, body: dict[str, Any] | None = None,
             token: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            why = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            why = exc.reason
        code = EXIT_AUTH if exc.code in (401, 403) else EXIT_BAD_INPUT if exc.code in (404, 422) else EXIT_UNAVAILABLE
        raise JoinFailed(code, f"the head refused ({exc.code}): {why}") from None
    except (TimeoutError, urllib.error.URLError, OSError) as exc:  # ssl.SSLError is an OSError
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, ssl.SSLError):
            raise JoinFailed(EXIT_AUTH, f"TLS with the head failed ({reason.reason or reason}): it does not hold a "
                                        "certificate from the pinned CA") from None
        raise JoinFailed(EXIT_UNAVAILABLE, f"cannot reach the head at {url}: {reason}") from None


def fetch_identity(url: str, pin: str, token: str, node: str) -> dict[str, Any]:
    """Steps 1 and 2: the CA checked against `pin`, then the identity over TLS that CA verifies."""
    if not url.startswith("https://"):
        raise JoinFailed(EXIT_BAD_INPUT, f"the head's API must be HTTPS to join over it, got {url}")
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # only to read the CA, which is then checked against the pin
    try:
        ca = _request(f"{url}/api/v1/join/ca", unverified).get("ca")
        if not isinstance(ca, str):
            raise JoinFailed(EXIT_AUTH, "the head sent no CA certificate")
        try:
            seen = fingerprint(ca)
        except ValueError:
            raise JoinFailed(EXIT_AUTH, "the head sent a CA that is not a PEM certificate") from None
        if not hmac.compare_digest(seen, pin):
            raise JoinFailed(EXIT_AUTH, f"the head's CA has fingerprint {seen}, the join code pins {pin}: refusing "
                                        "to join (a different cluster, or someone posing as the head)")
    except JoinFailed as exc:
        exc.before_token = True  # nothing secret was sent: another candidate may be tried
        raise
    pinned = ssl.create_default_context(cadata=ca)
    identity = _request(f"{url}/api/v1/join", pinned, body={"node": node}, token=token)
    for key in ("ca", "cert", "key", "token", "scheduler", "node"):
        if not isinstance(identity.get(key), str):
            raise JoinFailed(EXIT_UNAVAILABLE, f"the head's answer lacks {key!r}")
    if identity["ca"] != ca:
        raise JoinFailed(EXIT_AUTH, "the head answered with another CA than the pinned one")
    return identity


def _private_write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # an existing file keeps its mode through O_CREAT
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def store_identity(directory: Path, identity: dict[str, Any]) -> None:
    """Step 3: CA (0644), certificate, key and token (0600) in `directory` (0700)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    node = identity["node"]
    _private_write(directory / CA_CERT, identity["ca"], 0o644)
    _private_write(directory / f"{node}.pem", identity["cert"], 0o600)
    _private_write(directory / f"{node}.key", identity["key"], 0o600)
    _private_write(directory / TOKEN_FILE, identity["token"] + "\n", 0o600)
    _private_write(directory / "head", identity["scheduler"] + "\n", 0o600)


def join_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clusterai join", description="Join a cluster with a join code: fetch this "
                                "machine's identity from the head (pinned to its CA) and start as a worker.")
    p.add_argument("code", nargs="?", help="the join code from `clusterai join-code` on the head")
    p.add_argument("--discover", action="store_true", help="find the head on this network (mDNS, then a UDP "
                   "beacon) instead of a join code; needs --token and --fingerprint")
    p.add_argument("--token", help="with --discover: the join token (or $CLUSTERAI_JOIN_TOKEN)")
    p.add_argument("--fingerprint", help="with --discover: the head's CA fingerprint, at least its first 16 hex "
                   "digits (`clusterai join-code --fingerprint` on the head)")
    p.add_argument("--beacon", action="append", default=[], metavar="HOST:PORT",
                   help="with --discover: ask this address too (repeatable; default: broadcast on port "
                        f"{BEACON_PORT})")
    p.add_argument("--discover-timeout", type=float, default=3.0, help="seconds to listen for heads (it stops "
                   "at the first with the fingerprint)")
    p.add_argument("--mdns-interface", metavar="ADDRESS", help="with --discover: listen for mDNS on this "
                   "interface address only (default: all)")
    p.add_argument("--name", default=socket.gethostname().split(".")[0], help="this machine's name (default: host)")
    p.add_argument("--dir", type=Path, default=Path.home() / ".clusterai" / "identity",
                   help="where the identity is kept (default: ~/.clusterai/identity)")
    p.add_argument("--scheduler", help="the head's Dask address, when it differs from what the head reports")
    p.add_argument("--no-start", action="store_true", help="store the identity, do not start the worker")
    return p


def _where_to_join(args: argparse.Namespace, *, patient: bool = False,
                   skip: frozenset[str] = frozenset()) -> list[tuple[str, str, str]]:
    """(API URL, CA fingerprint, join token) to try, in order."""
    if not args.discover:
        if args.code is None:
            raise JoinFailed(EXIT_BAD_INPUT, "give a join code (clusterai join-code on the head), or --discover")
        return [read_code(args.code)]
    token = args.token or os.environ.get("CLUSTERAI_JOIN_TOKEN")
    if not token or not args.fingerprint:
        raise JoinFailed(EXIT_BAD_INPUT, "--discover needs --token (a join token) and --fingerprint (the head's CA)")
    beacons = []
    for target in args.beacon:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise JoinFailed(EXIT_BAD_INPUT, f"--beacon takes HOST:PORT, got {target!r}")
        beacons.append((host, int(port)))
    prefix = fingerprint_prefix(args.fingerprint)
    interfaces = [args.mdns_interface] if args.mdns_interface else None
    found = discover(args.discover_timeout, beacons=beacons, interfaces=interfaces,
                     enough=None if patient else lambda head: head.fingerprint.startswith(prefix))
    candidates = [head for head in choose(found, prefix) if head.api not in skip]
    if not candidates:
        raise JoinFailed(EXIT_AUTH, "every head found with that fingerprint failed the CA check: refusing to join")
    return [(head.api, head.fingerprint, token) for head in candidates]


def join_main(argv: list[str]) -> int:
    args, worker_args = join_parser().parse_known_args(argv)  # the rest goes to `clusterai worker`
    try:
        tried: set[str] = set()
        try:
            identity = _first_identity(_where_to_join(args), args.name, tried)
        except JoinFailed as exc:
            if not (args.discover and exc.before_token):
                raise
            # the first head to answer was not it (a spoofed advertisement?): listen for the whole time
            print("looking for the other heads that advertise that fingerprint", file=sys.stderr, flush=True)
            identity = _first_identity(_where_to_join(args, patient=True, skip=frozenset(tried)), args.name)
        store_identity(args.dir, identity)
    except JoinFailed as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    scheduler = args.scheduler or identity["scheduler"]
    print(f"joined as {identity['node']}: identity in {args.dir}; starting the worker on {scheduler}", flush=True)
    if args.no_start:
        return 0
    from clusterai.worker.cli import worker_main

    return worker_main([scheduler, "--tls-dir", str(args.dir), "--tls-node", identity["node"],
                        "--token-file", str(args.dir / TOKEN_FILE), "--name", identity["node"], *worker_args])
