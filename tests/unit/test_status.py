"""The cluster status: alerts from the thresholds of cluster.yaml, and the per-minute history."""

from __future__ import annotations

import pytest

from clusterai.config import AlertsSection, parse_config
from clusterai.core.model import Finish, JobSpec, Outcome, State, WorkerRecord
from clusterai.errors import ConfigError
from clusterai.service.status import cluster_status, find_alerts, history
from clusterai.store.open import open_store


def worker(name: str, status: str = "ready", cpu: float = 10.0, memory: float = 20.0,
           last_seen: float = 1000.0) -> WorkerRecord:
    return WorkerRecord(name=name, address=f"tcp://127.0.0.1:{4000 + int(name)}", status=status, nthreads=1,
                        memory_limit=2**30, inflight=0, completed=0, failed=0, last_seen=last_seen,
                        metrics={"cpu": cpu, "memory_percent": memory})


def status(queue_depth: int = 0, p95: float | None = None) -> dict:
    return {"queue_depth": queue_depth, "latency": {"p95": p95}}


def test_the_seed_defaults_raise_each_kind_of_alert() -> None:
    limits = AlertsSection()
    assert (limits.cpu_percent, limits.memory_percent, limits.queue_size, limits.latency_ms) == (80, 85, 100, 500)
    workers = [worker("1"), worker("2", cpu=95), worker("3", memory=90), worker("4", "unresponsive"),
               worker("5", "gone", last_seen=900.0), worker("6", "gone", last_seen=-5000.0)]
    alerts = find_alerts(status(queue_depth=101, p95=0.6), workers, limits, now=1000.0)
    kinds = sorted((a["kind"], a["worker"]) for a in alerts)
    assert kinds == [("cpu", "2"), ("latency", None), ("memory", "3"), ("queue", None), ("worker_down", "4"),
                     ("worker_down", "5")]  # a worker gone for over an hour no longer alerts
    assert next(a for a in alerts if a["worker"] == "4")["severity"] == "critical"
    assert find_alerts(status(queue_depth=100, p95=0.5), [worker("1", cpu=80, memory=85)], limits, 1000.0) == []


def test_thresholds_come_from_cluster_yaml_and_are_checked() -> None:
    conf = parse_config({"alerts": {"cpu_percent": 50, "queue_size": 5, "worker_down": False}})
    alerts = find_alerts(status(queue_depth=6), [worker("1", cpu=60), worker("2", "unresponsive")], conf.alerts,
                         1000.0)
    assert sorted(a["kind"] for a in alerts) == ["cpu", "queue"]
    with pytest.raises(ConfigError, match="alerts.cpu_percent"):
        parse_config({"alerts": {"cpu_percent": 150}})


def test_status_and_history_read_the_store(tmp_path) -> None:
    store = open_store(tmp_path / "s.db")
    jobs = store.submit_many([JobSpec(task="t", payload={"n": i}) for i in range(3)], 1000.0)
    started = store.start_attempts([(j.id, "w") for j in jobs[:2]], 1001.0, 1100.0)
    store.finish_attempts([Finish(j.id, j.attempt, Outcome.SUCCEEDED, State.SUCCEEDED, result_json="1")
                           for j in started], 1061.0)
    s = cluster_status(store, 120.0, now=1100.0)
    assert s["jobs"]["succeeded"] == 2 and s["queue_depth"] == 1
    assert [a["kind"] for a in s["alerts"]] == ["latency"]  # 61 s from submit to finish
    assert s["latency"]["p50"] == pytest.approx(61.0)
    minutes = history(store, 3, now=1100.0)
    assert [m["minute"] for m in minutes] == [960, 1020, 1080]
    assert [m["succeeded"] for m in minutes] == [0, 2, 0] and minutes[1]["mean_latency"] == pytest.approx(61.0)
