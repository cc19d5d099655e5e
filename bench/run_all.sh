#!/usr/bin/env bash
# The job-plane benchmark: clusterai vs Celery + Redis vs plain Dask (see bench/README.md).
# Usage: bench/run_all.sh [--quick] [--only SECTION ...]; results land in bench/results/.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e '.[bench]'

# the Celery peer needs a Redis server; the benchmark starts a throwaway one of its own
if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update && $SUDO apt-get install -y redis-server
fi

mkdir -p bench/results
# the repository root on the path: Dask's worker processes and the Celery worker import bench.*
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m "${BENCH_MODULE:-bench.jobs}" "$@"
