"""Makes this interpreter a light worker: the libraries of clusterai's `server` extra (and the
workload extras) cannot be imported, as on a machine where only the core was installed."""

import importlib.abc
import sys

HEAVY = frozenset({
    "pydantic", "pydantic_core", "numpy", "fastapi", "starlette", "uvicorn", "httptools", "prometheus_client",
    "psycopg", "psycopg_pool", "psycopg_binary", "httpx", "cryptography", "cv2", "torch", "transformers",
})


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {name!r} (a light worker)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
