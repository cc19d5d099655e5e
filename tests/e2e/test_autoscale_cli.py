"""`clusterai autoscale` as a user runs it: cluster.yaml says `autoscale: {min: 1, max: 3}`, `clusterai up`
brings the cluster to min, `enable --min 2` grows it, `status` tells the truth, `disable` holds it;
bad bounds and a bad section exit 2 with the field named, and change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import start_up, stop_up, wait_for
from test_cli import run_cli

from clusterai.store.open import open_store

pytestmark = [pytest.mark.cluster]


def write_config(workdir: Path, autoscale: object) -> None:
    (workdir / "cluster.yaml").write_text(yaml.safe_dump({
        "store": "sqlite:///.clusterai/clusterai.db",
        "tasks": ["testtasks"],
        "cluster": {"dashboard": False, "memory_limit": "1GiB", "death_timeout": 5},
        "api": {"port": 0},
        "autoscale": autoscale,
    }))


def autoscaled_workers(workdir: Path) -> list[str]:
    store = open_store(workdir / ".clusterai" / "clusterai.db")
    try:
        return sorted(w.name for w in store.list_workers() if w.status == "ready" and w.name.startswith("as-"))
    finally:
        store.close()


@pytest.mark.timeout(180)
def test_enable_status_disable_on_a_running_cluster(tmp_path):
    write_config(tmp_path, {"min": 1, "max": 3, "interval_s": 0.5, "up_cooldown_s": 0, "down_cooldown_s": 1})
    up, _ = start_up(tmp_path)
    try:
        wait_for(lambda: len(autoscaled_workers(tmp_path)) == 1, 60, "the autoscaler to start min (1) workers")
        status = run_cli("autoscale", "status", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        text = " ".join(status.stdout.split())
        assert "autoscaler: enabled, provider local" in text and "default" in text and "1..3" in text

        bad = run_cli("autoscale", "enable", "--min", "5", "--max", "2", cwd=tmp_path)
        assert bad.returncode == 2 and "min (5) is greater than max (2)" in bad.stderr
        assert run_cli("autoscale", "enable", "--profile", "gpu", "--min", "1", cwd=tmp_path).returncode == 2

        grown = run_cli("autoscale", "enable", "--min", "2", cwd=tmp_path)
        assert grown.returncode == 0 and "default 2..3" in grown.stdout
        wait_for(lambda: len(autoscaled_workers(tmp_path)) == 2, 60, "the cluster to grow to the new min (2)")
        shown = run_cli("autoscale", "status", "--json", cwd=tmp_path)
        assert '"min": 2' in shown.stdout and '"running": true' in shown.stdout

        off = run_cli("autoscale", "disable", cwd=tmp_path)
        assert off.returncode == 0 and "disabled" in off.stdout
        wait_for(lambda: '"enabled": false' in run_cli("autoscale", "status", "--json", cwd=tmp_path).stdout,
                 30, "the head to report itself disabled")
        assert len(autoscaled_workers(tmp_path)) == 2, "disabled: the workers stay as they are"
    finally:
        stop_up(up)


@pytest.mark.parametrize(("section", "message"), [
    ({"min": 3, "max": 1}, "autoscale.profiles.default: min (3) is greater than max (1)"),
    ({"profiles": {"cpu": {"max": 2}}, "policies": [{"kind": "scheduled", "profiles": ["gpu"], "windows": []}]},
     "autoscale.policies[0].profiles: unknown profile 'gpu'"),
    ({"min": 1, "max": 2, "provider": {"kind": "ssh", "hosts": [{"host": "gpu1.lan", "max_workers": 1}]}},
     "the embedded cluster grows with worker processes of its own only"),
])
@pytest.mark.timeout(60)
def test_a_bad_autoscale_section_is_named_and_refused(tmp_path, section, message):
    write_config(tmp_path, section)
    result = run_cli("up", cwd=tmp_path, timeout=50)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join((result.stdout + result.stderr).split())
