#!/usr/bin/env bash
# Autoscaling (issue 17, see BENCHMARKS.md): clusterai's autoscaler against plain Dask's Adaptive on a
# square wave of short jobs (real clusters, 1-4 worker processes, 2 rounds each, taking turns), then a
# simulation of the decision engine on a daily pattern with a recurring peak (reactive vs predictive).
# Usage: bench/run_autoscale.sh [--quick] [--only clusterai dask simulation] [--start-s S];
# about 7 minutes on 2 CPUs; results land in bench/results/autoscale.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
# clusterai and its dask/distributed: installed once, not re-resolved on every run
if ! .venv/bin/python -c 'import clusterai, distributed, psutil' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet -e .
fi
mkdir -p bench/results
# the repository root on the path: the worker processes of both systems import bench.autoscale_tasks
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m bench.autoscale "$@"
