#!/usr/bin/env bash
# Placement on a heterogeneous pool (issue: placement): every clusterai strategy vs Celery + Redis
# vs plain Dask on 3 workers at 1x, 2x and 4x speed (see bench/README.md, BENCHMARKS.md).
# Usage: bench/run_placement.sh [--quick] [--mode cpu sleep] [--only SYSTEM ...] [--seed N];
# results land in bench/results/placement_pool.json.
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
# the repository root on the path: Dask's worker processes and the Celery workers import bench.*
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m bench.placement_pool "$@"
