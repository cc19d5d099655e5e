#!/usr/bin/env bash
# The job store: PostgreSQL beside SQLite in one run (see BENCHMARKS.md): an embedded cluster with
# 2 worker processes on each store (no-op jobs/s for 5,000 at once, 200 round trips), then 1, 4 and 8
# concurrent claimers (processes) draining 20,000 queued jobs 10 and 100 at a time.
# Usage: bench/run_stores.sh [--quick] [--only floors e2e claims] [--experiments]
#        [--claimers processes|threads]; about 2 minutes (4 with --experiments) on 2 CPUs;
# results land in bench/results/stores.json. PostgreSQL is a throwaway server on loopback
# (tests/support/pgserver.py, durable: fsync and synchronous_commit on); run_all.sh installs the
# server package and psycopg for it.
BENCH_MODULE=bench.stores exec "$(dirname "$0")/run_all.sh" "$@"
