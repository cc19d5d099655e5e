"""stop() hands the attempts it was running back at once (as `abandoned`, the job queued again)
rather than leaving them `running` in the store until a restart or their lease gives them back."""

from __future__ import annotations

import pytest
from conftest import wait_for

from clusterai import State
from clusterai.core.model import Outcome
from clusterai.store.open import open_store

pytestmark = pytest.mark.cluster


@pytest.mark.timeout(120)
def test_stop_hands_a_running_attempt_back(config_factory, start_cluster):
    client = start_cluster(config_factory())
    job = client.submit("test.sleep", {"seconds": 60})
    wait_for(lambda: client.get(job).state is State.RUNNING, 30, "the job to start")
    url = client.config.store
    client.close()  # stops the coordinator while the worker still runs the job

    store = open_store(url)
    try:
        after = store.get(job.id)
    finally:
        store.close()
    assert after.state is State.QUEUED
    assert [(a.outcome, a.error) for a in after.attempts] == [(Outcome.ABANDONED, "coordinator stopped")]
    assert after.failures == 0 and after.lost_count == 0  # a stop is nobody's fault
