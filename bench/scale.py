"""100,000 queued jobs: the cost of one claim against a 1,000-job queue, and the memory of the
process hosting the coordinator while it runs all of them."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import clusterai
from bench.clusterai_jobs import config
from bench.common import RssSampler, log, rss_mb, sized
from clusterai.config import ClusterConfig
from clusterai.core.model import Job, Outcome, decide
from clusterai.core.tasks import import_task_modules
from clusterai.service.submission import build_spec
from clusterai.store import JobStore, open_store

LARGE = sized(100_000)
SMALL = sized(1_000)
CLAIM_BATCH = min(500, SMALL // 2)  # what one dispatch round claims for a batch of short jobs
CLAIM_REPEATS = 30
SUBMIT_CHUNK = 10_000


def store_url(store_dir: str | Path) -> str:
    return f"sqlite:///{Path(store_dir).resolve()}/clusterai.db"


def _fill(url: str, n: int) -> tuple[int, int]:
    """Queue n no-op jobs; returns the first and last id. Runs in its own process (see fill)."""
    import_task_modules(())
    spec = build_spec(ClusterConfig(), "bench.noop", {})
    store = open_store(url)
    first = last = 0
    try:
        for done in range(0, n, SUBMIT_CHUNK):
            jobs = store.submit_many([spec] * min(SUBMIT_CHUNK, n - done), time.time())
            first, last = first or jobs[0].id, jobs[-1].id
    finally:
        store.close()
    return first, last


def fill(url: str, n: int) -> tuple[int, int]:
    # In a child process, so the 100,000 Job objects it builds never count towards our RSS.
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_fill, url, n).result()


# -- claim latency ----------------------------------------------------------------------------


def claim_once(store: JobStore) -> tuple[float, float]:
    """One dispatch round's store work (fetch_ready + start_attempts), timed; then undone."""
    started = time.perf_counter()
    jobs = store.fetch_ready(CLAIM_BATCH)
    fetched = time.perf_counter()
    now = time.time()
    running = store.start_attempts([(j.id, "tcp://bench-claim:1") for j in jobs], now, now + 30)
    claimed = time.perf_counter()
    if len(running) != CLAIM_BATCH:
        raise RuntimeError(f"claimed {len(running)} of {CLAIM_BATCH} jobs")
    _give_back(store, running)
    return fetched - started, claimed - fetched


def _give_back(store: JobStore, jobs: list[Job]) -> None:
    # What a restarted coordinator does with attempts it did not finish: they go back to the
    # queue as they were, so every repeat claims from a queue of the same length.
    now = time.time()
    store.finish_attempts([decide(j, Outcome.ABANDONED, now=now) for j in jobs], now)


def _summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    def median_ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 3)

    return {
        "fetch_ms": median_ms([f for f, _ in samples]),
        "start_ms": median_ms([s for _, s in samples]),
        "claim_ms": median_ms([f + s for f, s in samples]),
        "claim_max_ms": round(max(f + s for f, s in samples) * 1000, 3),
    }


def claim() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clusterai-claim-") as tmp:
        urls = {LARGE: store_url(Path(tmp, "large")), SMALL: store_url(Path(tmp, "small"))}
        for n, url in urls.items():
            log(f"claim: queueing {n} jobs")
            fill(url, n)
        stores = {n: open_store(url) for n, url in urls.items()}
        try:
            for store in stores.values():
                claim_once(store)  # warm SQLite's page cache: we time claims, not a cold disk
            samples: dict[int, list[tuple[float, float]]] = {n: [] for n in stores}
            for _ in range(CLAIM_REPEATS):  # interleaved, so that machine noise hits both alike
                for n, store in stores.items():
                    samples[n].append(claim_once(store))
        finally:
            for store in stores.values():
                store.close()
    large, small = _summary(samples[LARGE]), _summary(samples[SMALL])
    return {
        "batch": CLAIM_BATCH,
        "repeats": CLAIM_REPEATS,
        "queued_large": LARGE,
        "queued_small": SMALL,
        "large": large,
        "small": small,
        "ratio": round(large["claim_ms"] / small["claim_ms"], 2),
    }


# -- coordinator memory with 100,000 jobs queued ----------------------------------------------


def _wait_for_all(c: clusterai.Client, first: int, last: int) -> None:
    c.wait(range(first, last + 1), timeout=600)


def _poll_counts(c: clusterai.Client, first: int, last: int) -> None:
    # no per-job bookkeeping on the client's side: what is left is the coordinator's own memory
    while c.counts()["succeeded"] < last - first + 1:
        time.sleep(0.2)


def _memory(finish: Callable[[clusterai.Client, int, int], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clusterai-100k-") as tmp:
        log(f"memory: queueing {LARGE} jobs before the cluster starts")
        first, last = fill(store_url(tmp), LARGE)
        baseline = rss_mb()
        with RssSampler() as sampler, clusterai.connect(config(tmp)) as c:
            connected = rss_mb()
            log(f"memory: running {LARGE} queued jobs ({finish.__name__.strip('_')})")
            started = time.perf_counter()
            finish(c, first, last)
            elapsed = time.perf_counter() - started
            counts = c.counts()
    if counts["succeeded"] != LARGE:
        raise RuntimeError(f"memory: not every job succeeded: {counts}")
    return {
        "jobs": LARGE,
        "rss_before_connect_mb": baseline,
        "rss_after_connect_mb": connected,
        "rss_peak_mb": round(sampler.peak / 2**20, 1),
        "rss_samples": sampler.samples,
        "seconds": round(elapsed, 2),
        "jobs_per_s": round(LARGE / elapsed, 1),
    }


def memory() -> dict[str, Any]:
    """The issue's case: connect(), then wait() on all 100,000 jobs."""
    return _memory(_wait_for_all)


def memory_no_wait() -> dict[str, Any]:
    """The same run, polling counts() instead of wait(): the coordinator's share of the memory."""
    return _memory(_poll_counts)
