#!/usr/bin/env bash
# Pipeline overhead (see BENCHMARKS.md): trivial stages called directly, as jobs orchestrated by
# hand, and as a pipeline; the video-analysis stages in a loop versus the pipeline on 1 and 2
# workers. Usage: bench/run_pipelines.sh [--quick] [--rounds N]; about 4 minutes on 2 CPUs;
# results land in bench/results/pipelines.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install --quiet -e '.[test]'
mkdir -p bench/results
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m bench.pipelines "$@"
