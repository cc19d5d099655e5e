"""clusterai.sweeps.pruners: median stopping and successive halving, judged on hand-made curves."""

from __future__ import annotations

import pytest

from clusterai.errors import SweepInvalid
from clusterai.sweeps import make_pruner
from clusterai.sweeps.pruners import MedianStopping, NoPruner, SuccessiveHalving


def flip(curves: dict[int, dict[int, float]]) -> dict[int, dict[int, float]]:
    """The same race for a metric to minimise: every value negated."""
    return {n: {s: -v for s, v in c.items()} for n, c in curves.items()}


# Three finished trials, bests up to step 2: 0.6, 0.5, 0.7 (median 0.6).
DONE = {0: {1: 0.5, 2: 0.6, 3: 0.7}, 1: {1: 0.4, 2: 0.5, 3: 0.6}, 2: {1: 0.6, 2: 0.7, 3: 0.8}}


def judge_both(pruner, number: int, step: int, curves) -> tuple[str | None, str | None]:
    return pruner.judge(number, step, curves, True), pruner.judge(number, step, flip(curves), False)


# -- median -------------------------------------------------------------------------------------


def test_median_stops_a_trial_worse_than_the_median():
    for reason in judge_both(MedianStopping(), 3, 2, {**DONE, 3: {1: 0.1, 2: 0.2}}):
        assert reason is not None
        assert reason.startswith("median stopping at step 2: best ")
        assert "of 3 other trials" in reason


def test_median_keeps_a_trial_at_or_above_the_median():
    assert judge_both(MedianStopping(), 3, 2, {**DONE, 3: {1: 0.1, 2: 0.9}}) == (None, None)
    assert judge_both(MedianStopping(), 3, 2, {**DONE, 3: {1: 0.3, 2: 0.6}}) == (None, None)


def test_median_judges_the_best_value_so_far_not_the_latest():
    # a dip at step 2 after a good step 1
    assert judge_both(MedianStopping(), 3, 2, {**DONE, 3: {1: 0.65, 2: 0.1}}) == (None, None)


def test_median_compares_with_the_others_up_to_the_same_step():
    # at step 1 the others' bests are 0.5, 0.4, 0.6; their later, better values do not count yet
    maximize, minimize = judge_both(MedianStopping(), 3, 1, {**DONE, 3: {1: 0.45}})
    assert maximize is not None and "median 0.5 " in maximize
    assert minimize is not None and "median -0.5 " in minimize
    assert judge_both(MedianStopping(), 3, 1, {**DONE, 3: {1: 0.55}}) == (None, None)


def test_median_of_an_even_number_of_trials_is_the_mean_of_the_middle_two():
    others = {0: {1: 0.1}, 1: {1: 0.2}, 2: {1: 0.8}, 3: {1: 0.9}}
    assert all(r is not None for r in judge_both(MedianStopping(), 9, 1, {**others, 9: {1: 0.45}}))
    assert judge_both(MedianStopping(), 9, 1, {**others, 9: {1: 0.55}}) == (None, None)


def test_median_waits_for_the_warmup_steps():
    curves = {**DONE, 3: {1: 0.1, 2: 0.2}}
    assert judge_both(MedianStopping(warmup_steps=3), 3, 2, curves) == (None, None)
    assert all(r is not None for r in judge_both(MedianStopping(warmup_steps=2), 3, 2, curves))


def test_median_waits_for_enough_other_trials_at_the_step():
    curves = {0: DONE[0], 1: DONE[1], 3: {1: 0.1, 2: 0.2}}
    assert judge_both(MedianStopping(), 3, 2, curves) == (None, None)
    assert all(r is not None for r in judge_both(MedianStopping(min_trials=2), 3, 2, curves))


def test_median_counts_only_trials_that_reached_the_step():
    # the others stopped at step 3; at step 5 there is nothing to compare with
    assert judge_both(MedianStopping(), 3, 5, {**DONE, 3: {4: 0.0, 5: 0.0}}) == (None, None)
    # a running trial that has not reported yet
    assert judge_both(MedianStopping(), 3, 2, {**DONE, 3: {}}) == (None, None)


# -- successive halving -------------------------------------------------------------------------


def test_rungs_are_min_step_times_powers_of_reduction():
    halving = SuccessiveHalving(min_step=1, reduction=3)
    assert [s for s in range(0, 30) if halving.rung_of(s) is not None] == [1, 3, 9, 27]
    assert [halving.rung_of(s) for s in (1, 3, 9, 27)] == [0, 1, 2, 3]
    halving = SuccessiveHalving(min_step=2, reduction=2)
    assert [s for s in range(0, 40) if halving.rung_of(s) is not None] == [2, 4, 8, 16, 32]


# Six trials at rung 1 (step 3); the top 6 // 3 = 2 go on.
RUNG = {n: {1: 0.0, 2: 0.0, 3: v} for n, v in enumerate([0.9, 0.1, 0.5, 0.7, 0.3, 0.8])}


def test_halving_keeps_the_top_share_at_a_rung():
    halving = SuccessiveHalving()
    for curves, maximize in ((RUNG, True), (flip(RUNG), False)):
        decisions = {n: halving.judge(n, 3, curves, maximize) for n in curves}
        assert {n for n, reason in decisions.items() if reason is None} == {0, 5}
        assert decisions[1] == "successive halving at rung 1 (step 3): " + (
            "0.1" if maximize else "-0.1") + " is not in the top 2 of 6 trials there"


def test_halving_keeps_ties_at_the_cutoff():
    curves = {n: {1: v} for n, v in enumerate([0.9, 0.9, 0.9, 0.2])}
    assert [SuccessiveHalving().judge(n, 1, curves, True) is None for n in curves] == [True, True, True, False]


def test_halving_judges_only_rung_steps_the_trial_reported():
    halving = SuccessiveHalving()
    assert halving.judge(1, 2, RUNG, True) is None  # not a rung
    assert halving.judge(7, 3, {**RUNG, 7: {1: 0.0}}, True) is None  # no value at that step


def test_halving_lets_trials_go_on_while_a_rung_has_fewer_than_reduction_trials():
    two = {0: {1: 0.9}, 1: {1: 0.1}}
    assert judge_both(SuccessiveHalving(), 1, 1, two) == (None, None)
    assert judge_both(SuccessiveHalving(), 1, 1, {**two, 2: {1: 0.5}}) != (None, None)


def test_no_pruner_never_stops():
    assert NoPruner().judge(0, 5, {0: {5: -1e9}, 1: {5: 1.0}, 2: {5: 1.0}, 3: {5: 1.0}}, True) is None


# -- from a sweep's definition ------------------------------------------------------------------


def test_make_pruner_defaults_and_options():
    assert isinstance(make_pruner(None), NoPruner)
    assert isinstance(make_pruner({"kind": "none"}), NoPruner)
    median = make_pruner({"kind": "median"})
    assert isinstance(median, MedianStopping) and (median.warmup_steps, median.min_trials) == (1, 3)
    median = make_pruner({"kind": "median", "warmup_steps": 0, "min_trials": 5})
    assert (median.warmup_steps, median.min_trials) == (0, 5)
    halving = make_pruner({"kind": "halving", "min_step": 2, "reduction": 4})
    assert isinstance(halving, SuccessiveHalving) and (halving.min_step, halving.reduction) == (2, 4)


@pytest.mark.parametrize(("raw", "message"), [
    ({}, r"pruner\.kind: None; one of none, median, halving"),
    ({"kind": "hyperband"}, r"pruner\.kind: 'hyperband'"),
    ({"kind": "median", "patience": 3}, r"pruner: unknown option\(s\) patience for median; allowed: "
                                        r"warmup_steps, min_trials"),
    ({"kind": "halving", "warmup_steps": 1}, r"unknown option\(s\) warmup_steps for halving"),
    ({"kind": "none", "min_trials": 1}, r"unknown option\(s\) min_trials for none; allowed: none"),
    ({"kind": "median", "warmup_steps": -1}, r"pruner\.warmup_steps: an integer from 0 to 1000000, got -1"),
    ({"kind": "median", "min_trials": 0}, r"pruner\.min_trials: an integer from 1 to 1000000, got 0"),
    ({"kind": "median", "min_trials": True}, r"pruner\.min_trials: .*got True"),
    ({"kind": "median", "min_trials": 2.0}, r"pruner\.min_trials: .*got 2\.0"),
    ({"kind": "halving", "reduction": 1}, r"pruner\.reduction: an integer from 2 to 1000000, got 1"),
    ({"kind": "halving", "min_step": 0}, r"pruner\.min_step: an integer from 1 to 1000000, got 0"),
    ({"kind": "halving", "min_step": "1"}, r"pruner\.min_step: .*got '1'"),
    ({"kind": "halving", "min_step": 1_000_001}, r"pruner\.min_step: .*got 1000001"),
])
def test_bad_pruners_are_refused(raw, message):
    with pytest.raises(SweepInvalid, match=message):
        make_pruner(raw)
