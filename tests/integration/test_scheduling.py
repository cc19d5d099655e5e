"""How work is spread: short jobs never queue behind a long one, and an existing Dask scheduler
can host the workers instead of the embedded LocalCluster."""

from __future__ import annotations

import pytest
from conftest import live_workers, wait_for
from distributed import LocalCluster

import clusterai
from clusterai import State

pytestmark = pytest.mark.cluster


@pytest.mark.timeout(90)
def test_short_jobs_flow_around_a_long_one(config_factory, start_cluster, tmp_path):
    client = start_cluster(config_factory())
    log = tmp_path / "executions.log"
    warm = client.submit_many("test.record", [{"path": str(log), "key": f"w{i}"} for i in range(20)])
    client.wait(warm, timeout=30)  # the coordinator now knows test.record is short

    long = client.submit("test.sleep", {"seconds": 4.0})
    wait_for(lambda: client.get(long).state is State.RUNNING, 20, "the long job to start")
    busy = client.get(long).worker
    shorts = client.submit_many("test.record", [{"path": str(log), "key": f"s{i}"} for i in range(3000)])
    client.wait(shorts, timeout=30)
    done = client.get_many(shorts)

    assert client.get(long).state is State.RUNNING, "every short job should finish before the long one"
    assert {j.state for j in done} == {State.SUCCEEDED}
    assert busy not in {j.worker for j in done}, "no short job may wait on the worker running the long one"
    client.wait([long], timeout=30)


@pytest.mark.timeout(120)
def test_existing_dask_scheduler_hosts_the_workers(config_factory):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="2GiB") as dask_cluster:
        config = config_factory().with_overrides(**{"cluster.scheduler": dask_cluster.scheduler_address})
        with clusterai.connect(config) as client:
            wait_for(lambda: len(live_workers(client)) == 2, 60, "the scheduler's workers")
            addresses = {w.address for w in live_workers(client)}
            assert addresses == set(dask_cluster.scheduler_info["workers"])
            jobs = client.submit_many("primes.count", [{"limit": 10_000 + i} for i in range(50)])
            client.wait(jobs, timeout=60)
            finished = client.get_many(jobs)
            assert {j.state for j in finished} == {State.SUCCEEDED}
            assert {j.worker for j in finished} <= addresses
            assert finished[0].result == {"limit": 10_000, "primes": 1229}
