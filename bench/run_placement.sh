#!/usr/bin/env bash
# Placement on a heterogeneous pool (issue: placement): every clusterai strategy vs Celery + Redis
# vs plain Dask on 3 workers at 1x, 2x and 4x speed (see bench/README.md, BENCHMARKS.md).
# Usage: bench/run_placement.sh [--quick] [--mode cpu sleep] [--only SYSTEM ...] [--seed N];
# results land in bench/results/placement_pool.json. Same set-up as run_all.sh.
BENCH_MODULE=bench.placement_pool exec "$(dirname "$0")/run_all.sh" "$@"
