#!/usr/bin/env bash
# The job plane against its peers on every measure, in one run (issue 21): the job-plane peers, the
# heterogeneous pool on 4 seeds, the head under 8 submitting HTTP clients, and pipelines at scale.
# Usage: bench/run_job_plane.sh [--baseline TREE] [--quick]; results in bench/results/job_plane.json
# and bench/results/job_plane/. Same set-up as run_all.sh.
BENCH_MODULE=bench.job_plane exec "$(dirname "$0")/run_all.sh" "$@"
