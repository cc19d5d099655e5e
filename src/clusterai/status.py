"""The cluster in one answer: workers, jobs per state, queue depth per queue and priority,
throughput, latency percentiles and error rate. Served at /api/v1/cluster/status and printed by
`clusterai status`."""

from __future__ import annotations

import time
from typing import Any

from clusterai.jobs.model import Priority
from clusterai.jobs.store import JobStore


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def cluster_status(store: JobStore, window: float, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    since = now - window
    workers = store.list_workers()
    live = [w for w in workers if w.status != "gone"]
    by_status: dict[str, int] = {}
    for w in live:
        by_status[w.status] = by_status.get(w.status, 0) + 1
    counts = store.counts()
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
    return {
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
