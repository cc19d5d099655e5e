"""The autoscaler on a head node (`clusterai scheduler` on PostgreSQL): its local provider starts
`clusterai worker` processes that enroll with a token the head mints for them, they run jobs, the
idle surplus is retired, and stopping the head stops the workers it launched."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pgserver
import psutil
import pytest
import yaml
from conftest import wait_for
from nodes import Scheduler, job_client, stopping, wait_succeeded

pytestmark = [pytest.mark.cluster]


def autoscaled(client) -> list[str]:
    return sorted(w.name for w in client.workers() if w.status == "ready" and w.name.startswith("as-default-"))


@pytest.mark.timeout(240)
def test_head_launches_enrolled_workers_and_stops_them_with_it(pg_server: pgserver.PgServer, tmp_path: Path):
    url = pg_server.create_database(f"autoscale_{time.time_ns()}")
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({"autoscale": {
        "min": 1, "max": 2, "interval_s": 0.5, "up_cooldown_s": 0, "down_cooldown_s": 2,
        "policies": [{"kind": "target_tracking", "target_duration_s": 2}],
        "provider": {"kind": "local", "log_dir": str(tmp_path / "autoscaled"),
                     "command": [sys.executable, "-m", "clusterai.cli.main", "worker", "{head}", "--name", "{name}",
                                 "--nthreads", "{concurrency}", "--memory-limit", "1GiB", "--death-timeout", "10"]},
    }}))
    head = Scheduler(url, tmp_path)
    client = job_client(url)
    try:
        with stopping(head):
            head.wait_up(90)
            wait_for(lambda: len(autoscaled(client)) == 1, 90, "the head to start and enroll min (1) workers")
            tokens = [t for t in client.store.list_tokens() if t.name == "autoscaler"]
            assert [t.role for t in tokens] == ["worker"], "one worker token, minted for the autoscaler"
            jobs = client.submit_many("test.record", [{"path": str(tmp_path / "runs.log"), "key": f"k{i}",
                                                       "sleep": 0.2} for i in range(60)])
            wait_for(lambda: len(autoscaled(client)) == 2, 90, "a second worker on the backlog")
            wait_succeeded(client, 60, 120, "every job")
            assert {client.get(j).state.value for j in jobs} == {"succeeded"}
            wait_for(lambda: len(autoscaled(client)) == 1, 60, "the idle surplus to be retired")
            launched = [p for p in psutil.process_iter(["cmdline"])
                        if "as-default-" in " ".join(p.info["cmdline"] or []) and "worker" in (p.info["cmdline"] or [])]
            assert launched, "the launched worker runs as a process of this machine"
        gone = psutil.wait_procs(launched, timeout=30)[1]
        assert not gone, f"workers left running after the head stopped: {[p.pid for p in gone]}"
    finally:
        client.close()
