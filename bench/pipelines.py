"""Pipeline overhead (issue: pipelines): the same functions called directly in a loop, as jobs
orchestrated by hand stage after stage, and as a pipeline run, in one run on this machine.

    PYTHONPATH=. .venv/bin/python -m bench.pipelines [--quick] [--out bench/results/pipelines.json]
    PYTHONPATH=. .venv/bin/python -m bench.pipelines --items 100,1000,10000 --workloads steps \
        [--distinct] [--baseline /path/to/old/src] --out bench/results/pipelines-scale.json
        # the steps workload at several sizes, optionally beside another copy of the code

Two workloads:
- `steps`: N items x 3 chained stages of a trivial function, then a fan-in: what a stage job
  costs when the work itself costs nothing (per stage job, and the latency of one item through
  all stages);
- `video`: the video-analysis stages (scan, count, summarize, signed log line, report) over
  synthetic clips: a direct loop in one process versus the pipeline on 1 and 2 worker processes
  (1 Dask thread each, so 1 OpenCV thread each; the direct loop is given 1 OpenCV thread too).
Every configuration runs in a fresh process of its own (a fresh cluster and store); a PYTHONPATH
given to this command comes first in theirs too (to measure another copy of `src/`).
"""

from __future__ import annotations

import argparse
import importlib.util
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


def item_values(items: int, distinct: bool) -> list[int]:
    """The run's items. Consecutive numbers (the default, as first measured) make stage b of item i
    the same job as stage a of item i + 1 (one task, one payload: one idempotency key), so the
    pipeline runs about N + 3 distinct jobs for its 3N + 1 stage jobs; spaced by 3 (`distinct`),
    every stage job is a job of its own and runs, as every job orchestrated by hand does."""
    return [i * 3 for i in range(items)] if distinct else list(range(items))


def single_item(r: int, distinct: bool) -> int:
    """One item of the serial single-item runs: far from every other one when `distinct`."""
    return 10**7 + 3 * r if distinct else 10_000 + r


def steps_direct(items: int, distinct: bool) -> dict[str, Any]:
    from bench.pipeline_tasks import step, total

    started = time.perf_counter()
    values = [step(step(step(i)["value"])["value"])["value"] for i in item_values(items, distinct)]
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


def steps_by_hand(items: int, workers: int, distinct: bool) -> dict[str, Any]:
    """The same stages as plain jobs: submit a stage, wait for all of it, submit the next."""
    with tempfile.TemporaryDirectory() as tmp:
        client = _cluster(workers, Path(tmp))
        try:
            _warm(client)
            started = time.perf_counter()
            values: list[Any] = item_values(items, distinct)
            for _ in range(3):
                jobs = client.submit_many("benchp.step", [{"value": v} for v in values])
                client.wait(jobs, timeout=3000)
                values = [j.result["value"] for j in client.get_many(jobs)]
            final = client.result(client.submit("benchp.total", {"values": values}), timeout=60)
            return {"seconds": time.perf_counter() - started, "total": final["total"]}
        finally:
            client.close()


def steps_pipeline(items: int, workers: int, single_rounds: int, distinct: bool) -> dict[str, Any]:
    from clusterai.core.pipelines import Pipeline

    pipeline = Pipeline.from_dict("steps", STEPS)
    with tempfile.TemporaryDirectory() as tmp:
        client = _cluster(workers, Path(tmp))
        try:
            _warm(client)
            started = time.perf_counter()
            first = client.pipelines.run(pipeline, {"items": item_values(items, distinct)})
            start_s = time.perf_counter() - started  # the run stored, its first stage's jobs created
            run = client.pipelines.wait(first["id"], timeout=3000, poll=0.01)
            seconds = time.perf_counter() - started
            total = client.pipelines.outputs(run["id"])[0]["result"]["total"]
            # one item through all four stages, one run at a time: the latency a stage adds
            singles = []
            for r in range(single_rounds):
                t0 = time.perf_counter()
                one = client.pipelines.run(pipeline, {"items": [single_item(r, distinct)]})
                client.pipelines.wait(one["id"], timeout=60, poll=0.002)
                singles.append(time.perf_counter() - t0)
            # the same input again: every stage reused
            t0 = time.perf_counter()
            again = client.pipelines.wait(client.pipelines.run(pipeline, {"items": item_values(items, distinct)})["id"],
                                          timeout=3000, poll=0.01)
            reuse = time.perf_counter() - t0
            assert all(s["reused"] == s["total"] for s in again["stages"]), again["stages"]
            return {"seconds": seconds, "start_s": start_s, "total": total, "state": run["state"],
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
    "steps_direct": lambda a: steps_direct(a["items"], a["distinct"]),
    "steps_by_hand": lambda a: steps_by_hand(a["items"], 2, a["distinct"]),
    "steps_pipeline": lambda a: steps_pipeline(a["items"], 2, a["single_rounds"], a["distinct"]),
    "video_direct": lambda a: video_direct(a["clips"]),
    "video_pipeline_1": lambda a: video_pipeline(a["clips"], 1),
    "video_pipeline_2": lambda a: video_pipeline(a["clips"], 2),
}


# -- driving the configurations ---------------------------------------------------------------


def run_one(name: str, args: dict[str, Any], src: str | None = None) -> dict[str, Any]:
    """Run one configuration in a fresh Python process, on another copy of `src/` if given; its
    figures (and the 1-minute load average just before it started)."""
    load = round(os.getloadavg()[0], 2)
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        path = (str(ROOT), src, os.environ.get("PYTHONPATH"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
        # the direct loop gets what a 1-thread worker gets: OpenCV's pool as wide as its threads
        env["OPENCV_FOR_THREADS_NUM"] = "1"
        subprocess.run([sys.executable, "-m", "bench.pipelines", "--config", name, "--args", json.dumps(args),
                        "--result", out.name], check=True, env=env, cwd=args["workdir"], timeout=3600)
        return {**json.loads(Path(out.name).read_text()), "load_1m_before": load}


def make_clips(folder: Path, count: int, seconds: float) -> list[str]:
    from clusterai.workloads.synth import make_clip

    return [make_clip(folder / f"clip{i}.avi", seconds=seconds, crossings=3 + i % 4, seed=i).path
            for i in range(count)]


STEPS_CONFIGS = ("steps_direct", "steps_by_hand", "steps_pipeline")
VIDEO_CONFIGS = ("video_direct", "video_pipeline_1", "video_pipeline_2")
PIPELINE_CONFIGS = {"steps_pipeline", "video_pipeline_1", "video_pipeline_2"}  # the ones --baseline repeats
BASELINE = "@baseline"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, figures mean nothing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", default=None,
                        help="the steps workload's sizes, comma-separated (default 300; 20 with --quick)")
    parser.add_argument("--workloads", default="steps,video", help="steps, video or both (the default)")
    parser.add_argument("--distinct", action="store_true",
                        help="steps: items spaced so that no stage job is another's (every one runs)")
    parser.add_argument("--baseline", metavar="SRC",
                        help="another copy of src/ (the code before a change): every pipeline configuration"
                             " also runs on it, taking turns with this one, in the same run")
    parser.add_argument("--out", type=Path, default=RESULTS / "pipelines.json")
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.config:
        import clusterai

        figures = CONFIGS[opts.config](json.loads(opts.args))
        write_json(Path(opts.result), {**figures, "clusterai_from": str(Path(clusterai.__file__).parent)})
        return

    rounds = 1 if opts.quick else opts.rounds
    sizes = [int(n) for n in (opts.items or ("20" if opts.quick else "300")).split(",")]
    workloads = set(opts.workloads.split(","))
    if not workloads or workloads - {"steps", "video"}:
        parser.error("--workloads: steps, video or steps,video")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["CLUSTERAI_ARTIFACTS"] = str(work / "artifacts")
        os.environ["CLUSTERAI_LOGLINE_KEY"] = str(work / "logline.key")
        os.environ["BENCH_LOG"] = "direct"  # a log name: .clusterai/loglines/direct.log under the workdir
        # inside media.sources' default folder, relative to the workdir every configuration runs in
        clips = (make_clips(work / ".clusterai" / "media" / "clips", 2 if opts.quick else 6, 6 if opts.quick else 10)
                 if "video" in workloads else [])
        args = {"single_rounds": 5 if opts.quick else 30, "clips": clips, "workdir": str(work),
                "distinct": opts.distinct}
        trees = {"": None, **({BASELINE: str(Path(opts.baseline).resolve())} if opts.baseline else {})}
        steps: dict[int, dict[str, list[dict[str, Any]]]] = {n: {} for n in sizes}
        video: dict[str, list[dict[str, Any]]] = {}
        for r in range(rounds):
            order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]  # take turns going first
            for workload, configs, sized in (("steps", STEPS_CONFIGS, sizes), ("video", VIDEO_CONFIGS, [None])):
                if workload not in workloads:
                    continue
                for n in sized:
                    at = {**args, "items": n} if n is not None else args
                    figures = steps[n] if n is not None else video
                    for name in configs:
                        for suffix, src in order if name in PIPELINE_CONFIGS else [("", None)]:
                            what = f"{name}{suffix}" + (f", {n} items" if n is not None else "")
                            log(f"round {r + 1}/{rounds}: {what} (load {os.getloadavg()[0]:.2f})")
                            figures.setdefault(name + suffix, []).append(run_one(name, at, src))
    summary: dict[str, Any] = {}
    for suffix in trees:
        if "steps" in workloads:
            summary["steps" + suffix] = [summarize_steps(steps[n], n, suffix) for n in sizes]
        if "video" in workloads:
            summary["video" + suffix] = summarize_video(video, len(clips), suffix)
    write_json(opts.out, {"machine": machine(), "args": {k: v for k, v in args.items() if k != "clips"},
                          "baseline": opts.baseline, "sizes": sizes, "clips": len(clips),
                          "rounds": {"steps": {str(n): steps[n] for n in sizes}, "video": video},
                          "summary": summary})
    print(json.dumps(summary, indent=2))
    if "steps" in workloads:
        print(table(summary))


def table(summary: dict[str, Any]) -> str:
    """The steps figures side by side: this tree, and the baseline's where there is one."""
    trees = [k for k in ("steps", "steps" + BASELINE) if k in summary]
    lines = ["items | stage jobs | by hand ms/job | " + " | ".join(
        f"{t.removeprefix('steps') or 'this'}: ms/job, start s, single p50 ms, rerun ms" for t in trees)]
    for i, row in enumerate(summary["steps"]):
        cells = [f"{s[i]['pipeline_ms_per_stage_job']}, {s[i]['pipeline_start_s']}, "
                 f"{s[i]['single_item_4_stages_p50_ms']}, {s[i]['rerun_all_reused_ms']}"
                 for s in (summary[t] for t in trees)]
        lines.append(f"{row['items']} | {row['stage_jobs']} | {row['by_hand_ms_per_stage_job']} | " + " | ".join(cells))
    return "\n".join(lines)


def _med(figures: list[dict[str, Any]], key: str = "seconds") -> float:
    return statistics.median(f[key] for f in figures)


def _spread(figures: list[dict[str, Any]], key: str = "seconds") -> list[float]:
    values = [f[key] for f in figures]
    return [round(min(values), 4), round(max(values), 4)]


def summarize_steps(figures: dict[str, list[dict[str, Any]]], items: int, suffix: str = "") -> dict[str, Any]:
    """Per stage job: (configuration - direct loop) / stage jobs, medians over the rounds; with a
    suffix, the pipeline's figures on that tree."""
    stage_jobs = items * 3 + 1
    pipeline = figures["steps_pipeline" + suffix]
    direct, by_hand, pipe = _med(figures["steps_direct"]), _med(figures["steps_by_hand"]), _med(pipeline)
    return {
        "items": items, "stage_jobs": stage_jobs,
        "direct_s": round(direct, 4),
        "by_hand_s": round(by_hand, 4), "by_hand_range": _spread(figures["steps_by_hand"]),
        "pipeline_s": round(pipe, 4), "pipeline_range": _spread(pipeline),
        "pipeline_start_s": round(_med(pipeline, "start_s"), 4),
        "pipeline_ms_per_stage_job": round((pipe - direct) / stage_jobs * 1000, 3),
        "pipeline_ms_per_stage_job_range": [round((t - direct) / stage_jobs * 1000, 3) for t in _spread(pipeline)],
        "by_hand_ms_per_stage_job": round((by_hand - direct) / stage_jobs * 1000, 3),
        "pipeline_vs_by_hand": round(pipe / by_hand, 2),
        "single_item_4_stages_p50_ms": round(_med(pipeline, "single_item_p50_s") * 1000, 1),
        "rerun_all_reused_ms": round(_med(pipeline, "rerun_all_reused_s") * 1000, 1),
        "load_1m_before_pipeline": [f.get("load_1m_before") for f in pipeline],
    }


def summarize_video(figures: dict[str, list[dict[str, Any]]], clips: int, suffix: str = "") -> dict[str, Any]:
    v_direct, v1, v2 = (_med(figures[n + (suffix if n in PIPELINE_CONFIGS else "")]) for n in VIDEO_CONFIGS)
    return {
        "clips": clips,
        "direct_s": round(v_direct, 3), "direct_range": _spread(figures["video_direct"]),
        "pipeline_1_worker_s": round(v1, 3), "pipeline_1_range": _spread(figures["video_pipeline_1" + suffix]),
        "pipeline_2_workers_s": round(v2, 3), "pipeline_2_range": _spread(figures["video_pipeline_2" + suffix]),
        "pipeline_1_worker_vs_direct": round(v1 / v_direct, 3),
        "speedup_2_workers_vs_direct": round(v_direct / v2, 2),
        "speedup_2_vs_1_worker": round(v1 / v2, 2),
        "crossings_agree": len({f["crossings"] for figs in figures.values() for f in figs}) == 1,
    }


def machine() -> dict[str, Any]:
    versions = {}
    for package in ("clusterai", "dask", "distributed", "opencv-python-headless", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    spec = importlib.util.find_spec("clusterai")
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "clusterai_from": str(Path(spec.origin).parent) if spec and spec.origin else None}


if __name__ == "__main__":
    main()
