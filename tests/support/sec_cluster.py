"""Helpers of the trust-boundary tests (tests/security/test_sec_files.py, test_sec_logline.py,
test_sec_media.py): a real cluster of worker processes and the REST API over real HTTP on one store,
attacked with a submitter's token; and an HTTP server that records every request it gets.

The workers run in a folder of their own with a HOME of their own and the usual umask (022), so an
attack that got through would write there (and show), never in the developer's home or checkout.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import Api, running_api
from waiting import wait_for

import clusterai

TERMINAL = ("succeeded", "dead", "cancelled")


@dataclass
class SecCluster:
    api: Api
    client: clusterai.Client
    root: Path  # everything this cluster may write or read lies under it
    work: Path  # the workers' working directory
    home: Path  # the workers' HOME
    media: Path  # the folder media.sources allows
    outside: Path  # a folder no rule allows
    loglines: Path  # logline.dir
    artifacts: Path
    key_file: Path
    config_file: Path  # a cluster.yaml for the CLI: this store, media.sources and logline.dir

    def http(self, who: str = "submitter") -> httpx.Client:
        return self.api.client(who, timeout=30.0)

    def submit(self, task: str, payload: dict[str, Any], who: str = "submitter") -> httpx.Response:
        return self.http(who).post("/api/v1/jobs", json={"task": task, "payload": payload})

    def finished(self, job_id: int, who: str = "submitter", timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        c = self.http(who)
        while True:
            r = c.get(f"/api/v1/jobs/{job_id}", params={"wait": 5})
            assert r.status_code == 200, r.text
            job: dict[str, Any] = r.json()
            if job["state"] in TERMINAL or time.monotonic() > deadline:
                assert job["state"] in TERMINAL, f"job {job_id} still {job['state']} after {timeout} s"
                return job

    def run(self, task: str, payload: dict[str, Any], who: str = "submitter") -> dict[str, Any]:
        """Submit as `who` over HTTP and wait for the job to end; its JSON."""
        r = self.submit(task, payload, who)
        assert r.status_code == 201, r.text
        return self.finished(r.json()["id"], who)

    def tree(self) -> dict[str, tuple[int, int]]:
        """Every file under root but the store's (path -> size, mtime): what an attack must not change."""
        return {str(p.relative_to(self.root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
                for p in sorted(self.root.rglob("*")) if not p.is_dir() and "api" not in p.relative_to(self.root).parts}


@contextlib.contextmanager
def sec_cluster(root: Path, *, sources: list[str] | None = None) -> Iterator[SecCluster]:
    """The cluster and its API under `root`; media.sources is root/media, or `sources`."""
    folders = {name: root / name for name in ("work", "home", "media", "outside", "loglines", "artifacts")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    key_file = root / "keys" / "logline.key"
    settings = {
        "cluster": {"workers": 2, "threads_per_worker": 1, "dashboard": False, "memory_limit": "2GiB",
                    "death_timeout": 10},
        "coordinator": {"lease_seconds": 6},
        # attacks fail on purpose, many in a row: no worker's breaker should take it out of rotation
        "placement": {"breaker": {"failures": 10_000, "cooldown": 1}},
        "media": {"sources": sources if sources is not None else [str(folders["media"])]},
        "logline": {"dir": str(folders["loglines"]), "key_file": str(key_file)},
    }
    umask = os.umask(0o022)
    try:
        with pytest.MonkeyPatch.context() as mp, running_api(root / "api", settings) as api:
            # the worker processes start after these are set, and inherit them
            mp.chdir(folders["work"])
            mp.setenv("HOME", str(folders["home"]))
            mp.setenv("CLUSTERAI_ARTIFACTS", str(folders["artifacts"]))
            mp.setenv("CLUSTERAI_LOGLINE_KEY", str(key_file))
            config_file = root / "cluster.yaml"
            import yaml

            config_file.write_text(yaml.safe_dump({"store": api.config.store, **settings}))
            client = clusterai.connect(api.config)
            try:
                wait_for(lambda: sum(1 for w in client.workers() if w.status == "ready" and w.pid) >= 2, 60,
                           "the workers to join")
                yield SecCluster(api, client, root, config_file=config_file, key_file=key_file, **folders)
            finally:
                client.close()
    finally:
        os.umask(umask)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- an HTTP server that says who called ------------------------------------------------------------

@dataclass
class Recorder:
    """A local HTTP server standing for an internal service: it serves `files` and records each request;
    a path in `redirects` answers 302 to that URL instead."""

    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""


@contextlib.contextmanager
def recording_server(recorder: Recorder | None = None) -> Iterator[Recorder]:
    rec = recorder or Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            rec.requests.append(self.path)
            if self.path in rec.redirects:
                self.send_response(302)
                self.send_header("Location", rec.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = rec.files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            try:
                self.wfile.write(body or b"")
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
