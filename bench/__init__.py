"""Benchmarks for clusterai's job plane against Celery + Redis and plain Dask (see BENCHMARKS.md)."""
