"""Pipeline overhead (issue: pipelines): the same functions called directly in a loop, as jobs
orchestrated by hand stage after stage, and as a pipeline run, in one run on this machine.

    PYTHONPATH=. .venv/bin/python -m bench.pipelines [--quick] [--out bench/results/pipelines.json]

Two workloads:
- `steps`: N items x 3 chained stages of a trivial function, then a fan-in: what a stage job
  costs when the work itself costs nothing (per stage job, and the latency of one item through
  all stages);
- `video`: the video-analysis stages (scan, count, summarize, signed log line, report) over
  synthetic clips: a direct loop in one process versus the pipeline on 1 and 2 worker processes
  (1 Dask thread each, so 1 OpenCV thread each; the direct loop is given 1 OpenCV thread too).
Every configuration runs in a fresh process of its own (a fresh cluster and store).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, log, write_json

STEPS = {"stages": [
    {"name": "a", "task": "benchp.step", "each": "input.items", "inputs": {"value": "item"}},
    {"name": "b", "task": "benchp.step", "inputs": {"value": "a.value"}},
    {"name": "c", "task": "benchp.step", "inputs": {"value": "b.value"}},
    {"name": "total", "task": "benchp.total", "gather": True, "inputs": {"values": "c.value"}},
]}


# -- the configurations, each in its own process ----------------------------------------------


def steps_direct(items: int) -> dict[str, Any]:
    from bench.pipeline_tasks import step, total

    started = time.perf_counter()
    values = [step(step(step(i)["value"])["value"])["value"] for i in range(items)]
    result = total(values)
    return {"seconds": time.perf_counter() - started, "total": result["total"]}


def _cluster(workers: int, folder: Path) -> Any:
    import clusterai

    return clusterai.connect(parse(folder, workers), tasks=["bench.pipeline_tasks"])


def parse(folder: Path, workers: int) -> Any:
    from clusterai.config import parse_config

    return parse_config({"store": f"sqlite:///{folder / 'bench.db'}",
                         "cluster": {"workers": workers, "threads_per_worker": 1, "dashboard": False}},
                        source="bench")


def _warm(client: Any) -> None:
    client.wait(client.submit_many("benchp.step", [{"value": i} for i in range(200)]), timeout=120)


def steps_by_hand(items: int, workers: int) -> dict[str, Any]:
    """The same stages as plain jobs: submit a stage, wait for all of it, submit the next."""
    with tempfile.TemporaryDirectory() as tmp:
        client = _cluster(workers, Path(tmp))
        try:
            _warm(client)
            started = time.perf_counter()
            values: list[Any] = list(range(items))
            for _ in range(3):
                jobs = client.submit_many("benchp.step", [{"value": v} for v in values])
                client.wait(jobs, timeout=600)
                values = [j.result["value"] for j in client.get_many(jobs)]
            final = client.result(client.submit("benchp.total", {"values": values}), timeout=60)
            return {"seconds": time.perf_counter() - started, "total": final["total"]}
        finally:
            client.close()


def steps_pipeline(items: int, workers: int, single_rounds: int) -> dict[str, Any]:
    from clusterai.core.pipelines import Pipeline

    pipeline = Pipeline.from_dict("steps", STEPS)
    with tempfile.TemporaryDirectory() as tmp:
        client = _cluster(workers, Path(tmp))
        try:
            _warm(client)
            started = time.perf_counter()
            run = client.pipelines.wait(client.pipelines.run(pipeline, {"items": list(range(items))})["id"],
                                        timeout=600, poll=0.01)
            seconds = time.perf_counter() - started
            total = client.pipelines.outputs(run["id"])[0]["result"]["total"]
            # one item through all four stages, one run at a time: the latency a stage adds
            singles = []
            for r in range(single_rounds):
                t0 = time.perf_counter()
                one = client.pipelines.run(pipeline, {"items": [10_000 + r]})
                client.pipelines.wait(one["id"], timeout=60, poll=0.002)
                singles.append(time.perf_counter() - t0)
            # the same input again: every stage reused
            t0 = time.perf_counter()
            again = client.pipelines.wait(client.pipelines.run(pipeline, {"items": list(range(items))})["id"],
                                          timeout=600, poll=0.01)
            reuse = time.perf_counter() - t0
            assert all(s["reused"] == s["total"] for s in again["stages"]), again["stages"]
            return {"seconds": seconds, "total": total, "state": run["state"],
                    "single_item_p50_s": statistics.median(singles), "single_item_max_s": max(singles),
                    "rerun_all_reused_s": reuse}
        finally:
            client.close()


def video_direct(clips: list[str]) -> dict[str, Any]:
    """The video-analysis functions called in a loop in this one process (the tasks' own code)."""
    from clusterai.workloads import media

    media.loglines.load_or_create_key(os.environ["CLUSTERAI_LOGLINE_KEY"])
    started = time.perf_counter()
    summaries, lines, counts = [], [], []
    for clip in clips:
        scan = media.video_scan(clip)
        counts.append(media.camera_count(clip))
        summaries.append(media.video_summarize(scan))
        lines.append(media.video_logline(summaries[-1]["summary"], log=os.environ["BENCH_LOG"]))
    report = media.video_report(summaries, lines, counts, clips)
    return {"seconds": time.perf_counter() - started, "crossings": report["crossings"]}


def video_pipeline(clips: list[str], workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        client = _cluster(workers, Path(tmp))
        try:
            _warm(client)
            started = time.perf_counter()
            run = client.pipelines.run("video-analysis", {"videos": [{"source": c} for c in clips]}, fresh=True)
            run = client.pipelines.wait(run["id"], timeout=600, poll=0.01)
            seconds = time.perf_counter() - started
            report = client.pipelines.outputs(run["id"])[0]["result"]
            return {"seconds": seconds, "crossings": report["crossings"], "state": run["state"]}
        finally:
            client.close()


CONFIGS = {
    "steps_direct": lambda a: steps_direct(a["items"]),
    "steps_by_hand": lambda a: steps_by_hand(a["items"], 2),
    "steps_pipeline": lambda a: steps_pipeline(a["items"], 2, a["single_rounds"]),
    "video_direct": lambda a: video_direct(a["clips"]),
    "video_pipeline_1": lambda a: video_pipeline(a["clips"], 1),
    "video_pipeline_2": lambda a: video_pipeline(a["clips"], 2),
}


# -- driving the configurations ---------------------------------------------------------------


def run_one(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in a fresh Python process; its figures."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # the direct loop gets what a 1-thread worker gets: OpenCV's pool as wide as its threads
        env["OPENCV_FOR_THREADS_NUM"] = "1"
        subprocess.run([sys.executable, "-m", "bench.pipelines", "--config", name, "--args", json.dumps(args),
                        "--result", out.name], check=True, env=env, cwd=args["workdir"], timeout=900)
        return dict(json.loads(Path(out.name).read_text()))


def make_clips(folder: Path, count: int, seconds: float) -> list[str]:
    from clusterai.workloads.synth import make_clip

    return [make_clip(folder / f"clip{i}.avi", seconds=seconds, crossings=3 + i % 4, seed=i).path
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, figures mean nothing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "pipelines.json")
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.config:
        write_json(Path(opts.result), CONFIGS[opts.config](json.loads(opts.args)))
        return

    rounds = 1 if opts.quick else opts.rounds
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["CLUSTERAI_ARTIFACTS"] = str(work / "artifacts")
        os.environ["CLUSTERAI_LOGLINE_KEY"] = str(work / "logline.key")
        os.environ["BENCH_LOG"] = "direct"  # a log name: .clusterai/loglines/direct.log under the workdir
        # inside media.sources' default folder, relative to the workdir every configuration runs in
        clips = make_clips(work / ".clusterai" / "media" / "clips", 2 if opts.quick else 6, 6 if opts.quick else 10)
        args = {"items": 20 if opts.quick else 300, "single_rounds": 5 if opts.quick else 30,
                "clips": clips, "workdir": str(work)}
        figures: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
        for r in range(rounds):
            for name in CONFIGS:
                log(f"round {r + 1}/{rounds}: {name}")
                figures[name].append(run_one(name, args))
    summary = summarize(figures, args)
    write_json(opts.out, {"machine": machine(), "args": {k: v for k, v in args.items() if k != "clips"},
                          "clips": len(clips), "rounds": figures, "summary": summary})
    print(json.dumps(summary, indent=2))


def summarize(figures: dict[str, list[dict[str, Any]]], args: dict[str, Any]) -> dict[str, Any]:
    def med(name: str, key: str = "seconds") -> float:
        return statistics.median(f[key] for f in figures[name])

    def spread(name: str, key: str = "seconds") -> list[float]:
        values = [f[key] for f in figures[name]]
        return [round(min(values), 4), round(max(values), 4)]

    stage_jobs = args["items"] * 3 + 1
    direct, by_hand, pipe = med("steps_direct"), med("steps_by_hand"), med("steps_pipeline")
    v_direct, v1, v2 = med("video_direct"), med("video_pipeline_1"), med("video_pipeline_2")
    return {
        "steps": {
            "items": args["items"], "stage_jobs": stage_jobs,
            "direct_s": round(direct, 4), "by_hand_s": round(by_hand, 4), "by_hand_range": spread("steps_by_hand"),
            "pipeline_s": round(pipe, 4), "pipeline_range": spread("steps_pipeline"),
            "pipeline_ms_per_stage_job": round((pipe - direct) / stage_jobs * 1000, 3),
            "by_hand_ms_per_stage_job": round((by_hand - direct) / stage_jobs * 1000, 3),
            "pipeline_vs_by_hand": round(pipe / by_hand, 2),
            "single_item_4_stages_p50_ms": round(med("steps_pipeline", "single_item_p50_s") * 1000, 1),
            "rerun_all_reused_ms": round(med("steps_pipeline", "rerun_all_reused_s") * 1000, 1),
        },
        "video": {
            "clips": len(args["clips"]),
            "direct_s": round(v_direct, 3), "direct_range": spread("video_direct"),
            "pipeline_1_worker_s": round(v1, 3), "pipeline_1_range": spread("video_pipeline_1"),
            "pipeline_2_workers_s": round(v2, 3), "pipeline_2_range": spread("video_pipeline_2"),
            "pipeline_1_worker_vs_direct": round(v1 / v_direct, 3),
            "speedup_2_workers_vs_direct": round(v_direct / v2, 2),
            "speedup_2_vs_1_worker": round(v1 / v2, 2),
            "crossings_agree": len({f["crossings"] for n in ("video_direct", "video_pipeline_1", "video_pipeline_2")
                                    for f in figures[n]}) == 1,
        },
    }


def machine() -> dict[str, Any]:
    versions = {}
    for package in ("clusterai", "dask", "distributed", "opencv-python-headless", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions, "when": time.strftime("%Y-%m-%d %H:%M:%S")}


if __name__ == "__main__":
    main()
