"""`clusterai workers roll` under load: every worker restarted one at a time while 500 jobs run;
every job succeeds exactly once and no attempt is lost (each worker was drained before its restart)."""

from __future__ import annotations

import pytest
from conftest import accepted_successes, live_workers, read_executions, wait_for

from clusterai import State
from clusterai.sdk.rolling import roll_workers

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]


@pytest.mark.timeout(240)
def test_roll_every_worker_under_500_jobs_loses_none(config_factory, start_cluster, tmp_path):
    client = start_cluster(config_factory())
    before = {w.name: w.pid for w in live_workers(client)}
    log = tmp_path / "executions.log"
    jobs = client.submit_many("test.record", [{"path": str(log), "key": f"k{i}", "sleep": 0.03}
                                              for i in range(500)])
    wait_for(lambda: client.counts()["succeeded"] >= 20, 60, "the load to be running")
    said: list[str] = []
    rolled = roll_workers(client, say=said.append, poll=0.2)
    assert sorted(r["worker"] for r in rolled) == sorted(before)
    assert all(r["new"]["pid"] != r["old"]["pid"] for r in rolled)
    assert client.counts()["succeeded"] < 500, "the roll happened under load, not after it"
    client.wait(jobs, timeout=120)
    finished = [client.get(j) for j in jobs]
    assert {j.state for j in finished} == {State.SUCCEEDED}
    assert all(accepted_successes(j) == 1 for j in finished)
    assert not [a for j in finished for a in j.attempts if a.outcome and a.outcome.value != "succeeded"]
    assert set(read_executions(log).values()) == {1}, "no job ran twice"
    assert {w.name for w in live_workers(client)} == set(before)
    assert any("draining" in line for line in said) and any("back at" in line for line in said)
