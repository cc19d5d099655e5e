#!/usr/bin/env bash
# The job-plane benchmark: clusterai vs Celery + Redis vs plain Dask (see bench/README.md).
# Usage: bench/run_all.sh [--quick] [--only SECTION ...]; results land in bench/results/.
# The other benchmarks run through it with BENCH_MODULE: bench/run_placement.sh (bench.placement_pool)
# and bench/run_stores.sh (bench.stores, PostgreSQL beside SQLite).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
MODULE="${BENCH_MODULE:-bench.jobs}"
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi

if [ "$MODULE" = bench.stores ]; then
    # the store benchmark (bench/run_stores.sh): psycopg (server extra) and a PostgreSQL server,
    # of which it starts a throwaway one of its own (tests/support/pgserver.py)
    .venv/bin/python -m pip install --quiet -e '.[bench]'
    if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        $SUDO apt-get update && $SUDO apt-get install -y postgresql
    fi
else
    .venv/bin/python -m pip install --quiet -e '.[bench]'
    # the Celery peer needs a Redis server; the benchmark starts a throwaway one of its own
    if ! command -v redis-server >/dev/null; then
        $SUDO apt-get update && $SUDO apt-get install -y redis-server
    fi
fi

mkdir -p bench/results
# the repository root on the path: Dask's worker processes and the Celery worker import bench.*
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m "$MODULE" "$@"
