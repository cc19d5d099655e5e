"""Video scan (issue: pipelines): frames per second of `scan_video` and of `video.scan` jobs, and how
they scale from 1 to 2 worker processes, with OpenCV's default threading and with 1 OpenCV thread.

    python -m bench.video [--quick] [--rounds 3] [--out bench/results/video.json]

One batch of synthetic clips (workloads.synth.make_clip: MJPG .avi at 25 frames/s, moving shapes over a
textured background, a little noise; 6 of 8 s at 320x240 and 2 of 6 s at 640x480) is made once, then
scanned with the `video.scan` defaults (2 samples/s, people and faces on):
- direct: `scan_video` on every clip, one after another, in one process (no cluster, no artifacts);
- direct, 2 plain processes: a multiprocessing pool taking the clips one at a time, in the same order:
  what two processes get out of this machine with no job plane at all;
- clusterai: the batch as `video.scan` jobs (`submit_many` -> `wait`, largest clips first) on an
  embedded cluster of 1 or of 2 worker processes, 1 thread each, timed from the submit to the last
  result, after a warm-up (each worker has scanned a short clip).
Each configuration runs in a fresh process of its own, with OpenCV's default thread pool (as many
threads as CPUs) or with OPENCV_FOR_THREADS_NUM=1 (the default cv2.setNumThreads() takes when cv2
loads; the workers inherit it and report cv2.getNumThreads() back). Every round runs every
configuration (the direct scan with OpenCV's default threads only in the first), so that a change in
the machine's load hits them alike; ratios are taken round by round.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import clusterai
from bench.common import RESULTS, ROOT, log, write_json
from bench.jobs import _fmt, _table, _version, machine, run_in_own_session

PACKAGES = ("clusterai", "opencv-python-headless", "opencv-python", "numpy", "dask", "distributed", "psutil")
THREAD_ENV = "OPENCV_FOR_THREADS_NUM"  # read by OpenCV when cv2 loads: its default thread count
THREADINGS = ("default", "1")  # OpenCV's default (one thread per CPU) and one thread
WORKER_COUNTS = (1, 2)
SECTION_TIMEOUT = 300
TARGET_SPEEDUP = 1.8
FPS = 25

# (count, seconds, (width, height)) per kind of clip
CLIPS_FULL = ((6, 8.0, (320, 240)), (2, 6.0, (640, 480)))
CLIPS_QUICK = ((3, 4.0, (320, 240)), (1, 4.0, (640, 480)))
WARM_CLIP = (3.0, (320, 240))


# -- the task the warm-up uses: which process ran it, with how many OpenCV threads -------------


@clusterai.task("bench.video_probe", retries=0)
def video_probe(source: str) -> dict:
    """Scans `source` (warming the worker's OpenCV up) and says which process it ran in and how
    many threads OpenCV uses there."""
    import cv2

    from clusterai.workloads.video import scan_video

    scan_video(source)
    return {"pid": os.getpid(), "cv_threads": cv2.getNumThreads()}


# -- the clips --------------------------------------------------------------------------------


def make_clips(folder: Path, quick: bool) -> dict[str, Any]:
    """The batch, largest clips first (they are submitted in this order), and the warm-up clip."""
    from clusterai.workloads.synth import make_clip

    started = time.perf_counter()
    clips = []
    seed = 1
    for count, seconds, size in reversed(CLIPS_QUICK if quick else CLIPS_FULL):
        for _ in range(count):
            path = folder / f"clip-{seed:02d}-{size[0]}x{size[1]}.avi"
            truth = make_clip(path, seconds=seconds, fps=FPS, size=size, crossings=3 if seconds >= 6 else 1,
                               noise=3.0, seed=seed)
            clips.append({"path": str(path), "frames": truth.frames, "size": list(size), "seconds": seconds,
                          "bytes": path.stat().st_size})
            seed += 1
    warm = folder / "warm.avi"
    make_clip(warm, seconds=WARM_CLIP[0], fps=FPS, size=WARM_CLIP[1], crossings=1, seed=99)
    return {"clips": clips, "warm": str(warm), "make_s": round(time.perf_counter() - started, 1)}


# -- in a section's own process ---------------------------------------------------------------


def _cpu_s(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _system_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy, and stolen by the hypervisor, since boot."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


def _others(system0: tuple[float, float], ours: float, wall: float) -> dict[str, float]:
    """How much of the machine other work took while ours ran: the busy CPU that was not ours, and
    what the hypervisor stole, in cores (the machine is shared; this says how much)."""
    busy, steal = _system_cpu()
    return {"other_cores": round(max(0.0, busy - system0[0] - ours) / wall, 2),
            "steal_cores": round((steal - system0[1]) / wall, 2)}


def direct(clips: list[dict[str, Any]], warm: str) -> dict[str, Any]:
    """scan_video on every clip in this process, one after another."""
    import cv2

    from clusterai.workloads.video import scan_video

    scan_video(warm)
    per_clip = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    system0 = _system_cpu()
    started = time.perf_counter()
    decoded = sampled = 0
    for clip in clips:
        t = time.perf_counter()
        totals = scan_video(clip["path"]).timeline["totals"]
        per_clip.append(round(time.perf_counter() - t, 3))
        decoded += totals["frames_decoded"]
        sampled += totals["samples"]
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    return {"cv_threads": cv2.getNumThreads(), "clips": len(clips), "frames_decoded": decoded,
            "samples": sampled, "wall_s": round(wall, 3), "cpu_s": round(cpu, 2), **_others(system0, cpu, wall),
            "cores_used": round(cpu / wall, 2), "decoded_fps": round(decoded / wall, 1),
            "sampled_fps": round(sampled / wall, 2), "per_clip_s": per_clip}


def _allow(folder: str) -> None:
    """media.sources in this process: the clips' folder (a cluster.yaml would say it to the workers)."""
    from clusterai.core.media_policy import SourcePolicy, set_policy

    set_policy(SourcePolicy.parse([folder]))


def _pool_init(warm: str, ready: Any) -> None:
    from clusterai.workloads.video import scan_video

    _allow(str(Path(warm).parent))
    scan_video(warm)
    ready.wait()


def _pool_scan(path: str) -> tuple[int, int, float]:
    from clusterai.workloads.video import scan_video

    t = time.perf_counter()
    totals = scan_video(path).timeline["totals"]
    return totals["frames_decoded"], totals["samples"], time.perf_counter() - t


def direct_pool(clips: list[dict[str, Any]], warm: str, processes: int) -> dict[str, Any]:
    """scan_video in `processes` plain processes taking clips one at a time from a shared queue, in
    the order clusterai gets them: what the machine gives two processes, with no job plane at all."""
    import multiprocessing

    from bench import video as this  # by its module name, for the spawned processes

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(processes + 1)
    with ctx.Pool(processes, initializer=this._pool_init, initargs=(warm, ready)) as pool:
        ready.wait()  # every process has scanned the warm-up clip
        children = psutil.Process().children(recursive=True)
        cpu0 = _cpu_s(children)
        system0 = _system_cpu()
        started = time.perf_counter()
        done = list(pool.imap_unordered(this._pool_scan, [c["path"] for c in clips], chunksize=1))
        wall = time.perf_counter() - started
        cpu = _cpu_s(children) - cpu0
        others = _others(system0, cpu, wall)
    decoded, sampled = sum(d[0] for d in done), sum(d[1] for d in done)
    return {"processes": processes, "clips": len(clips), "frames_decoded": decoded, "samples": sampled,
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "cores_used": round(cpu / wall, 2), **others,
            "decoded_fps": round(decoded / wall, 1), "sampled_fps": round(sampled / wall, 2),
            "per_clip_s": sorted(round(d[2], 3) for d in done)}


def cluster(clips: list[dict[str, Any]], warm: str, workers: int, store_dir: str) -> dict[str, Any]:
    """The batch as video.scan jobs on an embedded cluster of `workers` processes, 1 thread each."""
    from bench.clusterai_jobs import config

    os.environ["CLUSTERAI_ARTIFACTS"] = str(Path(store_dir, "artifacts"))  # the workers inherit it
    conf = config(store_dir).with_overrides(**{"cluster.workers": workers, "tasks": ["bench.video"],
                                               "media.sources": [str(Path(warm).parent)]})
    connect_started = time.perf_counter()
    with clusterai.connect(conf) as c:
        connect_s = time.perf_counter() - connect_started
        # warm-up: every worker scans a short clip as a video.scan job and as a probe
        warmups = c.submit_many("video.scan", [{"source": warm}] * workers)
        probes = c.submit_many("bench.video_probe", [{"source": warm}] * (2 * workers))
        c.wait([*warmups, *probes], timeout=120)
        seen = {p.result["pid"]: p.result["cv_threads"] for p in c.get_many(probes) if p.result}
        me = psutil.Process()
        children = me.children(recursive=True)  # nannies and worker processes
        cpu_workers0, cpu_self0 = _cpu_s(children), _cpu_s([me])

        system0 = _system_cpu()
        submitted_at = time.time()
        started = time.perf_counter()
        jobs = c.submit_many("video.scan", [{"source": clip["path"]} for clip in clips])
        c.wait(jobs, timeout=SECTION_TIMEOUT)
        wall = time.perf_counter() - started
        finished_at = time.time()

        cpu_workers, cpu_self = _cpu_s(children) - cpu_workers0, _cpu_s([me]) - cpu_self0
        others = _others(system0, cpu_workers + cpu_self, wall)
        done = [c.get(j) for j in jobs]  # with their attempts
    failed = [f"{j.id}: {j.state.value} {j.error}" for j in done if j.state.value != "succeeded"]
    if failed:
        raise RuntimeError(f"not every video.scan job succeeded: {failed}")
    decoded = sum(j.result["totals"]["frames_decoded"] for j in done)
    sampled = sum(j.result["totals"]["samples"] for j in done)
    attempts = [a for j in done for a in j.attempts if a.finished_at is not None]
    busy: dict[str, float] = {}
    for a in attempts:
        busy[a.worker or "?"] = busy.get(a.worker or "?", 0.0) + (a.finished_at - a.started_at)
    first_start = min(a.started_at for a in attempts)
    last_finish = max(a.finished_at for a in attempts)
    return {
        "workers": workers, "cv_threads_in_workers": sorted(set(seen.values())), "probed_workers": len(seen),
        "connect_s": round(connect_s, 1), "jobs": len(jobs), "frames_decoded": decoded, "samples": sampled,
        "wall_s": round(wall, 3), "decoded_fps": round(decoded / wall, 1), "sampled_fps": round(sampled / wall, 2),
        "decoded_fps_per_worker": round(decoded / wall / workers, 1),
        # time in attempts (coordinator's clock: dispatch to result stored), per worker, and its share of
        # workers x wall; what is left is waiting for a job, dispatching it and storing its result
        "busy_s_per_worker": sorted(round(b, 2) for b in busy.values()),
        "utilisation": round(sum(busy.values()) / (workers * wall), 3),
        "job_s": sorted(round(a.finished_at - a.started_at, 3) for a in attempts),
        "submit_to_first_start_s": round(first_start - submitted_at, 3),
        "last_finish_to_wait_return_s": round(finished_at - last_finish, 3),
        "cpu_s": round(cpu_workers + cpu_self, 2),
        "cpu_s_workers": round(cpu_workers, 2), "cpu_s_coordinator_process": round(cpu_self, 2),
        "cores_used": round((cpu_workers + cpu_self) / wall, 2), **others,
    }


def run_section(kind: str, workers: int, manifest: Path, out: Path) -> None:
    import json

    batch = json.loads(manifest.read_text(encoding="utf-8"))
    _allow(str(manifest.parent))
    if kind == "direct":
        result = direct(batch["clips"], batch["warm"])
    elif kind == "pool":
        result = direct_pool(batch["clips"], batch["warm"], workers)
    else:
        with tempfile.TemporaryDirectory(prefix="clusterai-bench-video-") as tmp:
            result = cluster(batch["clips"], batch["warm"], workers, tmp)
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    write_json(out, result)


# -- the runner -------------------------------------------------------------------------------


def _key(kind: str, workers: int, threading: str) -> str:
    if kind == "cluster":
        return f"clusterai_{workers}w_{threading}"
    return f"direct_{threading}" if kind == "direct" else f"direct_{workers}p_{threading}"


def spawn(kind: str, workers: int, threading: str, manifest: Path) -> dict[str, Any]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}  # the workers import bench.video (the probe task)
    # "default": OpenCV's own default, a thread per CPU, set explicitly because clusterai's workers
    # now size the pool to their Dask threads when the variable is unset
    env[THREAD_ENV] = str(os.cpu_count() or 1) if threading == "default" else threading
    started = time.perf_counter()
    args = ["bench.video", "--section", kind, "--workers", str(workers), "--manifest", str(manifest)]
    result = run_in_own_session(args, env, SECTION_TIMEOUT)
    result["process_s"] = round(time.perf_counter() - started, 1)
    return result


def _spread(values: list[float], digits: int = 2) -> dict[str, Any]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "runs": [round(v, digits) for v in values]}


def _paired(runs: dict[str, list[dict[str, Any]]], num: str, den: str, metric: str = "wall_s") -> dict[str, Any] | None:
    """num's metric / den's, round by round (a configuration measured once pairs with every round)."""
    a, b = runs.get(num, []), runs.get(den, [])
    if len(a) == 1:
        a = a * len(b)
    if len(b) == 1:
        b = b * len(a)
    ratios = [x[metric] / y[metric] for x, y in zip(a, b) if "error" not in x and "error" not in y]
    return _spread(ratios, 3) if ratios else None


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians and ranges per configuration, and ratios taken round by round, then their median:
    speed-ups from 1 to 2 workers (and from 1 to 2 plain processes), and clusterai against the direct
    scan with the same threading (how much of the direct rate a job keeps)."""
    out: dict[str, Any] = {}
    for key, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            continue
        out[key] = {m: _spread([r[m] for r in ok], 3 if m == "wall_s" else 1)
                    for m in ("wall_s", "decoded_fps", "sampled_fps", "cores_used", "cpu_s", "other_cores",
                              "steal_cores")}
        if "utilisation" in ok[0]:
            out[key]["utilisation"] = _spread([r["utilisation"] for r in ok], 3)
            out[key]["decoded_fps_per_worker"] = _spread([r["decoded_fps_per_worker"] for r in ok], 1)
    ratios = {
        "speedup_clusterai_1": ("clusterai_1w_1", "clusterai_2w_1"),
        "speedup_clusterai_default": ("clusterai_1w_default", "clusterai_2w_default"),
        "speedup_plain_processes_1": ("direct_1", "direct_2p_1"),
        # wall of the direct scan / clusterai's: the share of the direct rate that clusterai keeps
        "clusterai_1w_vs_direct_1": ("direct_1", "clusterai_1w_1"),
        "clusterai_1w_vs_direct_default": ("direct_default", "clusterai_1w_default"),
        "clusterai_2w_vs_plain_processes_1": ("direct_2p_1", "clusterai_2w_1"),
        "clusterai_2w_1_vs_direct_default": ("direct_default", "clusterai_2w_1"),
    }
    out["ratios"] = {name: r for name, (num, den) in ratios.items() if (r := _paired(runs, num, den))}
    return out


LABELS = {
    "direct_default": "direct, 1 process, OpenCV default threads",
    "direct_1": "direct, 1 process, 1 OpenCV thread",
    "direct_2p_1": "direct, 2 plain processes, 1 OpenCV thread each",
    "clusterai_1w_default": "clusterai, 1 worker, OpenCV default threads",
    "clusterai_2w_default": "clusterai, 2 workers, OpenCV default threads",
    "clusterai_1w_1": "clusterai, 1 worker, 1 OpenCV thread",
    "clusterai_2w_1": "clusterai, 2 workers, 1 OpenCV thread each",
}


def report(batch: dict[str, Any], summary: dict[str, Any]) -> str:
    def cell(s: dict[str, Any] | None) -> str:
        return "-" if s is None else f"{_fmt(s['median'])} ({_fmt(s['min'])}–{_fmt(s['max'])})"

    rows = []
    for key, label in LABELS.items():
        if key in summary:
            got = summary[key]
            rows.append([label, len(got["wall_s"]["runs"]), cell(got["wall_s"]), cell(got["decoded_fps"]),
                         cell(got["sampled_fps"]), cell(got.get("decoded_fps_per_worker")), cell(got["cpu_s"]),
                         cell(got["cores_used"]), cell(got["other_cores"]), cell(got.get("utilisation"))])
    frames = sum(c["frames"] for c in batch["clips"])
    table = _table(["configuration", "runs", "wall s", "decoded frames/s", "sampled frames/s",
                    "decoded/s per worker", "CPU s", "cores used", "other work, cores", "worker utilisation"], rows)
    lines = [f"{len(batch['clips'])} clips, {frames} frames; median (min–max)", table]
    for name, r in summary.get("ratios", {}).items():
        line = f"{name}: {r['median']} ({r['min']}–{r['max']})"
        if name.startswith("speedup_clusterai"):
            line += f"; target >= {TARGET_SPEEDUP}: {'met' if r['median'] >= TARGET_SPEEDUP else 'NOT met'}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.video", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 short clips, 1 round")
    parser.add_argument("--rounds", type=int, help="rounds over every configuration (default 3; 1 with --quick)")
    parser.add_argument("--out", type=Path, default=RESULTS / "video.json")
    parser.add_argument("--section", choices=("direct", "pool", "cluster"), help=argparse.SUPPRESS)  # internal
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        run_section(args.section, args.workers, args.manifest, args.out)
        return 0
    rounds = args.rounds or (1 if args.quick else 3)

    import json

    import cv2

    started = time.perf_counter()
    info = machine()
    info.pop("redis_server", None)
    info["packages"] = {p: v for p in PACKAGES if (v := _version(p)) is not None}
    info["opencv"] = {"version": cv2.__version__, "default_threads": cv2.getNumThreads(),
                      "parallel_framework": _parallel_framework(cv2.getBuildInformation())}
    log(f"{info['nproc']} CPUs ({info['cpu']}), load average {info['loadavg_at_start']}, "
        f"OpenCV {cv2.__version__} ({info['opencv']['parallel_framework']}, {cv2.getNumThreads()} threads)")
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-video-clips-") as tmp:
        log("making the clips")
        batch = make_clips(Path(tmp), args.quick)
        manifest = Path(tmp, "manifest.json")
        manifest.write_text(json.dumps(batch), encoding="utf-8")
        frames = sum(c["frames"] for c in batch["clips"])
        log(f"{len(batch['clips'])} clips, {frames} frames, made in {batch['make_s']} s")
        for n in range(rounds):
            # the 1-thread configurations side by side, then the default ones; OpenCV's default
            # threading in one plain process once (round 1): it is what the others are read against
            configs = [("direct", 1, "default")] if n == 0 else []
            configs += [("direct", 1, "1"), ("pool", 2, "1")]
            configs += [("cluster", w, t) for t in ("1", "default") for w in WORKER_COUNTS]
            for kind, workers, threading in configs:
                key = _key(kind, workers, threading)
                log(f"round {n + 1}/{rounds}: {key}")
                result = spawn(kind, workers, threading, manifest)
                runs.setdefault(key, []).append(result)
                if "error" in result:
                    log(f"{key}: {result['error']}")
                else:
                    log(f"{key}: {result['wall_s']} s, {result['decoded_fps']} decoded frames/s, "
                        f"{result['cores_used']} cores (other work {result['other_cores']})")
    summary = summarise(runs)
    clips = [{k: v for k, v in c.items() if k != "path"} for c in batch["clips"]]
    write_json(args.out, {
        "machine": info, "quick": args.quick, "rounds": rounds,
        "command": " ".join(["python -m bench.video", *(argv if argv is not None else sys.argv[1:])]),
        "batch": {"clips": clips, "fps": FPS, "frames": frames, "make_s": batch["make_s"],
                  "scan": "video.scan defaults: sample_fps 2, people and faces on, thumbnails 160 px"},
        "target_speedup": TARGET_SPEEDUP, "wall_s": round(time.perf_counter() - started, 1),
        "runs": runs, "summary": summary,
    })
    print(report(batch, summary))
    log(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 1 if any("error" in r for rs in runs.values() for r in rs) else 0


def _parallel_framework(build_info: str) -> str:
    for line in build_info.splitlines():
        if "Parallel framework" in line:
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
