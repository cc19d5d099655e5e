"""The Celery app of the heterogeneous-pool benchmark: the same job as bench.pool_tasks.

Each of the 3 worker processes (`celery -A bench.pool_celery_app worker --concurrency 1`) gets its
speed in $SPEED. Nothing here changes Celery's prefetching: `worker_prefetch_multiplier` stays at
its default of 4, so each worker reserves up to 4 jobs ahead of the one it runs.
"""

from __future__ import annotations

import os
from typing import Any

from bench.celery_app import make_app
from bench.pool_tasks import work

app = make_app("bench_pool")


@app.task(name="bench.units")
def units(units: int, mode: str, unit_rounds: int, unit_seconds: float) -> dict[str, Any]:
    return work(units, float(os.environ["SPEED"]), mode, unit_rounds, unit_seconds)  # type: ignore[arg-type]
