"""The cluster in one answer: workers, jobs per state, queue depth per queue and priority,
throughput, latency percentiles and error rate. Served at /api/v1/cluster/status and printed by
`clusterai status`."""

from __future__ import annotations

import time
from typing import Any

from clusterai.config import AlertsSection
from clusterai.core.model import Priority, WorkerRecord
from clusterai.store.protocol import JobStore


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def cluster_status(store: JobStore, window: float, now: float | None = None,
                   alerts: AlertsSection | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    since = now - window
    workers = store.list_workers()
    live = [w for w in workers if w.status != "gone"]
    by_status: dict[str, int] = {}
    for w in live:
        by_status[w.status] = by_status.get(w.status, 0) + 1
    counts = store.job_counts()
    stats = store.stats(since)
    samples = store.recent_latencies(since)
    total = sorted(s[0] for s in samples)
    run = sorted(s[1] for s in samples)
    queues: dict[str, dict[str, Any]] = {}
    for queue, priority, state, n in store.queue_depths():
        q = queues.setdefault(queue, {"queue": queue, "queued": 0, "pending": 0, "running": 0, "by_priority": {}})
        q[state] += n
        if state == "queued":
            name = Priority(priority).name.lower()
            q["by_priority"][name] = q["by_priority"].get(name, 0) + n
    finished = stats["finished_attempts"]
    status = {
        "at": now,
        "window_seconds": window,
        "workers": {"total": len(live), "active": by_status.get("ready", 0),
                    "failed": sum(n for s, n in by_status.items() if s not in ("ready", "drained", "draining")),
                    "by_status": by_status,
                    "breakers_open": sum(w.breaker != "closed" for w in live),
                    "slots": sum(w.nthreads for w in live), "in_flight": sum(w.inflight for w in live)},
        "jobs": counts,
        "queue_depth": counts.get("queued", 0) + counts.get("pending", 0),
        "queues": sorted(queues.values(), key=lambda q: q["queue"]),
        "throughput": {"succeeded": stats["succeeded"], "per_second": stats["succeeded"] / window,
                       "per_minute": stats["succeeded"] * 60.0 / window},
        "latency": {"samples": len(total),
                    "p50": percentile(total, 0.50), "p95": percentile(total, 0.95), "p99": percentile(total, 0.99),
                    "run_p50": percentile(run, 0.50), "run_p95": percentile(run, 0.95),
                    "run_p99": percentile(run, 0.99)},
        "error_rate": stats["failed_attempts"] / finished if finished else 0.0,
        "failed_attempts": stats["failed_attempts"],
        "finished_attempts": finished,
        "retries": stats["retries"],
        "dead_letters": counts.get("dead", 0),
    }
    status["alerts"] = find_alerts(status, workers, alerts or AlertsSection(), now)
    return status


def find_alerts(status: dict[str, Any], workers: list[WorkerRecord], limits: AlertsSection,
                now: float) -> list[dict[str, Any]]:
    """What needs a look: the thresholds of `alerts:` in cluster.yaml applied to this status."""
    found: list[dict[str, Any]] = []

    def alert(kind: str, severity: str, message: str, worker: str | None = None) -> None:
        found.append({"kind": kind, "severity": severity, "message": message, "worker": worker})

    for w in workers:
        if limits.worker_down and w.status == "unresponsive":
            alert("worker_down", "critical", f"worker {w.name} does not answer", w.name)
        elif limits.worker_down and w.status == "gone" and now - w.last_seen < 3600:
            alert("worker_down", "warning", f"worker {w.name} left the cluster {now - w.last_seen:.0f} s ago", w.name)
        if w.status == "gone":
            continue
        cpu, memory = w.metrics.get("cpu", 0.0), w.metrics.get("memory_percent", 0.0)
        if cpu > limits.cpu_percent:
            alert("cpu", "warning", f"worker {w.name} CPU at {cpu:.0f} % (> {limits.cpu_percent:g} %)", w.name)
        if memory > limits.memory_percent:
            alert("memory", "warning",
                  f"worker {w.name} memory at {memory:.0f} % (> {limits.memory_percent:g} %)", w.name)
    if status["queue_depth"] > limits.queue_size:
        alert("queue", "warning", f"{status['queue_depth']} jobs waiting (> {limits.queue_size})")
    p95 = status["latency"]["p95"]
    if p95 is not None and p95 * 1000 > limits.latency_ms:
        alert("latency", "warning", f"p95 latency {p95 * 1000:.0f} ms (> {limits.latency_ms:g} ms)")
    return found


def history(store: JobStore, minutes: int, now: float | None = None) -> list[dict[str, Any]]:
    """Per minute over the last `minutes`: jobs that succeeded and their mean submit-to-finish
    latency (the dashboard's charts)."""
    now = time.time() if now is None else now
    first = int(now // 60 - minutes + 1) * 60
    rows = {int(start): (n, mean) for start, n, mean in store.per_minute(first)}
    return [{"minute": t, "succeeded": rows.get(t, (0, None))[0], "mean_latency": rows.get(t, (0, None))[1]}
            for t in range(first, int(now // 60) * 60 + 60, 60)]
