"""The `clusterai` command as a user runs it: bad input exits 2 with a clear message and stores
nothing; the demo and a submit --wait work end to end against a running cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import start_up, stop_up, wait_for

from clusterai.store.open import open_store

SUPPORT = Path(__file__).resolve().parents[1] / "support"


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "COLUMNS": "200"}
    env.pop("CLUSTERAI_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "clusterai.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "store": "sqlite:///.clusterai/clusterai.db",
        "tasks": ["testtasks"],
        "cluster": {"workers": 2, "dashboard": False, "memory_limit": "2GiB", "death_timeout": 5},
        "api": {"port": 0},
        "media": {"sources": ["clips"]},  # what the workers (in workdir) may open
    }))
    return tmp_path


def job_count(workdir: Path) -> int:
    store = open_store(workdir / ".clusterai" / "clusterai.db")
    try:
        return sum(store.job_counts().values())
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
    (["demo", "--exit", "--autoscale", "four"], "--autoscale takes MIN:MAX, e.g. 1:4; got 'four'"),
    (["demo", "--exit", "--autoscale", "4:1"], "autoscale.profiles.default: min (4) is greater than max (1)"),
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
    # the video part: the pipeline's results beside the ground truth, a camera count, signed lines
    for heading in ("counted crossings beside the ground truth", "Camera count: street-camera",
                    "lines verified (HMAC-SHA256, chained)"):
        assert heading in text
    assert "[red]off" not in text and "5 of 5" in text
    # the LLM part: a real embedding model behind the gateway, the summaries embedded as jobs
    assert "Semantic search over the clip summaries" in text and "5 llm.embed jobs, one live request" in text
    # the training part: a sweep whose best model lands in the registry and scores on held-out digits
    assert "Sweep demo-digits: 12 trials of train.sgd_digits" in text and "Model registry: digits" in text
    store = open_store(tmp_path / ".clusterai" / "clusterai.db")
    try:
        (run,) = store.list_runs()
        assert (run.name, run.state) == ("video-analysis", "succeeded")
        stages = {stage for stage, *_ in store.run_jobs(run.id)}
        assert stages == {"scan", "count", "summarize", "logline", "report"}
        jobs = store.list_jobs(limit=1000)
        assert sum(j.task in ("primes.count", "image.filter", "hash.chain", "demo.flaky") for j in jobs) == 60
        assert sum(j.task == "llm.embed" for j in jobs) == 5
        (sweep,) = store.list_sweeps()
        assert sweep.state == "succeeded" and len(store.trials(sweep.id)) == 12
        version = store.get_model_version("digits", "staging")
        assert version.sweep_id == sweep.id and version.metrics["accuracy"] > 0.9
        assert all(j.state.value == "succeeded" for j in jobs)  # a pruned trial's job succeeded too
        assert store.stats(0)["retries"] >= 1  # the demo's flaky jobs show retries at work
        assert {s["camera"] for s in store.count_series()} >= {"street-camera"}
    finally:
        store.close()
    verify = run_cli("logline", "verify", ".clusterai/loglines/video.log", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_pipeline_run_over_a_folder_then_status_counts_and_reuse(workdir):
    from clusterai.workloads.synth import make_clip, make_corrupt

    clips = workdir / "clips"
    truths = [make_clip(clips / f"c{i}.avi", seconds=4, crossings=i + 1, seed=i) for i in range(3)]
    make_corrupt(clips / "broken.avi")
    up, url = start_up(workdir)
    try:
        # both runs over the API, as one owner (the admin token): stage jobs are reused within an owner
        first = run_cli("--url", url, "pipeline", "run", "video-analysis", "clips", "--json", cwd=workdir,
                        timeout=180)
        assert first.returncode == 1, first.stderr  # one video is broken: the run says so
        status = json.loads(first.stdout)
        assert status["state"] == "failed"
        report = status["outputs"][0]["result"]
        assert report["videos"] == 4 and report["analysed"] == 3
        assert report["crossings"] == sum(t.crossings for t in truths)
        assert report["failed"] == [str((clips / "broken.avi").resolve())]
        assert "broken.avi' cannot be read: not found, not a readable video file" in first.stderr

        counts = run_cli("counts", "--json", cwd=workdir)
        series = {Path(s["camera"]).name: s["total"] for s in json.loads(counts.stdout)["series"]}
        assert series == {f"c{i}.avi": t.crossings for i, t in enumerate(truths)}

        shown = run_cli("--url", url, "pipeline", "status", str(status["id"]), cwd=workdir)
        assert shown.returncode == 0 and "summarize" in shown.stdout and "blocked 1" in shown.stdout

        (clips / "broken.avi").unlink()  # fix the input: the rest is reused, nothing runs again
        again = run_cli("--url", url, "pipeline", "run", "video-analysis", "clips", "--json", cwd=workdir,
                        timeout=120)
        assert again.returncode == 0, again.stderr
        rerun = json.loads(again.stdout)
        assert [s["reused"] for s in rerun["stages"]] == [3, 3, 3, 3, 0]
        assert rerun["outputs"][0]["result"]["failed"] == []

        listed = run_cli("pipeline", "list", cwd=workdir)
        assert "video-analysis" in listed.stdout and "succeeded" in listed.stdout
        for args, message in [(["pipeline", "run", "nope"], "no pipeline named 'nope'"),
                              (["pipeline", "run", "video-analysis", "missing-folder"], "no such file or folder"),
                              (["pipeline", "run", "video-analysis", "cluster.yaml"],
                               "outside the folders media.sources allows (clips)"),
                              (["pipeline", "status", "999"], "no pipeline run with id 999"),
                              (["pipeline", "run", "video-analysis", "--input", "[1]"], "must be a JSON object")]:
            bad = run_cli(*args, cwd=workdir)
            assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
    finally:
        stop_up(up)


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_up_then_every_command_over_the_api(workdir):
    up, url = start_up(workdir)
    try:
        token_file = workdir / ".clusterai" / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        remote = ("--url", url)  # the admin token comes from the file `up` wrote

        second = run_cli("up", "--api-port", "0", cwd=workdir, timeout=60)  # a second coordinator on the store
        assert second.returncode == 1
        assert "another clusterai coordinator is active on the store" in second.stderr

        result = run_cli(*remote, "submit", "primes.count", "--payload", '{"limit": 1000}', "--wait",
                         "--wait-timeout", "90", cwd=workdir)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"limit": 1000, "primes": 168}

        listed = run_cli(*remote, "jobs", "list", "--json", cwd=workdir)
        assert [j["state"] for j in json.loads(listed.stdout)] == ["succeeded"]
        local = run_cli("jobs", "list", "--json", cwd=workdir)  # straight on the store, same answer
        assert [j["id"] for j in json.loads(local.stdout)] == [j["id"] for j in json.loads(listed.stdout)]
        wait_for(lambda: "2 workers" in run_cli(*remote, "workers", "list", cwd=workdir).stdout, 30, "workers")
        status = json.loads(run_cli(*remote, "status", "--json", cwd=workdir).stdout)
        assert status["jobs"]["succeeded"] == 1 and status["workers"]["total"] == 2

        failing = run_cli(*remote, "submit", "test.refuse", "--payload", '{"message": "nope"}', "--wait",
                          cwd=workdir)
        assert failing.returncode == 1 and "nope" in failing.stderr
        dead = run_cli(*remote, "dlq", "list", "--json", cwd=workdir)
        assert [j["task"] for j in json.loads(dead.stdout)] == ["test.refuse"]
        requeued = run_cli(*remote, "dlq", "requeue", "--all", cwd=workdir)
        assert requeued.returncode == 0 and "requeued 1 jobs" in requeued.stdout

        drained = run_cli(*remote, "workers", "drain", "0", cwd=workdir)
        assert drained.returncode == 0 and "worker 0: draining" in drained.stdout
        listed = json.loads(run_cli(*remote, "workers", "list", "--json", cwd=workdir).stdout)
        assert {w["name"]: w["status"] for w in listed}["0"] == "draining"
        assert "ready again" in run_cli(*remote, "workers", "undrain", "0", cwd=workdir).stdout
        unknown = run_cli(*remote, "workers", "drain", "nosuch", cwd=workdir)
        assert unknown.returncode == 2 and "no worker named 'nosuch'" in unknown.stderr

        made = run_cli(*remote, "token", "create", "reader", "--role", "viewer", cwd=workdir)
        viewer = made.stdout.strip()
        assert made.returncode == 0 and viewer.startswith("cai_")
        refused = run_cli("--url", url, "--token", viewer, "submit", "primes.count", cwd=workdir)
        assert refused.returncode == 4 and "may not" in refused.stderr
        request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {viewer}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            metrics = response.read().decode()
        assert "cluster_active_workers 2.0" in metrics
        assert 'cluster_total_tasks_total{outcome="succeeded"}' in metrics
        token_id = json.loads(run_cli(*remote, "token", "list", "--json", cwd=workdir).stdout)[-1]["id"]
        assert run_cli(*remote, "token", "revoke", token_id, cwd=workdir).returncode == 0
        gone = run_cli("--url", url, "--token", viewer, "jobs", "list", cwd=workdir)
        assert gone.returncode == 4 and "revoked" in gone.stderr
        audit = json.loads(run_cli(*remote, "audit", "--json", cwd=workdir).stdout)
        assert {"POST /api/v1/tokens", "POST /api/v1/dlq/requeue"} <= {e["action"] for e in audit}
    finally:
        stop_up(up)
