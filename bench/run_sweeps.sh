#!/usr/bin/env bash
# Hyper-parameter sweeps (issue: training; see BENCHMARKS.md): clusterai's sweeps beside Optuna on plain
# Dask (DaskStorage) and Ray Tune (OptunaSearch), same objective (train.sgd_digits), space, trials and
# TPE sampler, on 1 and 2 worker processes, then a worker SIGKILLed mid-sweep (clusterai, Optuna + Dask).
# Usage: bench/run_sweeps.sh [--trials 32] [--epochs 20] [--peers clusterai,optuna_dask,ray_tune,ray_tune_reuse]
#        [--rounds N] [--skip-kill] [--out FILE]; results land in bench/results/sweeps.json. The tiny
# check (--trials 4 --epochs 2) took 80 s on 2 CPUs; the defaults are estimated at about 8 minutes.
# Needs the `bench` extra (scikit-learn, Optuna, optuna-integration); Ray Tune is installed here if it is
# missing and can be (its peer is skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
if ! .venv/bin/python -c 'import clusterai, sklearn, optuna, optuna_integration.dask, distributed' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet -e '.[bench]'
fi
if ! .venv/bin/python -c 'import ray.tune' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet 'ray[tune]' || echo "ray[tune] not installed: its peer is skipped" >&2
fi
mkdir -p bench/results
# the repository root on the path: the Dask and Ray worker processes import bench.sweeps
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m bench.sweeps "$@"
