"""clusterai.workloads.training: the built-in digits trainers, their resume and their stored models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clusterai.core import state_codec
from clusterai.core.artifacts import ArtifactStore
from clusterai.worker import execute, trial
from clusterai.worker.execute import JobContext
from clusterai.workloads import training


class Crash(Exception):
    """The worker dying midway through an attempt."""


@pytest.fixture(autouse=True)
def artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "artifacts"
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS", root.as_uri())
    monkeypatch.delenv("CLUSTERAI_ARTIFACTS_OPTIONS", raising=False)
    return root


@pytest.fixture
def reported() -> Iterator[list[tuple[int, int, dict[str, float]]]]:
    """(attempt, step, metrics) of every report that reached the head."""
    seen: list[tuple[int, int, dict[str, float]]] = []
    execute.set_event_sink(lambda topic, m: seen.append((m["attempt"], m["step"], m["metrics"])))
    try:
        yield seen
    finally:
        execute.set_event_sink(None)


@contextmanager
def attempt_of(job_id: int, attempt: int) -> Iterator[None]:
    execute._context.job = JobContext(job_id, attempt, "w1")
    try:
        yield
    finally:
        execute._context.job = None


def crash_after(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next report past `step` kills the attempt (the checkpoint of `step` is already written)."""
    real = trial.report

    def report(at: int, **metrics: float) -> None:
        if at > step:
            raise Crash(f"worker lost at step {at}")
        real(at, **metrics)

    monkeypatch.setattr(trial, "report", report)


def validation_digits() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits as 8x8 images, as a model's user would have them."""
    x, y = training.validation_digits()
    return x.reshape(-1, 8, 8), y


def model_of(result: dict[str, Any]) -> Any:
    return training.load_model(ArtifactStore().get_bytes(result["model"]))


def resumed_run(trainer: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                reported: list[tuple[int, int, dict[str, float]]], **options: Any) -> dict[str, Any]:
    """Attempt 1 of job 2 dies after its step-3 checkpoint; attempt 2 of the same job finishes it."""
    with monkeypatch.context() as patch, attempt_of(2, 1):
        crash_after(3, patch)
        with pytest.raises(Crash):
            trainer(epochs=6, checkpoint_every=1, **options)
        assert trial.last_checkpoint()["step"] == 3
    with attempt_of(2, 2):
        result = trainer(epochs=6, checkpoint_every=1, **options)
        assert (trial.last_checkpoint()["step"], trial.last_checkpoint()["attempt"]) == (6, 2)
    assert [(a, s) for a, s, _ in reported] == [(1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6)]
    return result


# -- scikit-learn -------------------------------------------------------------------------------


def test_sgd_digits_as_a_plain_function_learns_the_digits(artifacts):
    result = training.sgd_digits(epochs=4)
    assert result["accuracy"] > 0.9
    assert result["epochs"] == 4
    assert result["model"]["artifact"].startswith((artifacts / "models" / "local").as_uri())
    assert not (artifacts / "jobs").exists()  # outside a worker nothing is checkpointed


def test_sgd_digits_resumed_after_a_crash_equals_an_uninterrupted_run(monkeypatch, reported):
    with attempt_of(1, 1):
        whole = training.sgd_digits(epochs=6, checkpoint_every=1)
    reported.clear()
    resumed = resumed_run(training.sgd_digits, monkeypatch, reported)
    assert resumed["accuracy"] == whole["accuracy"]
    a, b = model_of(whole), model_of(resumed)
    np.testing.assert_array_equal(b.coef, a.coef)
    np.testing.assert_array_equal(b.intercept, a.intercept)
    assert resumed["model"]["sha256"] == whole["model"]["sha256"]


def test_sgd_digits_model_predicts_with_the_reported_accuracy():
    result = training.sgd_digits(epochs=3, loss="log_loss", alpha=1e-3)
    model = model_of(result)
    x, y = validation_digits()
    assert float(np.mean(model.predict(x) == y)) == result["accuracy"]
    assert model.params["loss"] == "log_loss"
    assert model.metrics == {"accuracy": result["accuracy"]}


# -- PyTorch ------------------------------------------------------------------------------------


def test_torch_digits_as_a_plain_function_learns_the_digits():
    pytest.importorskip("torch")
    result = training.torch_digits(epochs=6, lr=1e-2)
    assert result["accuracy"] > 0.9
    assert result["device"] in ("cpu", "cuda")


def test_torch_digits_resumed_after_a_crash_equals_an_uninterrupted_run(monkeypatch, reported):
    pytest.importorskip("torch")
    with attempt_of(1, 1):
        whole = training.torch_digits(epochs=6, checkpoint_every=1, lr=1e-2, layers=2, hidden=32)
    reported.clear()
    resumed = resumed_run(training.torch_digits, monkeypatch, reported, lr=1e-2, layers=2, hidden=32)
    assert resumed["accuracy"] == whole["accuracy"]
    a, b = model_of(whole), model_of(resumed)
    assert len(a.layers) == len(b.layers) == 3
    for (wa, ba), (wb, bb) in zip(a.layers, b.layers):
        np.testing.assert_array_equal(wb, wa)
        np.testing.assert_array_equal(bb, ba)


def test_torch_digits_model_predicts_with_the_reported_accuracy():
    pytest.importorskip("torch")
    result = training.torch_digits(epochs=4, lr=1e-2)
    model = model_of(result)
    x, y = validation_digits()
    # the trainer's accuracy is a float32 mean: compare the count of digits it got right
    assert int(np.sum(model.predict(x) == y)) == round(result["accuracy"] * len(y))
    assert model.params["hidden"] == 64


# -- load_model ---------------------------------------------------------------------------------


def test_load_model_refuses_what_the_trainers_did_not_store():
    with pytest.raises(ValueError, match="not a model stored by clusterai's trainers"):
        training.load_model(state_codec.encode({"kind": "xgboost", "arrays": {}}))
    with pytest.raises(ValueError, match="not a model stored"):
        training.load_model(state_codec.encode(b"raw"))
