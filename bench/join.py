"""Joining, measured on loopback (issue: machines that join by themselves):

- join → first job: from starting `clusterai join CODE` to the first job finishing on the new
  worker (a job submitted before the join, so it waits for the worker), over `--repeats` machines;
- discovery: `clusterai join --discover` until it has found the head (mDNS on loopback, and the
  UDP beacon on its own), from the process start, so Python's start-up is in it;
- idle memory after joining: RSS of the worker process alone, and of the whole `clusterai join`
  tree (the supervising process with its nanny, and the worker), 10 s after the join.

A head (`clusterai scheduler` with TLS, its CA key and an HTTPS API) on a SQLite store in a temporary
folder; every node is a real process. Run: PYTHONPATH=. .venv/bin/python -m bench.join
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.common import RESULTS, log, wait_until, write_json
from clusterai.core.model import JobSpec, State
from clusterai.store.open import open_store

LIGHT = Path(__file__).resolve().parents[1] / "tests" / "support" / "light"  # hides the heavy libraries
ENV = {**os.environ, "COLUMNS": "400", "PYTHONUNBUFFERED": "1"}


def clusterai(*args: str, cwd: Path, log_to: Path, pythonpath: str | None = None) -> subprocess.Popen[bytes]:
    out = log_to.open("ab")
    env = {**ENV, "PYTHONPATH": pythonpath} if pythonpath else ENV
    module = "clusterai.cli.entry" if pythonpath else "clusterai.cli.main"  # the light entry point for a light node
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env)


def run(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "clusterai.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env=ENV)
    if done.returncode != 0:
        raise SystemExit(f"clusterai {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


def wait_line(path: Path, pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text(errors="replace")) if path.exists() else None
        if found:
            return found
        time.sleep(0.02)
    raise SystemExit(f"{pattern!r} not in {path} within {timeout} s:\n{path.read_text(errors='replace')[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(the Dask worker process's RSS, the whole tree's), in MiB."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    rss = {p.pid: p.memory_info().rss / 2**20 for p in procs}
    leaves = [p for p in procs if not p.children()]
    worker = max((rss[p.pid] for p in leaves if p.pid != pid), default=rss[pid])
    return worker, sum(rss.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, Any] = {"repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="bench-join-") as tmp:
        cwd = Path(tmp)
        run("certs", "create", "--dir", "certs", "--node", "head", cwd=cwd)
        (cwd / "cluster.yaml").write_text(yaml.safe_dump({
            "store": f"sqlite:///{cwd / 'store.db'}",
            "api": {"tls_cert": "certs/head.pem", "tls_key": "certs/head.key", "port": 0}}))
        head_log = cwd / "head.log"
        head = clusterai("scheduler", "--port", "0", "--tls-dir", "certs", "--advertise", "--beacon-port", "0",
                         cwd=cwd, log_to=head_log)
        try:
            api = wait_line(head_log, r"REST API: (https://\S+)", 90).group(1)
            beacon, fingerprint = wait_line(head_log, r"UDP beacon on port (\d+)\); CA fingerprint ([0-9a-f]{64})",
                                            10).groups()
            wait_line(head_log, "clusterai is up", 30)
            store = open_store(f"sqlite:///{cwd / 'store.db'}")
            join_to_first_job, memory = [], []
            for i in range(args.repeats):
                code = run("join-code", "--url", api, "--tls-dir", "certs", "--name", f"bench-{i}",
                           cwd=cwd).strip().splitlines()[-1]
                (job,) = store.submit_many([JobSpec(task="primes.count", payload={"limit": 100},
                                                    labels={"machine": f"m{i}"})], time.time())
                node = cwd / f"node-{i}"
                node.mkdir()
                started = time.monotonic()
                joined = clusterai("join", code, "--name", f"machine-{i}", "--dir", str(node / "identity"),
                                   "--label", f"machine=m{i}", "--nthreads", "1", cwd=node, log_to=node / "join.log")
                try:
                    while store.get(job.id, attempts=False).state is not State.SUCCEEDED:
                        if time.monotonic() - started > 120 or joined.poll() is not None:
                            raise SystemExit(f"machine {i} did not run its job:\n{(node / 'join.log').read_text()}")
                        time.sleep(0.02)
                    took = time.monotonic() - started
                    join_to_first_job.append(took)
                    log(f"machine {i}: join -> first job {took:.2f} s")
                    time.sleep(10)
                    memory.append(tree_rss_mb(joined.pid))
                finally:
                    stop(joined)
            # a light install (Dask, PyYAML, psutil; the server, video and llm extras cannot be imported)
            light_code = run("join-code", "--url", api, "--tls-dir", "certs", "--name", "bench-light",
                             cwd=cwd).strip().splitlines()[-1]
            node = cwd / "light"
            node.mkdir()
            light = clusterai("join", light_code, "--name", "light-machine", "--dir", str(node / "identity"),
                              "--nthreads", "1", cwd=node, log_to=node / "join.log",
                              pythonpath=str(LIGHT))
            try:
                wait_line(node / "join.log", "joined tls://", 90)
                wait_until(lambda: any(w.name == "light-machine" and w.status == "ready" for w in store.list_workers()),
                           60, "the light machine to be ready")
                time.sleep(10)
                light_worker, light_tree = tree_rss_mb(light.pid)
            finally:
                stop(light)
            results["idle_rss_mb_light_install"] = {"worker_process": light_worker, "whole_tree": light_tree}
            log(f"light install: worker process {light_worker:.0f} MiB, whole tree {light_tree:.0f} MiB")
            results["join_to_first_job_s"] = {"median": statistics.median(join_to_first_job),
                                              "max": max(join_to_first_job), "all": join_to_first_job}
            results["idle_rss_mb"] = {"worker_process_median": statistics.median(m[0] for m in memory),
                                      "whole_tree_median": statistics.median(m[1] for m in memory)}
            token = run("token", "create", "discovery", "--role", "worker", "--uses", "10",
                        cwd=cwd).strip().splitlines()[0]
            for label, extra in (("mdns", []), ("beacon", ["--beacon", f"127.0.0.1:{beacon}"])):
                times = []
                for i in range(args.repeats):
                    node = cwd / f"disc-{label}-{i}"
                    node.mkdir()
                    started = time.monotonic()
                    found = clusterai("join", "--discover", "--token", token, "--fingerprint", fingerprint[:16],
                                      "--name", f"disc-{label}-{i}", "--dir", str(node / "identity"), "--no-start",
                                      "--discover-timeout", "5", *extra, cwd=node, log_to=node / "join.log")
                    wait_line(node / "join.log", "joined the head at", 30)
                    times.append(time.monotonic() - started)
                    found.wait(30)
                results[f"discovery_{label}_s"] = {"median": statistics.median(times), "max": max(times),
                                                   "all": times}
                log(f"discovery ({label}): median {statistics.median(times):.2f} s")
            store.close()
        finally:
            stop(head)
    write_json(RESULTS / "join.json", results)
    print(yaml.safe_dump(results, sort_keys=False))


if __name__ == "__main__":
    main()
