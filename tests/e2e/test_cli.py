"""The `clusterai` command as a user runs it: bad input exits 2 with a clear message and stores
nothing; the demo and a submit --wait work end to end against a running cluster."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import wait_for

from clusterai.jobs.store import open_store

SUPPORT = Path(__file__).resolve().parents[1] / "support"


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "COLUMNS": "200"}
    env.pop("CLUSTERAI_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "clusterai.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "store": "sqlite:///.clusterai/clusterai.db",
        "tasks": ["testtasks"],
        "cluster": {"workers": 2, "dashboard": False, "memory_limit": "2GiB", "death_timeout": 5},
    }))
    return tmp_path


def job_count(workdir: Path) -> int:
    store = open_store(workdir / ".clusterai" / "clusterai.db")
    try:
        return sum(store.counts().values())
    finally:
        store.close()


@pytest.mark.parametrize(("args", "message"), [
    (["submit", "no.such.task"], "unknown task 'no.such.task'; known tasks: "),
    (["submit", "primes.count", "--payload", '{"limit": "many"}'], "limit: Input should be a valid integer"),
    (["submit", "primes.count", "--payload", '{"limit": 1}'], "limit: Input should be greater than or equal to 2"),
    (["submit", "primes.count", "--payload", '{"limit": 10, "extra": 1}'], "extra: Extra inputs are not permitted"),
    (["submit", "primes.count", "--payload", "{limit: 10"], "payload is not valid JSON"),
    (["submit", "primes.count", "--payload", "[1, 2]"], "payload must be a JSON object"),
    (["submit", "primes.count", "--payload", '{"limit": 10}', "--priority", "urgent"],
     "invalid priority 'urgent'; allowed: low, normal, high, critical"),
    (["jobs", "list", "--state", "done"], "invalid state 'done'; allowed: pending, queued"),
    (["jobs", "show", "99999"], "no job with id 99999"),
    (["jobs", "cancel", "abc"], "Invalid value"),
])
@pytest.mark.timeout(60)
def test_bad_input_exits_2_and_stores_nothing(workdir, args, message):
    before = job_count(workdir)
    result = run_cli(*args, cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join((result.stderr + result.stdout).split())
    assert job_count(workdir) == before == 0


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("cluster:\n  workers: 0\n", "cluster.workers: Input should be greater than or equal to 1 (got 0)"),
    ("cluster:\n  wokers: 2\n", "cluster.wokers: unknown key"),
    ("coordinator:\n  lease_seconds: soon\n", "coordinator.lease_seconds"),
    ("cluster: [\n", "not valid YAML"),
    ("- just\n- a list\n", "the top level must be a mapping"),
    ("tasks: [no_such_module_xyz]\n", "cannot import task module 'no_such_module_xyz'"),
])
@pytest.mark.timeout(60)
def test_broken_cluster_yaml_is_named_and_refused(tmp_path, yaml_text, message):
    (tmp_path / "cluster.yaml").write_text(yaml_text)
    for args in (["config", "validate"], ["submit", "primes.count", "--payload", '{"limit": 10}']):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in " ".join(result.stderr.split())
    assert not (tmp_path / ".clusterai").exists()


@pytest.mark.timeout(60)
def test_unknown_key_lists_the_allowed_keys(tmp_path):
    (tmp_path / "cluster.yaml").write_text("coordinator:\n  lease: 3\n")
    result = run_cli("config", "validate", cwd=tmp_path)
    assert result.returncode == 2
    assert "allowed keys here: lease_seconds, poison_threshold" in " ".join(result.stderr.split())


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_demo_runs_real_jobs_and_exits(tmp_path):
    result = run_cli("demo", "--exit", "--jobs", "60", cwd=tmp_path, timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    for heading in ("Jobs per state", "Jobs per worker", "throughput", "retries"):
        assert heading in text
    assert "worker 0" in text and "worker 1" in text
    store = open_store(tmp_path / ".clusterai" / "clusterai.db")
    try:
        assert store.counts()["succeeded"] == 60
        assert store.stats(0)["retries"] >= 1  # the demo's flaky jobs show retries at work
    finally:
        store.close()


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_up_then_submit_wait_from_another_process(workdir):
    env = {**os.environ, "PYTHONPATH": str(SUPPORT)}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    up = subprocess.Popen([sys.executable, "-m", "clusterai.cli", "up", "--metrics-port", str(metrics_port)],
                          cwd=workdir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        result = run_cli("submit", "primes.count", "--payload", '{"limit": 1000}', "--wait",
                         "--wait-timeout", "90", cwd=workdir)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"limit": 1000, "primes": 168}

        listed = run_cli("jobs", "list", "--json", cwd=workdir)
        assert [j["state"] for j in json.loads(listed.stdout)] == ["succeeded"]
        wait_for(lambda: "2 workers" in run_cli("workers", "list", cwd=workdir).stdout, 30, "workers")
        status = run_cli("status", "--json", cwd=workdir)
        assert json.loads(status.stdout)["jobs"]["succeeded"] == 1

        failing = run_cli("submit", "test.refuse", "--payload", '{"message": "nope"}', "--wait",
                          cwd=workdir)
        assert failing.returncode == 1 and "nope" in failing.stderr
        dead = run_cli("dlq", "list", "--json", cwd=workdir)
        assert [j["task"] for j in json.loads(dead.stdout)] == ["test.refuse"]
        requeued = run_cli("dlq", "requeue", "--all", cwd=workdir)
        assert requeued.returncode == 0 and "requeued 1 jobs" in requeued.stdout

        drained = run_cli("workers", "drain", "0", cwd=workdir)
        assert drained.returncode == 0 and "worker 0: draining" in drained.stdout
        listed = json.loads(run_cli("workers", "list", "--json", cwd=workdir).stdout)
        assert {w["name"]: w["status"] for w in listed}["0"] == "draining"
        assert "ready again" in run_cli("workers", "undrain", "0", cwd=workdir).stdout
        unknown = run_cli("workers", "drain", "nosuch", cwd=workdir)
        assert unknown.returncode == 2 and "no live worker named 'nosuch'" in unknown.stderr

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert "cluster_active_workers 2.0" in metrics
        assert 'cluster_total_tasks_total{outcome="succeeded"}' in metrics
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
