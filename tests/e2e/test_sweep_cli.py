"""`clusterai sweep` and `clusterai registry` end to end: a sweep defined in cluster.yaml run against a
running head, its best model listed, aliased and downloaded; bad definitions exit 2 with a message
that names the problem, and store nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from conftest import start_coordinator, stop_coordinator
from test_cli import run_cli

from clusterai.store.open import open_store


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "store": f"sqlite:///{tmp_path / '.clusterai' / 'clusterai.db'}",  # the head runs elsewhere
        "tasks": ["testtasks"],
        "cluster": {"workers": 2, "threads_per_worker": 1, "dashboard": False, "memory_limit": "2GiB",
                    "death_timeout": 5},
        "api": {"port": 0},
        "sweeps": {"digits": {"objective": "train.sgd_digits", "trials": 4, "metric": "accuracy",
                              "sampler": {"kind": "random", "seed": 1},
                              "space": {"alpha": {"loguniform": [1e-5, 1e-2]}, "epochs": 3},
                              "register": {"name": "digits", "alias": "staging"}}},
    }))
    return tmp_path


def _sweeps(workdir: Path) -> int:
    store = open_store(workdir / ".clusterai" / "clusterai.db")
    try:
        return len(store.list_sweeps())
    finally:
        store.close()


BAD = [
    (["-o", "no.such.task", "-s", "{x: 1}", "-n", "2"], "objective: no task 'no.such.task'"),
    (["-o", "train.sgd_digits", "-s", "{alpha: {loguniform: [0, 1]}}", "-n", "2"], "alpha"),
    (["-o", "train.sgd_digits", "-s", "{alpha: {uniform: [0.5, 5]}}", "-n", "2"], "alpha"),
    (["-o", "train.sgd_digits", "-s", "{wings: [1, 2]}", "-n", "2"], "wings"),
    (["-o", "train.sgd_digits", "-s", "{alpha: [0.1, 0.2]}", "-n", "5", "--sampler", "grid"],
     "the grid has only 2 points"),
    (["-o", "train.sgd_digits", "-s", "{alpha: [0.1", "-n", "2"], "--space: not valid JSON or YAML"),
    (["-o", "train.sgd_digits", "-s", "{alpha: [0.1]}", "-n", "2", "--pruner", "sometimes"], "pruner.kind"),
    (["nosuchsweep"], "no sweep named 'nosuchsweep' in cluster.yaml; known: digits"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[b[1][:30] for b in BAD])
def test_bad_sweeps_exit_2_and_store_nothing(workdir, args, message):
    result = run_cli("sweep", "run", "--no-wait", *args, cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join(result.stderr.split())
    assert _sweeps(workdir) == 0


def test_a_bad_sweep_in_cluster_yaml_is_refused_with_its_name(tmp_path):
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "sweeps": {"broken": {"objective": "train.sgd_digits", "space": {"alpha": {"uniform": [1, 0]}},
                              "trials": 2}}}))
    result = run_cli("sweep", "list", cwd=tmp_path)
    assert result.returncode == 2
    assert "sweep broken" in result.stderr and "alpha" in result.stderr


def test_registry_refusals(workdir):
    missing = run_cli("registry", "show", "nomodel", "1", cwd=workdir)
    assert missing.returncode != 0 and "nomodel" in missing.stderr
    both = run_cli("registry", "alias", "digits", "production", "1", "--remove", cwd=workdir)
    assert both.returncode == 2 and "--remove" in both.stderr
    numeric = run_cli("registry", "alias", "digits", "7", "1", cwd=workdir)
    assert numeric.returncode == 2 and "would read as a version" in numeric.stderr


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_sweep_from_cluster_yaml_then_the_registry(workdir, monkeypatch):
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS", (workdir / "artifacts").as_uri())
    head = start_coordinator(workdir / "cluster.yaml", workdir / "head.log")
    try:
        result = run_cli("--config", str(workdir / "cluster.yaml"), "sweep", "run", "digits", "--json",
                         cwd=workdir, timeout=200)
        assert result.returncode == 0, result.stdout + result.stderr + (workdir / "head.log").read_text()[-3000:]
        status = json.loads(result.stdout)
        assert status["state"] == "succeeded" and status["counts"]["done"] == 4
        best = status["best"]

        shown = run_cli("sweep", "best", str(status["id"]), cwd=workdir)
        assert shown.returncode == 0 and f"best trial {best['number']}" in shown.stdout

        listed = run_cli("registry", "list", "--json", cwd=workdir)
        (model,) = json.loads(listed.stdout)
        assert model["name"] == "digits" and model["aliases"] == {"staging": 1}

        aliased = run_cli("registry", "alias", "digits", "production", "staging", cwd=workdir)
        assert aliased.returncode == 0 and "production -> v1" in aliased.stdout
        version = json.loads(run_cli("registry", "show", "digits", "production", "--json", cwd=workdir).stdout)
        assert version["params"] == best["params"] and version["sweep_id"] == status["id"]

        target = workdir / "digits.bin"
        fetched = run_cli("registry", "download", "digits", "production", "-o", str(target), cwd=workdir)
        assert fetched.returncode == 0, fetched.stderr
        assert hashlib.sha256(target.read_bytes()).hexdigest() == version["artifact"]["sha256"]
        again = run_cli("registry", "download", "digits", "-o", str(target), cwd=workdir)
        assert again.returncode == 2 and "--force" in again.stderr
    finally:
        stop_coordinator(head)
