"""Sweeps, trials, trial metrics and the model registry in the job store, on SQLite and PostgreSQL
(a fresh database on the session's throwaway server); and the registry service on top."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterai.core.artifacts import ArtifactCorrupt, ArtifactStore
from clusterai.core.model import JobSpec
from clusterai.core.trials import ModelVersion
from clusterai.errors import BadInput, RegistryNotFound, SweepNotFound
from clusterai.service.registry import RegistryService, check_name, parse_ref
from clusterai.store.open import open_store
from clusterai.store.protocol import JobStore

T0 = 1_000.0
SPEC = {"objective": "train.sgd_digits", "space": {"alpha": {"loguniform": [1e-6, 0.1]}}, "trials": 4}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    # pg_url only here, so that a run of the SQLite cases alone never starts PostgreSQL
    url = str(tmp_path / "jobs.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = open_store(url)
    try:
        yield s
    finally:
        s.close()


def trial_entry(sweep_id: int, number: int, **params: Any) -> tuple[int, dict[str, Any], JobSpec]:
    params = params or {"alpha": 10.0 ** -number}
    return number, params, JobSpec(task="train.sgd_digits", payload=params,
                                   idempotency_key=f"sweep-{sweep_id}-trial-{number}")


def job_count(store: JobStore) -> int:
    return sum(store.job_counts().values())


def version(name: str = "digits", *, aliases: tuple[str, ...] = (), **fields: Any) -> ModelVersion:
    fields.setdefault("artifact", {"artifact": f"file:///models/{name}.bin", "size": 3, "sha256": "ab" * 32})
    return ModelVersion(name=name, version=0, created_at=0.0, aliases=aliases, **fields)


# -- sweeps -------------------------------------------------------------------------------------


def test_create_and_get_a_sweep(store):
    sweep_id = store.create_sweep("digits", SPEC, T0, owner="alice")
    sweep = store.get_sweep(sweep_id)
    assert (sweep.id, sweep.name, sweep.spec, sweep.state, sweep.owner) == (sweep_id, "digits", SPEC, "running",
                                                                           "alice")
    assert (sweep.created_at, sweep.updated_at, sweep.finished_at, sweep.best, sweep.note) == (T0, T0, None, None,
                                                                                              None)
    assert sweep.to_dict()["spec"] == SPEC


def test_an_unknown_sweep_is_not_found(store):
    with pytest.raises(SweepNotFound):
        store.get_sweep(12345)


def test_list_sweeps_newest_first_with_filters(store):
    ids = [store.create_sweep(f"s{i}", SPEC, T0 + i, owner="alice" if i % 2 else "bob") for i in range(5)]
    store.update_sweep(ids[1], "cancelled", T0 + 10)
    assert [s.id for s in store.list_sweeps()] == ids[::-1]
    assert [s.id for s in store.list_sweeps(state="running")] == [ids[4], ids[3], ids[2], ids[0]]
    assert [s.id for s in store.list_sweeps(owner="alice")] == [ids[3], ids[1]]
    assert [s.id for s in store.list_sweeps(state="running", owner="alice")] == [ids[3]]
    assert [s.id for s in store.list_sweeps(limit=2)] == [ids[4], ids[3]]
    assert [s.id for s in store.list_sweeps(before_id=ids[3], limit=2)] == [ids[2], ids[1]]


def test_active_sweeps_are_the_running_ones(store):
    ids = [store.create_sweep(f"s{i}", SPEC, T0) for i in range(3)]
    store.update_sweep(ids[0], "succeeded", T0 + 1)
    assert store.active_sweeps() == ids[1:]


def test_sweep_counts_for_the_metrics(store):
    assert store.sweep_counts() == {"sweeps": {}, "trials": {}, "model_versions": 0}
    running, done = (store.create_sweep(f"s{i}", SPEC, T0) for i in range(2))
    store.add_trials(running, [trial_entry(running, n) for n in range(2)], T0)
    store.add_trials(done, [trial_entry(done, 0)], T0)
    store.finish_trials([(running, 0, "pruned", 0.5, None), (done, 0, "succeeded", 0.9, None)], T0)
    store.update_sweep(done, "succeeded", T0 + 1, best=0, register=version())
    assert store.sweep_counts() == {"sweeps": {"running": 1, "succeeded": 1},
                                    "trials": {"running": 1, "pruned": 1}, "model_versions": 1}


def test_update_sweep_with_an_expected_state(store):
    sweep_id = store.create_sweep("s", SPEC, T0)
    assert store.update_sweep(sweep_id, "failed", T0 + 1, expected="cancelled", note="nope") is False
    assert store.get_sweep(sweep_id).state == "running"
    assert store.update_sweep(sweep_id, "succeeded", T0 + 2, expected="running", best=3, note="done") is True
    sweep = store.get_sweep(sweep_id)
    assert (sweep.state, sweep.best, sweep.note, sweep.updated_at, sweep.finished_at) == ("succeeded", 3, "done",
                                                                                          T0 + 2, T0 + 2)
    assert store.update_sweep(sweep_id, "failed", T0 + 3, expected="running") is False
    # resumed: running again, no longer finished
    assert store.update_sweep(sweep_id, "running", T0 + 4) is True
    assert store.get_sweep(sweep_id).finished_at is None
    assert store.update_sweep(999_999, "cancelled", T0) is False


def test_update_sweep_registers_the_best_model_in_the_same_change(store):
    sweep_id = store.create_sweep("s", SPEC, T0)
    best = version(params={"alpha": 0.01}, metrics={"accuracy": 0.97}, sweep_id=sweep_id, trial=2, job_id=11,
                   created_by="alice", aliases=("staging",))
    registered = store.update_sweep(sweep_id, "succeeded", T0 + 5, expected="running", best=2, register=best)
    assert isinstance(registered, ModelVersion)
    assert (registered.name, registered.version, registered.created_at) == ("digits", 1, T0 + 5)
    assert registered.aliases == ("staging",)
    sweep = store.get_sweep(sweep_id)
    assert (sweep.state, sweep.best, sweep.note) == ("succeeded", 2, "registered digits version 1")
    stored = store.get_model_version("digits", "staging")
    assert stored == registered
    assert (stored.sweep_id, stored.trial, stored.job_id, stored.params) == (sweep_id, 2, 11, {"alpha": 0.01})


def test_update_sweep_that_lost_the_race_registers_nothing(store):
    sweep_id = store.create_sweep("s", SPEC, T0)
    store.update_sweep(sweep_id, "cancelled", T0 + 1)
    assert store.update_sweep(sweep_id, "succeeded", T0 + 2, expected="running", register=version()) is False
    assert store.model_versions("digits") == []
    assert store.get_sweep(sweep_id).state == "cancelled"


# -- trials -------------------------------------------------------------------------------------


def test_add_trials_makes_each_trial_with_its_job(store):
    sweep_id = store.create_sweep("s", SPEC, T0)
    jobs = store.add_trials(sweep_id, [trial_entry(sweep_id, 0), trial_entry(sweep_id, 1)], T0 + 1)
    assert len(jobs) == 2
    trials = store.trials(sweep_id)
    assert [(t.number, t.params, t.job_id, t.state, t.created_at) for t in trials] == [
        (0, {"alpha": 1.0}, jobs[0].id, "running", T0 + 1), (1, {"alpha": 0.1}, jobs[1].id, "running", T0 + 1)]
    assert store.get(jobs[1].id).payload == {"alpha": 0.1}
    assert store.get_sweep(sweep_id).updated_at == T0 + 1


def test_adding_the_same_trials_again_makes_no_duplicate_jobs(store):
    sweep_id = store.create_sweep("s", SPEC, T0)
    first = store.add_trials(sweep_id, [trial_entry(sweep_id, 0), trial_entry(sweep_id, 1)], T0)
    # a head that restarted before it saw its own write asks again
    again = store.add_trials(sweep_id, [trial_entry(sweep_id, 0), trial_entry(sweep_id, 1)], T0 + 1)
    assert [j.id for j in again] == [j.id for j in first]
    assert job_count(store) == 2
    assert [t.job_id for t in store.trials(sweep_id)] == [j.id for j in first]


def test_no_trials_are_added_once_the_sweep_stopped(store):
    sweep_id = store.create_sweep("s", SPEC, T0)
    store.update_sweep(sweep_id, "cancelled", T0 + 1)
    assert store.add_trials(sweep_id, [trial_entry(sweep_id, 0)], T0 + 2) == []
    assert store.trials(sweep_id) == []
    assert job_count(store) == 0
    assert store.add_trials(999_999, [trial_entry(999_999, 0)], T0) == []


def test_trials_of_jobs(store):
    a = store.create_sweep("a", SPEC, T0)
    b = store.create_sweep("b", SPEC, T0)
    ja = store.add_trials(a, [trial_entry(a, 0), trial_entry(a, 1)], T0)
    (jb,) = store.add_trials(b, [trial_entry(b, 0)], T0)
    (plain,) = store.submit_many([JobSpec(task="unit.job", payload={})], T0)
    found = store.trials_of_jobs([ja[1].id, jb.id, plain.id, ja[1].id, 987_654])
    assert found == {ja[1].id: (a, 1), jb.id: (b, 0)}
    assert store.trials_of_jobs([]) == {}


def test_finish_trials_only_from_the_expected_state(store):
    sweep_id = store.create_sweep("s", SPEC, T0)
    store.add_trials(sweep_id, [trial_entry(sweep_id, n) for n in range(3)], T0)
    changed = store.finish_trials([(sweep_id, 0, "succeeded", 0.91, None), (sweep_id, 1, "pruned", 0.5, "median"),
                                   (sweep_id, 2, "failed", None, "boom")], T0 + 3)
    assert changed == 3
    trials = {t.number: t for t in store.trials(sweep_id)}
    assert (trials[0].state, trials[0].value, trials[0].note, trials[0].finished_at) == ("succeeded", 0.91, None,
                                                                                         T0 + 3)
    assert (trials[1].state, trials[1].value, trials[1].note) == ("pruned", 0.5, "median")
    assert (trials[2].state, trials[2].value, trials[2].note) == ("failed", None, "boom")
    # told twice (a head replaying job outcomes): nothing changes
    assert store.finish_trials([(sweep_id, 0, "failed", None, "late")], T0 + 4) == 0
    assert store.trials(sweep_id)[0].state == "succeeded"
    # a resumed sweep puts a failed trial back to running
    assert store.finish_trials([(sweep_id, 2, "running", None, None)], T0 + 5, expected="failed") == 1
    assert (store.trials(sweep_id)[2].state, store.trials(sweep_id)[2].finished_at) == ("running", None)
    assert store.finish_trials([], T0) == 0


def test_trial_metrics_in_step_order_and_a_step_reported_again_replaces(store):
    sweep_id = store.create_sweep("s", SPEC, T0)
    store.add_trials(sweep_id, [trial_entry(sweep_id, 0), trial_entry(sweep_id, 1)], T0)
    store.add_trial_metrics([(sweep_id, 0, 2, {"accuracy": 0.8}, T0 + 2), (sweep_id, 0, 1, {"accuracy": 0.6}, T0 + 1),
                             (sweep_id, 1, 1, {"accuracy": 0.4, "loss": 1.5}, T0 + 1)])
    store.add_trial_metrics([(sweep_id, 0, 2, {"accuracy": 0.85}, T0 + 9)])  # the resumed attempt's step 2
    store.add_trial_metrics([])
    assert store.trial_metrics(sweep_id) == {
        0: [(1, {"accuracy": 0.6}, T0 + 1), (2, {"accuracy": 0.85}, T0 + 9)],
        1: [(1, {"accuracy": 0.4, "loss": 1.5}, T0 + 1)],
    }
    assert store.trial_metrics(sweep_id, 1) == {1: [(1, {"accuracy": 0.4, "loss": 1.5}, T0 + 1)]}
    assert store.trial_metrics(sweep_id, 5) == {}


# -- the model registry -------------------------------------------------------------------------


def test_register_model_numbers_versions_per_name(store):
    assert store.register_model(version("a", metrics={"accuracy": 0.9}), T0).version == 1
    assert store.register_model(version("a"), T0 + 1).version == 2
    assert store.register_model(version("b"), T0 + 2).version == 1
    third = store.register_model(ModelVersion(name="a", version=99, artifact={"artifact": "x"}, created_at=5.0), T0 + 3)
    assert (third.version, third.created_at) == (3, T0 + 3)  # the given number and time are ignored
    assert [v.version for v in store.model_versions("a")] == [3, 2, 1]
    assert store.model_versions("a")[-1].metrics == {"accuracy": 0.9}
    assert [(v.name, v.version) for v in store.model_versions()] == [("a", 3), ("a", 2), ("a", 1), ("b", 1)]
    assert len(store.model_versions("a", limit=2)) == 2
    assert store.model_versions("zzz") == []


def test_get_model_version_by_number_alias_or_latest(store):
    store.register_model(version(aliases=("production",)), T0)
    store.register_model(version(), T0 + 1)
    assert store.get_model_version("digits").version == 2
    assert store.get_model_version("digits", None).version == 2
    assert store.get_model_version("digits", 1).aliases == ("production",)
    assert store.get_model_version("digits", "production").version == 1
    for name, ref, message in [("nope", None, "no model 'nope'"), ("digits", 7, "no model 'digits' version 7"),
                               ("digits", "staging", "model 'digits' has no alias 'staging'")]:
        with pytest.raises(RegistryNotFound, match=message):
            store.get_model_version(name, ref)


def test_set_model_alias_moves_it_between_versions_and_none_removes_it(store):
    for _ in range(3):
        store.register_model(version(), T0)
    store.set_model_alias("digits", "production", 1, T0 + 1)
    store.set_model_alias("digits", "staging", 1, T0 + 1)
    assert store.get_model_version("digits", 1).aliases == ("production", "staging")
    store.set_model_alias("digits", "production", 3, T0 + 2)
    assert store.get_model_version("digits", 1).aliases == ("staging",)
    assert store.get_model_version("digits", "production").version == 3
    assert {v.version: v.aliases for v in store.model_versions("digits")} == {
        3: ("production",), 2: (), 1: ("staging",)}
    store.set_model_alias("digits", "staging", None, T0 + 3)
    assert store.get_model_version("digits", 1).aliases == ()
    with pytest.raises(RegistryNotFound, match="has no alias 'staging'"):
        store.set_model_alias("digits", "staging", None, T0 + 4)
    with pytest.raises(RegistryNotFound, match="no model 'digits' version 9"):
        store.set_model_alias("digits", "production", 9, T0 + 4)
    assert store.get_model_version("digits", "production").version == 3


def test_registering_with_an_alias_takes_it_from_the_older_version(store):
    store.register_model(version(aliases=("production",)), T0)
    store.register_model(version(aliases=("production",)), T0 + 1)
    assert [v.aliases for v in store.model_versions("digits")] == [("production",), ()]


# -- the registry service -----------------------------------------------------------------------


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore((tmp_path / "artifacts").as_uri())


@pytest.fixture
def registry(store: JobStore, artifacts: ArtifactStore) -> RegistryService:
    return RegistryService(store, artifacts)


def local_path(ref: dict[str, Any]) -> Path:
    return Path(ref["artifact"].removeprefix("file://"))


def test_register_show_and_download(registry, artifacts):
    ref = artifacts.put_bytes("jobs/7", "model.bin", b"weights v1")
    shown = registry.register("digits", {**ref, "extra": "dropped"}, params={"alpha": 0.1},
                              metrics={"accuracy": 0.9}, alias="staging", created_by="alice", job_id=7)
    assert (shown["version"], shown["aliases"], shown["artifact"]) == (1, ["staging"], ref)
    assert registry.show("digits", "staging")["version"] == 1
    assert registry.show("digits", "1")["created_by"] == "alice"
    info, data = registry.download("digits")
    assert data == b"weights v1"
    assert info["job_id"] == 7
    (model,) = registry.models()
    assert (model["name"], model["versions"], model["latest"], model["aliases"]) == ("digits", 1, 1, {"staging": 1})


def test_download_refuses_a_tampered_artifact(registry, artifacts):
    ref = artifacts.put_bytes("jobs/7", "model.bin", b"weights v1")
    registry.register("digits", ref)
    local_path(ref).write_bytes(b"weights v2")  # same size, other bytes
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        registry.download("digits", 1)


def test_register_checks_the_artifact_first(registry, artifacts, store):
    ref = artifacts.put_bytes("jobs/7", "model.bin", b"weights")
    local_path(ref).write_bytes(b"changed")  # same size, other bytes
    # a reference that does not match is the caller's mistake
    with pytest.raises(BadInput, match="artifact: .*sha256 .*changed since written"):
        registry.register("digits", ref)
    with pytest.raises(BadInput, match="artifact: a reference"):
        registry.register("digits", {"artifact": ref["artifact"]})
    with pytest.raises(BadInput, match="model: letters"):
        registry.register("bad name", ref)
    assert store.model_versions() == []


def test_set_alias(registry, artifacts):
    ref = artifacts.put_bytes("jobs/7", "model.bin", b"w")
    registry.register("digits", ref)
    registry.register("digits", ref, alias="staging")
    assert registry.set_alias("digits", "production", 1)["aliases"] == ["production"]
    assert registry.set_alias("digits", "production", "staging")["version"] == 2  # follow another alias
    assert registry.set_alias("digits", "production", None) == {"name": "digits", "alias": "production",
                                                                 "removed": True}
    for alias in ("3", "latest"):
        with pytest.raises(BadInput, match="would read as a version"):
            registry.set_alias("digits", alias, 1)
    with pytest.raises(BadInput, match="version: a number or an alias to point"):
        registry.set_alias("digits", "production", "latest")
    with pytest.raises(RegistryNotFound):
        registry.set_alias("digits", "production", 5)


def test_versions_of_an_unknown_model_is_not_found(registry):
    with pytest.raises(RegistryNotFound, match="no model 'ghost'"):
        registry.versions("ghost")


@pytest.mark.parametrize(("ref", "parsed"), [
    (None, None), ("", None), ("latest", None), (3, 3), ("3", 3), ("012", 12), ("production", "production"),
    ("v1.2", "v1.2"),
])
def test_parse_ref(ref, parsed):
    assert parse_ref(ref) == parsed


@pytest.mark.parametrize(("ref", "message"), [
    (0, "numbers start at 1"), ("0", "numbers start at 1"), (-2, "numbers start at 1"), (True, "a number or an alias"),
    ("-1", "alias: letters"), ("has space", "alias: letters"), (1.5, "alias: letters"), ("x" * 129, "alias: letters"),
])
def test_parse_ref_refuses(ref, message):
    with pytest.raises(BadInput, match=message):
        parse_ref(ref)


def test_parse_ref_refuses_other_digit_characters():
    with pytest.raises(BadInput):
        parse_ref("²")


def test_check_name():
    assert check_name("model", "digits-v2.1:prod_x") == "digits-v2.1:prod_x"
    for bad in ("", "_x", "a/b", "x" * 129, None, 5):
        with pytest.raises(BadInput, match="model: letters"):
            check_name("model", bad)
