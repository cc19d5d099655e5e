#!/usr/bin/env bash
# Video scan (issue: pipelines; see BENCHMARKS.md): frames/s of scan_video in one process and in 2
# plain processes, and of video.scan jobs on an embedded cluster of 1 and of 2 worker processes
# (1 thread each), with OpenCV's default threading and with 1 OpenCV thread, over one batch of
# synthetic clips, 3 rounds.
# Usage: bench/run_video.sh [--quick] [--rounds N] [--out FILE]; about 3.5 minutes on 2 CPUs
# (--quick: about 40 s, figures meaningless); results land in bench/results/video.json.
# Needs the `video` extra (opencv-python-headless): .venv/bin/python -m pip install -e '.[video]'
set -euo pipefail

cd "$(dirname "$0")/.."
mkdir -p bench/results
# the repository root on the path: the worker processes import bench.video (its probe task)
PYTHONPATH=. exec .venv/bin/python -m bench.video "$@"
