#!/usr/bin/env bash
# The gateway's added latency and requests/s against a minimal upstream, beside a direct call and
# LiteLLM's proxy (see BENCHMARKS.md). LiteLLM gets a virtualenv of its own (.venv-litellm), so its
# dependencies never touch clusterai's. Usage: bench/run_gateway.sh [--quick]; about 3 minutes on
# 2 CPUs; results land in bench/results/gateway.json. bench/run_model_routing.sh runs through it with
# BENCH_MODULE=bench.model_routing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install --quiet -e '.[test]'
if [ ! -x .venv-litellm/bin/litellm ]; then
    python3 -m venv .venv-litellm
    .venv-litellm/bin/python -m pip install --quiet 'litellm[proxy]'
fi
mkdir -p bench/results
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m "${BENCH_MODULE:-bench.gateway}" \
    --litellm .venv-litellm/bin/litellm "$@"
