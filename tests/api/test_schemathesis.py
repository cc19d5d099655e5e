"""Property-based requests generated from the app's own OpenAPI schema, sent over real HTTP with an
admin token: whatever they hold, the API never answers with a 5xx."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_support import WORKER, Api, running_api
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from clusterai.api.app import create_app
from clusterai.config import ClusterConfig
from clusterai.store.open import open_store


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with running_api(Path(tmp_path_factory.mktemp("schemathesis"))) as api:
        for _ in range(3):  # a few jobs, so that small ids are real ones
            api.add_job()
        api.add_worker()
        yield api


def openapi() -> dict[str, Any]:
    """The app's schema, as /openapi.json serves it (test_the_served_schema_is_this_one checks). Read
    at collection time, as schemathesis.pytest.from_fixture fails on pytest 9 (see the report)."""
    store = open_store(":memory:")
    try:
        return create_app(store, ClusterConfig()).openapi()
    finally:
        store.close()


# the event stream never ends: it has tests of its own
schema = schemathesis.openapi.from_dict(openapi()).exclude(path="/api/v1/events")


def test_the_served_schema_is_this_one(served: Api) -> None:
    assert served.client("viewer").get("/openapi.json").json() == openapi()


CALLS: list[int] = []  # statuses the generated requests got


def steer(case: schemathesis.Case) -> None:
    """Send part of the cases deeper than a random string gets: a real task, a real worker. The
    choice hangs on the case itself, so a run is repeatable (derandomize)."""
    pick = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode())
    if (case.query and "wait" in case.query) or case.path.startswith("/api/v1/workers/{name}/"):
        # GET /jobs/{id}?wait=300 would hold the answer for five minutes, and a worker command waits
        # 10 s by default for a coordinator that this test does not run
        case.query = {**(case.query or {}), "wait": 0}
    if case.path_parameters and "name" in case.path_parameters and pick % 2:
        case.path_parameters["name"] = WORKER
    if case.method == "POST" and case.path == "/api/v1/jobs" and isinstance(case.body, dict) and pick % 3:
        tasks = ("bench.noop", "primes.count", "test.sleep")
        if "task" in case.body:
            case.body["task"] = tasks[pick % 3]
        jobs = case.body.get("jobs")
        for job in jobs if isinstance(jobs, list) else []:
            if isinstance(job, dict) and "task" in job:
                job["task"] = "bench.noop"


@schema.parametrize()
# no shrinking: a failure is reported with the request that failed, at once rather than minutes later
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          phases=[Phase.explicit, Phase.generate])
def test_no_request_gets_a_server_error(case: schemathesis.Case, served: Api) -> None:
    steer(case)
    response = case.call_and_validate(base_url=served.url, headers=served.headers("admin"),
                                      checks=[not_a_server_error])
    CALLS.append(response.status_code)


def test_the_generated_requests_reached_the_server(served: Api) -> None:
    if not CALLS:
        pytest.skip("the generated tests did not run in this session")
    assert len(CALLS) > 300
    assert any(200 <= s < 300 for s in CALLS) and any(400 <= s < 500 for s in CALLS)
    assert served.store.job_counts()["queued"] > 3  # some generated submissions were valid jobs

