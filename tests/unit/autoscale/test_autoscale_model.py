from __future__ import annotations

import json

import pytest
from autoscale_support import demand

from clusterai.autoscale import AutoscaleConfigError, Decision, DecisionRecord, Profile
from clusterai.errors import ConfigError

pytestmark = pytest.mark.timeout(10)


def test_can_run_needs_every_resource_in_enough_amount_and_every_label() -> None:
    gpu = Profile("gpu", labels=frozenset({"gpu", "region=eu"}), resources={"GPU": 2, "CPU": 8})
    assert gpu.can_run(demand(requires={"GPU": 1}))
    assert gpu.can_run(demand(requires={"GPU": 2, "CPU": 8}, labels=frozenset({"gpu"})))
    assert gpu.can_run(demand(requires={"TPU": 0}))  # asking for none of a resource is asking nothing
    assert not gpu.can_run(demand(requires={"GPU": 3}))
    assert not gpu.can_run(demand(requires={"TPU": 1}))
    assert not gpu.can_run(demand(labels=frozenset({"region=us"})))
    assert Profile("plain").can_run(demand())
    assert not Profile("plain").can_run(demand(requires={"GPU": 1}))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min": 5, "max": 2}, "min (5) is greater than max (2)"),
    ({"min": -1}, "min (-1) must not be negative"),
    ({"concurrency": 0}, "concurrency (0) must be at least 1"),
    ({"start_s": -3.0}, "start_s (-3.0) must not be negative"),
    ({"resources": {"GPU": -1}}, "resources.GPU (-1) must not be negative"),
])
def test_profile_rejects_bad_numbers(kwargs: dict, message: str) -> None:
    with pytest.raises(AutoscaleConfigError) as info:
        Profile("gpu", **kwargs)
    assert str(info.value) == f"profile 'gpu': {message}"
    assert isinstance(info.value, ConfigError)


def test_decision_record_rows_round_trip_through_json() -> None:
    decision = Decision("gpu", 1, 3, "target_tracking: 90s of work", {"queued": 30, "proposals": {"x": None}})
    record = DecisionRecord.of(1_700_000_000.5, decision)
    row = json.loads(json.dumps(record.to_row()))
    assert row == {"at": 1_700_000_000.5, "profile": "gpu", "from": 1, "to": 3,
                   "reason": "target_tracking: 90s of work", "inputs": {"queued": 30, "proposals": {"x": None}}}
    assert DecisionRecord.from_row(row) == record
    assert decision.delta == 2

