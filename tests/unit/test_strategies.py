"""clusterai.placement.strategies: every built-in strategy, hybrid chains, and custom strategies."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from placement_support import TASK, make_job, make_slot

from clusterai.config import PlacementSection
from clusterai.core.model import Priority
from clusterai.errors import ConfigError
from clusterai.placement.strategies import (
    BUILT_IN,
    DEFAULT_HYBRID,
    SCORERS,
    LeastLoaded,
    PriorityReserve,
    RoundRobin,
    hybrid,
    make_strategy,
)


def pick(strategy_name: str, job, candidates, **kwargs):
    return make_strategy(strategy_name, **kwargs).choose(job, candidates)


def names(slots) -> list[str]:
    return [s.name for s in slots]


# -- every built-in --------------------------------------------------------------------------------


def test_cluster_yaml_takes_every_built_in_name_and_refuses_others():
    for name in BUILT_IN:
        assert PlacementSection(strategy=name).strategy == name
    with pytest.raises(ValueError, match="unknown strategy 'fastest'"):
        PlacementSection(strategy="fastest")


def test_the_default_hybrid_chain_matches_the_seed_documents():
    assert DEFAULT_HYBRID == ("priority", "capability", "least_loaded", "geographic")


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_built_in_reports_its_own_name(name: str):
    # batches record the strategy by name; the coordinator hands "dask" batches to Dask
    assert make_strategy(name).name == name


@pytest.mark.parametrize("name", BUILT_IN)
def test_no_candidates_means_no_choice(name: str):
    assert make_strategy(name).choose(make_job(), []) is None


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_single_candidate_is_chosen(name: str):
    # four free rooms: more than the priority reserve, so no built-in has a reason to hold back
    only = make_slot("only", nthreads=4)
    assert make_strategy(name).choose(make_job(), [only]) is only


# -- round_robin -----------------------------------------------------------------------------------


def test_round_robin_cycles_in_address_order_whatever_the_list_order():
    slots = [make_slot("x", address="tcp://10.0.0.3:1"), make_slot("y", address="tcp://10.0.0.1:1"),
             make_slot("z", address="tcp://10.0.0.2:1")]
    rr = RoundRobin()
    rng = random.Random(4)
    chosen = []
    for _ in range(7):
        rng.shuffle(slots)
        chosen.append(rr.choose(make_job(), slots).name)
    assert chosen == ["y", "z", "x", "y", "z", "x", "y"]


def test_round_robin_ignores_load():
    busy, idle = make_slot("a", jobs=50, calls=3, nthreads=4), make_slot("b")
    rr = make_strategy("round_robin")
    assert [rr.choose(make_job(), [idle, busy]).name for _ in range(2)] == ["a", "b"]


def test_round_robin_instances_keep_separate_turns():
    slots = [make_slot("a"), make_slot("b")]
    first, second = RoundRobin(), RoundRobin()
    assert first.choose(make_job(), slots).name == "a"
    assert second.choose(make_job(), slots).name == "a"
    assert first.choose(make_job(), slots).name == "b"


# -- least_loaded ----------------------------------------------------------------------------------


def test_least_loaded_a_fast_busy_worker_beats_a_slow_idle_one():
    fast = make_slot("fast", latency={TASK: 0.01}, jobs=4)  # (4+1) * 0.01 = 0.05 s
    slow = make_slot("slow", latency={TASK: 1.0}, jobs=0)  # (0+1) * 1.0 = 1 s
    assert LeastLoaded().choose(make_job(), [slow, fast]) is fast
    assert LeastLoaded().choose(make_job(), [fast, slow]) is fast


def test_least_loaded_a_slow_worker_wins_once_the_fast_one_is_busy_enough():
    fast = make_slot("fast", latency={TASK: 0.1}, jobs=19)  # 20 * 0.1 = 2 s
    slow = make_slot("slow", latency={TASK: 1.0}, jobs=0)  # 1 s
    assert LeastLoaded().choose(make_job(), [fast, slow]) is slow


def test_least_loaded_divides_the_wait_by_capacity():
    wide = make_slot("wide", latency={TASK: 1.0}, jobs=3, nthreads=4)  # 4 * 1 / 4 = 1 s
    narrow = make_slot("narrow", latency={TASK: 1.0}, jobs=1, nthreads=1)  # 2 * 1 / 1 = 2 s
    assert LeastLoaded().choose(make_job(), [narrow, wide]) is wide


def test_least_loaded_uses_the_latency_of_the_job_s_own_task():
    # "a" is fast at another task only; for this one it falls back to in-flight jobs (3 vs 2)
    a = make_slot("a", latency={"unit.other": 0.001}, jobs=2)
    b = make_slot("b", jobs=1)
    assert LeastLoaded().choose(make_job(), [a, b]) is b


def test_least_loaded_without_latency_prefers_fewer_jobs_in_flight():
    slots = [make_slot("a", jobs=3), make_slot("b", jobs=1), make_slot("c", jobs=2)]
    assert LeastLoaded().choose(make_job(), slots).name == "b"


def test_least_loaded_breaks_exact_ties_by_address():
    slots = [make_slot("n1", address="tcp://10.0.0.9:1"), make_slot("n2", address="tcp://10.0.0.2:1"),
             make_slot("n3", address="tcp://10.0.0.5:1")]
    for order in (slots, slots[::-1], slots[1:] + slots[:1]):
        assert LeastLoaded().choose(make_job(), order).name == "n2"


# -- capability ------------------------------------------------------------------------------------


def test_capability_a_cpu_only_job_avoids_the_gpu_box_even_when_it_is_idle():
    gpu = make_slot("gpu", resources={"GPU": 1, "CPU": 8})
    cpu = make_slot("cpu", resources={"CPU": 8, "MEMORY": 1e9}, jobs=3)
    assert pick("capability", make_job(), [gpu, cpu]) is cpu


def test_capability_a_gpu_job_takes_the_gpu_box_it_fills_best():
    one = make_slot("one", resources={"GPU": 1}, jobs=3)
    four = make_slot("four", resources={"GPU": 4})
    job = make_job(resources={"GPU": 1})
    assert pick("capability", job, [four, one]) is one  # leaves 0 of 1 unused, not 3 of 4


def test_capability_a_job_using_every_gpu_prefers_the_box_it_fills_entirely():
    two = make_slot("two", resources={"GPU": 2})
    four = make_slot("four", resources={"GPU": 4})
    assert pick("capability", make_job(resources={"GPU": 2}), [four, two]) is two


def test_capability_counts_unused_capacity_as_a_fraction_of_each_resource():
    half = make_slot("half", resources={"GPU": 4})  # the job leaves 2 of 4 GPUs: 0.5
    tpu_idle = make_slot("tpu-idle", resources={"GPU": 2, "TPU": 1})  # leaves the whole TPU: 1.0
    assert pick("capability", make_job(resources={"GPU": 2}), [tpu_idle, half]) is half


def test_capability_equal_fit_falls_back_to_load():
    a = make_slot("a", resources={"GPU": 1}, jobs=2)
    b = make_slot("b", resources={"GPU": 1}, jobs=0)
    assert pick("capability", make_job(resources={"GPU": 1}), [a, b]) is b


# -- affinity --------------------------------------------------------------------------------------


def test_affinity_prefers_the_worker_holding_the_model():
    cold = make_slot("cold")
    warm = make_slot("warm", models={"bert"}, jobs=5)
    assert pick("affinity", make_job(prefers={"model": "bert"}), [cold, warm]) is warm


def test_affinity_prefers_the_worker_holding_the_dataset():
    cold = make_slot("cold", models={"imagenet"})  # a model of that name is not the data set
    warm = make_slot("warm", datasets={"imagenet"}, jobs=5)
    assert pick("affinity", make_job(prefers={"dataset": "imagenet"}), [cold, warm]) is warm


def test_affinity_prefers_a_matching_preferred_label():
    hdd = make_slot("hdd", labels={"disk": "hdd"})
    ssd = make_slot("ssd", labels={"disk": "ssd"}, jobs=5)
    assert pick("affinity", make_job(prefers={"disk": "ssd"}), [hdd, ssd]) is ssd


def test_affinity_more_matching_preferences_win():
    one = make_slot("one", models={"bert"})
    both = make_slot("both", models={"bert"}, datasets={"wiki"}, jobs=5)
    job = make_job(prefers={"model": "bert", "dataset": "wiki"})
    assert pick("affinity", job, [one, both]) is both


def test_affinity_without_preferences_is_least_loaded():
    assert pick("affinity", make_job(), [make_slot("a", jobs=2), make_slot("b", jobs=1)]).name == "b"


# -- geographic ------------------------------------------------------------------------------------


def geo_slots():
    return [
        make_slot("a-us", labels={"region": "us", "zone": "us-a"}),
        make_slot("b-eu-other-zone", labels={"region": "eu", "zone": "eu-b"}, jobs=2),
        make_slot("c-eu-same-zone", labels={"region": "eu", "zone": "eu-a"}, jobs=5),
    ]


@pytest.mark.parametrize("where", ["prefers", "labels"])
def test_geographic_same_region_and_zone_then_same_region_then_others(where: str):
    job = make_job(**{where: {"region": "eu", "zone": "eu-a"}})
    us, eu_b, eu_a = geo_slots()
    geo = make_strategy("geographic")
    assert geo.choose(job, [us, eu_b, eu_a]) is eu_a
    assert geo.choose(job, [us, eu_b]) is eu_b
    assert geo.choose(job, [us]) is us


def test_geographic_combines_a_region_label_with_a_zone_preference():
    job = make_job(labels={"region": "eu"}, prefers={"zone": "eu-b"})
    _, eu_b, eu_a = geo_slots()
    assert pick("geographic", job, [eu_a, eu_b]) is eu_b


def test_geographic_within_the_same_place_the_faster_worker_wins():
    slow = make_slot("a", labels={"region": "eu"}, latency={TASK: 0.5})
    fast = make_slot("b", labels={"region": "eu"}, latency={TASK: 0.1})
    assert pick("geographic", make_job(prefers={"region": "eu"}), [slow, fast]) is fast


def test_geographic_latency_never_outweighs_distance():
    near_slow = make_slot("near", labels={"region": "eu"}, latency={TASK: 1e6})
    far_fast = make_slot("far", labels={"region": "us"}, latency={TASK: 0.0})
    assert pick("geographic", make_job(prefers={"region": "eu"}), [far_fast, near_slow]) is near_slow


def test_geographic_without_a_wanted_place_is_least_loaded():
    us, eu_b, eu_a = geo_slots()
    assert pick("geographic", make_job(), [eu_a, eu_b, us]) is us


# -- priority --------------------------------------------------------------------------------------


def one_free_room():
    return [make_slot("a", nthreads=2, calls=1), make_slot("b", nthreads=1, calls=1)]


@pytest.mark.parametrize("priority", [Priority.LOW, Priority.NORMAL])
def test_priority_holds_low_and_normal_back_when_free_rooms_are_at_most_the_reserve(priority):
    assert pick("priority", make_job(priority=priority), one_free_room(), reserve=1) is None


@pytest.mark.parametrize("priority", [Priority.HIGH, Priority.CRITICAL])
def test_priority_lets_high_and_critical_through_the_reserve(priority):
    assert pick("priority", make_job(priority=priority), one_free_room(), reserve=1).name == "a"


def test_priority_lets_normal_work_through_when_more_rooms_are_free_than_reserved():
    slots = [make_slot("a", nthreads=2, calls=1), make_slot("b", nthreads=1)]  # 2 free
    assert pick("priority", make_job(), slots, reserve=1) is not None


def test_priority_reserve_zero_holds_nothing_back():
    assert pick("priority", make_job(priority=Priority.LOW), one_free_room(), reserve=0) is not None


def test_priority_reserve_counts_free_rooms_not_workers():
    reserve = PriorityReserve(reserve=2)
    job = make_job()
    assert list(reserve(job, [make_slot("a", nthreads=3, calls=1)])) == []  # 2 free: held back
    assert names(reserve(job, [make_slot("a", nthreads=4, calls=1)])) == ["a"]  # 3 free
    # a worker over its capacity (a prefetched batch) adds no negative rooms
    assert names(reserve(job, [make_slot("a", nthreads=1, calls=2), make_slot("b", nthreads=3)])) == ["a", "b"]


def test_priority_among_the_allowed_picks_the_least_loaded():
    slots = [make_slot("a", nthreads=4, jobs=3), make_slot("b", nthreads=4, jobs=1)]
    assert pick("priority", make_job(), slots).name == "b"


# -- hybrid ----------------------------------------------------------------------------------------


def test_hybrid_default_chain_reserves_nothing_unless_told():
    # an idle reserve would cost a small pool a large share of its capacity
    assert make_strategy("hybrid").choose(make_job(), one_free_room()) is not None


def test_hybrid_chain_starts_with_the_priority_reserve_when_one_is_configured():
    reserving = make_strategy("hybrid", reserve=1)
    assert reserving.choose(make_job(), one_free_room()) is None
    assert reserving.choose(make_job(priority=Priority.HIGH), one_free_room()) is not None


def test_hybrid_capability_comes_before_load():
    gpu = make_slot("gpu", nthreads=4, resources={"GPU": 1})
    cpu = make_slot("cpu", nthreads=4, jobs=3)
    assert make_strategy("hybrid").choose(make_job(), [gpu, cpu]) is cpu


def test_hybrid_load_comes_before_geography():
    near = make_slot("near", nthreads=4, labels={"region": "eu"}, jobs=3)
    far = make_slot("far", nthreads=4, labels={"region": "us"})
    assert make_strategy("hybrid").choose(make_job(prefers={"region": "eu"}), [near, far]) is far


def test_hybrid_geography_breaks_the_ties_of_load():
    # "z-near" sorts after "a-far": the address tie-break alone would pick the wrong one
    near = make_slot("z-near", nthreads=4, labels={"region": "eu"})
    far = make_slot("a-far", nthreads=4, labels={"region": "us"})
    assert make_strategy("hybrid").choose(make_job(prefers={"region": "eu"}), [far, near]) is near


def test_hybrid_chain_order_decides():
    near = make_slot("near", nthreads=4, labels={"region": "eu"}, jobs=3)
    far = make_slot("far", nthreads=4, labels={"region": "us"})
    job = make_job(prefers={"region": "eu"})
    assert hybrid(["geographic", "least_loaded"]).choose(job, [near, far]) is near
    assert hybrid(["least_loaded", "geographic"]).choose(job, [near, far]) is far
    assert make_strategy("hybrid", hybrid_chain=["geographic"]).choose(job, [near, far]) is near


def test_hybrid_without_scorers_ranks_by_load():
    slots = [make_slot("a", nthreads=4, jobs=2), make_slot("b", nthreads=4, jobs=1)]
    assert hybrid(["priority"]).choose(make_job(), slots).name == "b"


def test_hybrid_passes_its_reserve_to_the_priority_filter():
    slots = [make_slot("a", nthreads=3)]  # 3 free rooms
    assert hybrid(["priority"], reserve=3).choose(make_job(), slots) is None
    assert make_strategy("hybrid", reserve=2).choose(make_job(), slots) is not None


@pytest.mark.parametrize("chain", [["nonsense"], ["priority", "least_loaded", "nonsense"]])
def test_hybrid_rejects_an_unknown_step_and_lists_the_allowed_ones(chain):
    with pytest.raises(ConfigError) as info:
        hybrid(chain)
    message = str(info.value)
    assert "'nonsense'" in message
    for allowed in ("priority", *SCORERS):
        assert allowed in message


def test_make_strategy_hybrid_checks_its_chain():
    with pytest.raises(ConfigError, match="unknown step 'bogus'"):
        make_strategy("hybrid", hybrid_chain=["priority", "bogus"])


# -- dask ------------------------------------------------------------------------------------------


def test_dask_spreads_by_calls_per_capacity():
    half = make_slot("a", nthreads=4, calls=2)  # 0.5
    full = make_slot("b", nthreads=1, calls=1, jobs=0)  # 1.0
    assert pick("dask", make_job(), [full, half]) is half


# -- unknown and custom ----------------------------------------------------------------------------


def test_an_unknown_name_raises_and_lists_every_built_in():
    with pytest.raises(ConfigError) as info:
        make_strategy("nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in BUILT_IN:
        assert name in message
    assert "package.module:Class" in message


@pytest.fixture
def custom_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


@pytest.mark.parametrize("path", ["custom_strategy:Fixed", "custom_strategy.Fixed"])
def test_a_custom_strategy_loads_by_dotted_path_with_options(custom_on_path, path: str):
    strategy = make_strategy(path, options={"name_to_pick": "c"})
    slots = [make_slot("a"), make_slot("b"), make_slot("c", jobs=9)]
    assert strategy.choose(make_job(), slots).name == "c"
    assert strategy.name == path  # named after its path when it has no name of its own


def test_a_custom_strategy_without_options_uses_its_defaults(custom_on_path):
    strategy = make_strategy("custom_strategy:Fixed")
    assert strategy.choose(make_job(), [make_slot("a"), make_slot("b")]).name == "b"


def test_a_custom_strategy_keeps_its_own_name(custom_on_path):
    assert make_strategy("custom_strategy:Named").name == "my-own-name"


@pytest.mark.parametrize("path", ["custom_strategy:NoChoose", "custom_strategy:ChooseNotCallable"])
def test_a_path_to_something_without_choose_raises(custom_on_path, path: str):
    with pytest.raises(ConfigError, match="has no choose"):
        make_strategy(path)


@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("custom_strategy:Missing", {}),
        ("no_such_module_for_clusterai:Thing", {}),
        ("custom_strategy:Fixed", {"unknown_option": 1}),
        ("custom_strategy:NOT_A_CLASS", {}),
    ],
)
def test_a_path_that_cannot_be_loaded_raises(custom_on_path, path: str, options):
    with pytest.raises(ConfigError, match="cannot be loaded") as info:
        make_strategy(path, options=options)
    assert path in str(info.value)
