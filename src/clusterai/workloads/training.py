"""Built-in trainers, as tasks a sweep can name as its objective (or anyone can submit as jobs):

- `train.sgd_digits`: scikit-learn's SGDClassifier trained epoch by epoch with `partial_fit` on the
  digits data set that ships with scikit-learn (1,797 8x8 images, 10 classes);
- `train.torch_digits`: a small PyTorch MLP on the same data, on CPU (on a GPU when the worker has one).

Both report validation accuracy every epoch (`trial.report`), checkpoint every `checkpoint_every`
epochs and resume from the last checkpoint when an attempt is retried on another worker: the data
split and each epoch's shuffle depend only on the seed and the epoch, so a resumed run computes
what an uninterrupted one would have. The trained model is stored as an artifact (no pickle: arrays
and JSON, loaded back with `load_model`) and its reference returned as `model`. `pace_s` waits that
long per epoch: it stands in for a bigger model in demos and kill tests.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Annotated, Any, Literal

import numpy as np

from clusterai.core import state_codec
from clusterai.core.artifacts import ArtifactStore
from clusterai.core.tasks import Range, task
from clusterai.worker import trial
from clusterai.worker.execute import current_job

VALIDATION_SHARE = 0.25


@lru_cache(maxsize=1)
def _split() -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """The digits in a fixed order, the training share's size, and its mean and spread per pixel."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].astype(np.float32), y[order]
    cut = int(len(y) * (1 - VALIDATION_SHARE))
    return x, y, cut, x[:cut].mean(axis=0), x[:cut].std(axis=0) + 1e-6


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train X, train y, validation X, validation y), standardised with the training statistics;
    the same split on every worker."""
    x, y, cut, _, _ = _split()
    x = _standardise(x)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def validation_digits() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits as raw pixels and labels: what a stored model's `predict` takes."""
    x, y, cut, _, _ = _split()
    return x[cut:], y[cut:]


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _save_model(kind: str, arrays: dict[str, Any], params: dict[str, Any], metrics: dict[str, float]
                ) -> dict[str, Any]:
    job = current_job()
    folder = trial.namespace(job) if job is not None else "models/local"
    body = state_codec.encode({"kind": kind, "params": params, "metrics": metrics, "arrays": arrays})
    return ArtifactStore().put_bytes(folder, "model.bin", body)


def load_model(data: bytes) -> Any:
    """A model these trainers stored (its artifact's bytes), ready to `predict(x)` on raw 8x8 digits."""
    model = state_codec.decode(data)
    if not isinstance(model, dict) or model.get("kind") not in _PREDICTORS:
        raise ValueError("not a model stored by clusterai's trainers")
    return _PREDICTORS[model["kind"]](model)


class _LinearDigits:
    def __init__(self, model: dict[str, Any]):
        self.params, self.metrics = model["params"], model["metrics"]
        a = model["arrays"]
        self.coef, self.intercept, self.classes = a["coef"], a["intercept"], a["classes"]

    def predict(self, x: np.ndarray) -> np.ndarray:
        scores = _standardise(x) @ self.coef.T + self.intercept
        return np.asarray(self.classes)[np.argmax(scores, axis=1)]


class _MlpDigits:
    def __init__(self, model: dict[str, Any]):
        self.params, self.metrics = model["params"], model["metrics"]
        self.layers = [(w, b) for w, b in model["arrays"]["layers"]]

    def predict(self, x: np.ndarray) -> np.ndarray:
        h = _standardise(x)
        for i, (w, b) in enumerate(self.layers):
            h = h @ np.asarray(w).T + np.asarray(b)
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        return np.argmax(h, axis=1)


def _standardise(x: np.ndarray) -> np.ndarray:
    _, _, _, mean, scale = _split()
    return (np.asarray(x, dtype=np.float32).reshape(len(x), -1) - mean) / scale


_PREDICTORS = {"sgd_digits": _LinearDigits, "torch_digits": _MlpDigits}

Epochs = Annotated[int, Range(1, 1000)]
Pace = Annotated[float, Range(0, 600)]


@task("train.sgd_digits", retries=3)
def sgd_digits(alpha: Annotated[float, Range(gt=0, le=1)] = 1e-4,
               loss: Literal["hinge", "log_loss", "modified_huber", "perceptron"] = "hinge",
               penalty: Literal["l2", "l1", "elasticnet"] = "l2",
               learning_rate: Literal["optimal", "constant", "invscaling", "adaptive"] = "optimal",
               eta0: Annotated[float, Range(gt=0, le=10)] = 0.01,
               epochs: Epochs = 20, batch_size: Annotated[int, Range(1, 4096)] = 64,
               checkpoint_every: Annotated[int, Range(1, 1000)] = 1, seed: Annotated[int, Range(0, 2**31)] = 0,
               pace_s: Pace = 0.0) -> dict[str, Any]:
    """A linear classifier of digits by stochastic gradient descent; validation accuracy per epoch."""
    from sklearn.linear_model import SGDClassifier

    params = {"alpha": alpha, "loss": loss, "penalty": penalty, "learning_rate": learning_rate, "eta0": eta0,
              "epochs": epochs, "batch_size": batch_size, "seed": seed}
    x, y, vx, vy = digits()
    model = SGDClassifier(alpha=alpha, loss=loss, penalty=penalty, learning_rate=learning_rate, eta0=eta0,
                          random_state=seed)
    classes = np.unique(y)
    start, accuracy = 0, 0.0
    state = trial.restore()
    if state is not None:
        start, accuracy = int(state["epoch"]), float(state["accuracy"])
        model.coef_, model.intercept_ = state["coef"], state["intercept"]
        model.classes_, model.t_ = classes, float(state["t"])
    for epoch in range(start, epochs):
        started = time.monotonic()
        for batch in _batches(len(y), batch_size, seed, epoch):
            model.partial_fit(x[batch], y[batch], classes=classes)
        accuracy = float(model.score(vx, vy))
        _pace(pace_s, started)
        trial.report(epoch + 1, accuracy=accuracy)
        if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs:
            trial.checkpoint({"epoch": epoch + 1, "accuracy": accuracy, "coef": model.coef_,
                              "intercept": model.intercept_, "t": float(model.t_)}, step=epoch + 1)
    ref = _save_model("sgd_digits", {"coef": model.coef_, "intercept": model.intercept_, "classes": classes},
                      params, {"accuracy": accuracy})
    return {"accuracy": accuracy, "epochs": epochs, "model": ref}


@task("train.torch_digits", retries=3)
def torch_digits(hidden: Annotated[int, Range(4, 1024)] = 64, layers: Annotated[int, Range(1, 4)] = 1,
                 lr: Annotated[float, Range(gt=0, le=1)] = 1e-3, weight_decay: Annotated[float, Range(0, 1)] = 0.0,
                 epochs: Epochs = 20, batch_size: Annotated[int, Range(1, 4096)] = 64,
                 checkpoint_every: Annotated[int, Range(1, 1000)] = 1, seed: Annotated[int, Range(0, 2**31)] = 0,
                 pace_s: Pace = 0.0) -> dict[str, Any]:
    """A PyTorch MLP (ReLU, Adam) on digits; on the worker's GPU when it has one."""
    import torch

    params = {"hidden": hidden, "layers": layers, "lr": lr, "weight_decay": weight_decay, "epochs": epochs,
              "batch_size": batch_size, "seed": seed}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    x, y, vx, vy = (torch.as_tensor(a).to(device) for a in digits())
    sizes = [x.shape[1], *([hidden] * layers), 10]
    blocks: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        blocks.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            blocks.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*blocks).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    start, accuracy = 0, 0.0
    state = trial.restore()
    if state is not None:
        start, accuracy = int(state["epoch"]), float(state["accuracy"])
        net.load_state_dict({k: torch.as_tensor(v) for k, v in state["net"].items()})
        optimiser.load_state_dict(_optimiser_from_json(json.loads(state["optimiser"]), state["tensors"], torch))
    for epoch in range(start, epochs):
        started = time.monotonic()
        net.train()
        for batch in _batches(len(y), batch_size, seed, epoch):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
            optimiser.step()
        net.eval()
        with torch.no_grad():
            accuracy = float((net(vx).argmax(dim=1) == vy).float().mean())
        _pace(pace_s, started)
        trial.report(epoch + 1, accuracy=accuracy)
        if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs:
            layout, tensors = _optimiser_to_json(optimiser.state_dict())
            trial.checkpoint({"epoch": epoch + 1, "accuracy": accuracy, "net": net.state_dict(),
                              "optimiser": json.dumps(layout), "tensors": tensors}, step=epoch + 1)
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    ref = _save_model("torch_digits", {"layers": [[m.weight, m.bias] for m in linear]}, params,
                      {"accuracy": accuracy})
    return {"accuracy": accuracy, "epochs": epochs, "model": ref, "device": device.type}


def _optimiser_to_json(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An optimiser's state_dict (integer keys, tensors) as JSON plus a flat dict of tensors."""
    tensors: dict[str, Any] = {}
    per_param = {}
    for key, values in state["state"].items():
        entry = {}
        for name, value in values.items():
            if hasattr(value, "detach"):
                tensors[f"{key}.{name}"] = value
                entry[name] = {"tensor": f"{key}.{name}"}
            else:
                entry[name] = value
        per_param[str(key)] = entry
    return {"state": per_param, "param_groups": state["param_groups"]}, tensors


def _optimiser_from_json(layout: dict[str, Any], tensors: dict[str, Any], torch: Any) -> dict[str, Any]:
    per_param = {}
    for key, values in layout["state"].items():
        per_param[int(key)] = {name: torch.as_tensor(tensors[value["tensor"]]) if isinstance(value, dict)
                               and "tensor" in value else value for name, value in values.items()}
    return {"state": per_param, "param_groups": layout["param_groups"]}


def _pace(pace_s: float, started: float) -> None:
    left = pace_s - (time.monotonic() - started)
    if left > 0:
        time.sleep(left)
