#!/usr/bin/env bash
# HTTP submission benchmark (issue: REST API): POST /api/v1/jobs on loopback, one job a request
# (1, 4 and 16 clients) and batches of 100 and 1,000, against the API alone (uvicorn in a process
# of its own on a fresh SQLite store, no workers), each server variant in turn (see BENCHMARKS.md).
# Usage: bench/run_http.sh [--duration S] [--clients 1 4 16] [--batch-sizes 100 1000]
#        [--servers asyncio+httptools uvloop+httptools asyncio+h11] [--floor] [--profile DIR] [--quick];
# about 4 minutes with the defaults; results land in bench/results/http_submit.json.
# Same set-up as run_all.sh, less Redis (no peer here); uvloop is installed for its variant.
#
# bench/run_http.sh --round-trip [--variant NAME=PATH ...] [--rounds 3] [--store sqlite|postgres] ...:
# the whole head in one process as `clusterai up` runs it (API + coordinator + 2 Dask worker processes),
# 8 clients submitting while one more measures submit-to-result round trips over HTTP; each variant is
# a source tree (a `git worktree add /tmp/before <commit>` for a before/after run); see
# bench/http_round_trip.py. Results land in bench/results/http_round_trip.json.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e .
# not a dependency of clusterai: only the uvloop+httptools variant needs it (skipped without it)
if ! .venv/bin/python -c 'import uvloop' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet uvloop || echo "uvloop not installed: its variant is skipped" >&2
fi

MODULE=bench.http_submit
if [ "${1:-}" = --round-trip ]; then
    shift
    MODULE=bench.http_round_trip
    case " $* " in
        *" --store postgres "*) .venv/bin/python -m pip install --quiet -e '.[server]' ;;  # psycopg
    esac
fi

mkdir -p bench/results
# the repository root on the path: the server and load processes import bench.*
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m "$MODULE" "$@"
