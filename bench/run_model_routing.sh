#!/usr/bin/env bash
# Model-aware routing: two fake Ollama backends that hold one model at a time (2 s to load one), two
# models, one mixed stream of 200 chat completions from 4 clients, through clusterai's gateway,
# LiteLLM's proxy (least-busy) and Open WebUI (several Ollama URLs); cold loads per 100 requests and
# p50/p95 latency (see BENCHMARKS.md). LiteLLM gets a virtualenv of its own (.venv-litellm), Open WebUI
# too (.venv-openwebui, made by tests/support/openwebui.py when missing). Usage:
# bench/run_model_routing.sh [--quick] [--systems clusterai,litellm,openwebui] [--logs DIR]; about
# 6 minutes on 2 CPUs; results land in bench/results/model_routing.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install --quiet -e '.[test]'
if [ ! -x .venv-litellm/bin/litellm ]; then
    python3 -m venv .venv-litellm
    .venv-litellm/bin/python -m pip install --quiet 'litellm[proxy]'
fi
mkdir -p bench/results
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m bench.model_routing \
    --litellm .venv-litellm/bin/litellm "$@"
