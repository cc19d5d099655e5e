#!/usr/bin/env bash
# Model-aware routing: two fake Ollama backends that hold one model at a time (2 s to load one), two
# models, one mixed stream of 200 chat completions from 4 clients, through clusterai's gateway,
# LiteLLM's proxy (least-busy) and Open WebUI (several Ollama URLs); cold loads per 100 requests and
# p50/p95 latency (see BENCHMARKS.md). LiteLLM gets a virtualenv of its own (.venv-litellm), Open WebUI
# too (.venv-openwebui, made by tests/support/openwebui.py when missing). Usage:
# bench/run_model_routing.sh [--quick] [--systems clusterai,litellm,openwebui] [--logs DIR]; about
# 6 minutes on 2 CPUs; results land in bench/results/model_routing.json.
BENCH_MODULE=bench.model_routing exec "$(dirname "$0")/run_gateway.sh" "$@"
