"""The Celery app of the benchmark: broker and result backend on the throwaway Redis.

The worker subprocess imports this module (`celery -A bench.celery_app worker`) and finds the
Redis URL in $BENCH_REDIS_URL; the benchmark process sets the variable before importing it.
"""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")



def make_app(name: str) -> Celery:
    """A Celery app on the throwaway Redis, JSON only (the same rules as clusterai: no pickle)."""
    app = Celery(name, broker=REDIS_URL, backend=REDIS_URL)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app("bench")


@app.task(name="bench.noop")
def noop() -> None:
    return None
