"""/metrics over real HTTP: the store's figures as they are, the API's own request counts, and the
coordinator's registry served beside them."""

from __future__ import annotations

import time

import httpx
from api_support import Api, ApiFactory
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from clusterai.core.model import Outcome, Priority, State, decide
from clusterai.head.metrics import Metrics
from clusterai.placement import WorkerSlot

SEED = ("cluster_active_workers", "cluster_total_tasks", "cluster_failed_tasks", "cluster_response_time",
        "worker_cpu_usage", "worker_memory_usage", "worker_gpu_memory", "worker_active_tasks")


def scrape(c: httpx.Client) -> tuple[str, list[Sample]]:
    r = c.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = [s for family in text_string_to_metric_families(r.text) for s in family.samples]
    return r.text, samples


def values(samples: list[Sample], name: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels[k] for k in labels): s.value for s in samples if s.name == name}


def make_mix(api: Api) -> None:
    """Jobs in every state, in two queues and three priorities."""
    c = api.client("operator")
    for body in [{"task": "bench.noop"}, {"task": "bench.noop", "priority": "high"},
                 {"task": "bench.noop", "queue": "gpu", "priority": "critical"},
                 {"task": "bench.noop", "queue": "gpu", "priority": "critical"},
                 {"task": "bench.noop", "queue": "gpu", "delay": 3600},
                 {"task": "bench.noop", "priority": "low", "delay": 3600}]:
        assert c.post("/api/v1/jobs", json=body).status_code == 201
    cancelled = api.add_job()
    assert c.delete(f"/api/v1/jobs/{cancelled.id}").status_code == 200
    api.finish(api.add_job().id, Outcome.SUCCEEDED, State.SUCCEEDED, result=1)
    api.finish(api.add_job().id, Outcome.SUCCEEDED, State.SUCCEEDED, result=2)
    api.finish(api.add_job(retries=0).id, Outcome.FAILED, State.DEAD, error="boom")
    running = api.add_job(queue="gpu", priority="high")
    now = time.time()
    assert api.store.start_attempts([(running.id, "w1")], now, now + 30)


def test_job_gauges_equal_the_store(api: Api) -> None:
    make_mix(api)
    c = api.client("viewer")
    _, samples = scrape(c)
    jobs = values(samples, "clusterai_jobs", "state")
    assert {k[0]: v for k, v in jobs.items()} == api.store.job_counts()
    assert api.store.job_counts() == {"pending": 2, "queued": 4, "running": 1, "succeeded": 2, "dead": 1,
                                  "cancelled": 1}
    depth = values(samples, "clusterai_queue_depth", "queue", "priority", "state")
    want = {(q, Priority(p).name.lower(), s): float(n) for q, p, s, n in api.store.queue_depths()}
    assert depth == want
    assert depth == {("default", "normal", "queued"): 1, ("default", "high", "queued"): 1,
                     ("default", "low", "pending"): 1, ("gpu", "critical", "queued"): 2,
                     ("gpu", "normal", "pending"): 1, ("gpu", "high", "running"): 1}
    # it follows the store: one more job, one fewer queued after a cancel
    job = api.add_job(queue="gpu", priority="critical")
    api.store.cancel(job.id, time.time())
    api.add_job(queue="gpu", priority="critical")
    _, samples = scrape(c)
    assert values(samples, "clusterai_queue_depth", "queue", "priority", "state")[("gpu", "critical", "queued")] == 3
    assert values(samples, "clusterai_jobs", "state")[("cancelled",)] == 2


def test_worker_gauge_follows_the_registry(api: Api) -> None:
    c = api.client("viewer")
    _, samples = scrape(c)
    assert values(samples, "clusterai_workers", "status") == {}
    api.set_workers(("w1", "tcp://127.0.0.1:1", "ready"), ("w2", "tcp://127.0.0.1:2", "draining"),
                    ("w3", "tcp://127.0.0.1:3", "ready"))
    _, samples = scrape(c)
    assert values(samples, "clusterai_workers", "status") == {("ready",): 2, ("draining",): 1}
    api.set_workers(("w1", "tcp://127.0.0.1:1", "ready"))  # the others left
    _, samples = scrape(c)
    assert values(samples, "clusterai_workers", "status") == {("ready",): 1, ("gone",): 2}


def test_sweep_gauges_follow_the_store(api: Api) -> None:
    from clusterai.core.trials import ModelVersion
    from clusterai.service.submission import spec_factory

    c = api.client("viewer")
    _, samples = scrape(c)
    assert values(samples, "clusterai_sweeps", "state")[("running",)] == 0
    now = time.time()
    spec = {"objective": "bench.noop", "metric": "score"}
    running = api.store.create_sweep("a", spec, now)
    done = api.store.create_sweep("b", spec, now)
    make = spec_factory(api.config, "bench.noop")
    api.store.add_trials(running, [(n, {}, make({}, idempotency_key=f"a{n}")) for n in range(3)], now)
    api.store.add_trials(done, [(0, {}, make({}, idempotency_key="b0"))], now)
    api.store.finish_trials([(running, 0, "pruned", 0.1, "median"), (done, 0, "succeeded", 0.5, None)], now)
    api.store.update_sweep(done, "succeeded", now, best=0, register=ModelVersion(
        name="m", version=0, artifact={"artifact": "file:///x", "size": 1, "sha256": "0" * 64}, created_at=0.0))
    _, samples = scrape(c)
    assert values(samples, "clusterai_sweeps", "state") == {("running",): 1, ("succeeded",): 1, ("failed",): 0,
                                                            ("cancelled",): 0}
    trials = values(samples, "clusterai_sweep_trials", "state")  # of running sweeps only
    assert trials[("running",)] == 2 and trials[("pruned",)] == 1 and trials[("succeeded",)] == 0
    assert values(samples, "clusterai_model_versions") == {(): 1}


def test_request_counts(api: Api) -> None:
    c = api.client("viewer")
    for _ in range(7):
        assert c.get("/api/v1/whoami").status_code == 200
    for _ in range(2):
        assert c.get("/api/v1/jobs/12345").status_code == 404
    assert c.post("/api/v1/jobs", json={"task": "bench.noop"}).status_code == 403
    assert api.client().get("/api/v1/whoami").status_code == 401
    assert api.client().get("/no/such/route").status_code == 404
    _, samples = scrape(c)
    counts = values(samples, "clusterai_http_requests_total", "method", "route", "status")
    assert counts[("GET", "/api/v1/whoami", "200")] == 7
    assert counts[("GET", "/api/v1/jobs/{job_id}", "404")] == 2  # by route template, not by path
    assert counts[("POST", "/api/v1/jobs", "403")] == 1
    assert counts[("GET", "/api/v1/whoami", "401")] == 1
    assert counts[("GET", "unmatched", "404")] == 1
    assert ("GET", "/metrics", "200") not in counts  # a scrape is counted once it has answered
    _, samples = scrape(c)
    counts = values(samples, "clusterai_http_requests_total", "method", "route", "status")
    assert counts[("GET", "/metrics", "200")] == 1
    assert counts[("GET", "/api/v1/whoami", "200")] == 7
    seconds = values(samples, "clusterai_http_request_seconds_count", "route")
    assert seconds[("/api/v1/whoami",)] == 8  # every whoami, whatever its status


def test_seed_metrics_are_declared_without_a_coordinator_registry(api: Api) -> None:
    """No coordinator registry given: the store gauges only, and none of the coordinator's."""
    text, samples = scrape(api.client("viewer"))
    assert "# TYPE clusterai_jobs gauge" in text
    assert "cluster_active_workers" not in text


def test_the_coordinator_registry_is_served(api_factory: ApiFactory) -> None:
    m = Metrics()
    api = api_factory(coordinator_registry=m.registry)
    c = api.client("viewer")
    text, samples = scrape(c)
    for name in SEED:
        kind = {"cluster_total_tasks": "counter", "cluster_failed_tasks": "counter",
                "cluster_response_time": "histogram"}.get(name, "gauge")
        exposed = f"{name}_total" if kind == "counter" else name  # the text format names counters so
        assert f"# HELP {exposed} " in text, name
        assert f"# TYPE {exposed} {kind}\n" in text, name
    assert values(samples, "cluster_active_workers") == {(): 0.0}

    # outcomes as the coordinator records them: real jobs, and the decision the coordinator takes
    ok = api.add_job("primes.count", {"limit": 10})
    flaky = api.add_job("primes.count", {"limit": 11}, retries=2)
    doomed = api.add_job("primes.count", {"limit": 12}, retries=0)
    now = time.time()
    for job, outcome in ((ok, Outcome.SUCCEEDED), (flaky, Outcome.FAILED), (doomed, Outcome.FAILED)):
        [running] = api.store.start_attempts([(job.id, "w1")], now, now + 30)
        finish = decide(running, outcome, now=now + 0.5, error=None if outcome is Outcome.SUCCEEDED else "boom")
        assert api.store.finish_attempts([finish], now + 0.5) == [True]
        m.observe_outcome(running, finish, 0.01, now + 0.5)
    m.observe_workers([WorkerSlot(address="tcp://127.0.0.1:1", name="w1", nthreads=2, jobs=1,
                                  metrics={"cpu": 55.0, "memory_percent": 20.0, "gpu_memory": 1024.0}),
                       WorkerSlot(address="tcp://127.0.0.1:2", name="w2", nthreads=2, status="gone")], now)

    _, samples = scrape(c)
    assert values(samples, "cluster_total_tasks_total", "outcome") == {("succeeded",): 1, ("failed",): 2}
    assert values(samples, "cluster_failed_tasks_total", "task") == {("primes.count",): 2}
    assert values(samples, "clusterai_job_retries_total", "task") == {("primes.count",): 1}
    assert values(samples, "clusterai_dead_letters_total", "task") == {("primes.count",): 1}
    counts = values(samples, "clusterai_job_duration_seconds_count", "task", "state")
    assert counts == {("primes.count", "succeeded"): 1, ("primes.count", "dead"): 1}
    sums = values(samples, "clusterai_job_duration_seconds_sum", "task", "state")
    assert 0.5 <= sums[("primes.count", "succeeded")] < 5
    response = values(samples, "cluster_response_time_count", "task")
    assert response == {("primes.count",): 3}
    assert abs(values(samples, "cluster_response_time_sum", "task")[("primes.count",)] - 0.03) < 1e-9
    assert values(samples, "cluster_active_workers") == {(): 1.0}
    assert values(samples, "worker_cpu_usage", "worker") == {("w1",): 55.0}
    assert values(samples, "worker_memory_usage", "worker") == {("w1",): 20.0}
    assert values(samples, "worker_gpu_memory", "worker") == {("w1",): 1024.0}
    assert values(samples, "worker_active_tasks", "worker") == {("w1",): 1.0}
    # the store's view in the same answer agrees with what was committed
    assert values(samples, "clusterai_jobs", "state")[("dead",)] == 1
    assert values(samples, "clusterai_jobs", "state")[("pending",)] == 1


def test_metrics_need_a_reading_token(api: Api) -> None:
    assert api.client().get("/metrics").status_code == 401
    assert api.client("submitter").get("/metrics").status_code == 403
