"""clusterai: pool every machine a team has into one cluster and run AI work across it.

Names are imported on first use, so a light worker (Dask and psutil, no pydantic or web stack)
can load the parts it needs without the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Client": "clusterai.sdk.local",
    "connect": "clusterai.sdk.local",
    "current_job": "clusterai.worker.execute",
    "ClusterAIError": "clusterai.errors",
    "ConfigError": "clusterai.errors",
    "IdempotencyConflict": "clusterai.errors",
    "JobFailed": "clusterai.errors",
    "NonRetryableError": "clusterai.errors",
    "PayloadError": "clusterai.errors",
    "ResultTimeout": "clusterai.errors",
    "UnknownTaskError": "clusterai.errors",
    "Job": "clusterai.core.model",
    "Priority": "clusterai.core.model",
    "State": "clusterai.core.model",
    "Pipeline": "clusterai.core.pipelines",
    "Stage": "clusterai.core.pipelines",
    "RunNotFound": "clusterai.errors",
    "task": "clusterai.core.tasks",
    "dask_client": "clusterai.sdk.dask_access",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clusterai' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
