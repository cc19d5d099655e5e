"""The job-plane benchmark (issue: foundation): clusterai vs Celery + Redis vs plain Dask, each
with 2 worker processes, on this machine, in this run.

    python -m bench.jobs [--only SECTION ...] [--quick] [--out bench/results/jobs.json]

Every section runs in a fresh process of its own, one after another, so that no cluster, thread
or allocation left by one section can slow the next or inflate its memory figure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.common import RESULTS, ROOT, log, write_json

SECTIONS: dict[str, str] = {
    "clusterai": "bench.clusterai_jobs:run",
    "dask": "bench.peers_dask:run",
    "celery": "bench.peers_celery:run",
    "claim": "bench.scale:claim",
    "memory": "bench.scale:memory",
    "memory_no_wait": "bench.scale:memory_no_wait",
    "recovery": "bench.recovery:run",
}
SECTION_TIMEOUT = 600
PACKAGES = ("clusterai", "dask", "distributed", "celery", "kombu", "redis", "psutil")

# -- running the sections ---------------------------------------------------------------------


def run_section(name: str, out: Path) -> None:
    """In the section's own process: run it and write its figures as JSON."""
    module, function = SECTIONS[name].split(":")
    write_json(out, getattr(importlib.import_module(module), function)())


def _kill_session(session: int) -> None:
    try:
        os.killpg(session, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nothing left of it


def spawn_section(name: str, quick: bool) -> dict[str, Any]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # Dask's worker processes and the Celery worker must import bench.* as well
    env = {**os.environ, "PYTHONPATH": path, "BENCH_QUICK": "1" if quick else "0"}
    started = time.perf_counter()
    result = run_in_own_session(["bench.jobs", "--section", name], env, SECTION_TIMEOUT)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def run_in_own_session(module_args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """`python -m MODULE ... --out FILE` in a session of its own, so that a run past its time limit
    goes with all its workers; its JSON result, or {"error": ...}."""
    with tempfile.TemporaryDirectory(prefix="bench-section-") as tmp:
        out = Path(tmp, "result.json")
        proc = subprocess.Popen([sys.executable, "-m", *module_args, "--out", str(out)], cwd=ROOT, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
            _kill_session(proc.pid)
            proc.wait()
            if isinstance(exc, KeyboardInterrupt):
                raise
            return {"error": f"did not finish within {timeout} s"}
        _kill_session(proc.pid)  # a worker a failed run left behind would skew the next one
        if code != 0 or not out.exists():
            return {"error": f"exited with status {code}; see the log above"}
        return dict(json.loads(out.read_text(encoding="utf-8")))


# -- describing the machine -------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _revision() -> str:
    """The commit measured, marked when src/ differs from it: src/ changes under a benchmark."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} (src/ modified)" if dirty else commit


def machine() -> dict[str, Any]:
    try:
        redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    except OSError:
        redis = "not installed"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "redis_server": redis.strip(),
        "revision": _revision(),
        # other work on the machine moves every figure: keep a record of how busy it was
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# -- figures, ratios and targets --------------------------------------------------------------


def _get(results: dict[str, Any], *keys: str) -> Any:
    value: Any = results
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    def ratio(*keys: str, peer: str) -> float | None:
        ours, theirs = _get(results, "clusterai", *keys), _get(results, peer, *keys)
        return round(ours / theirs, 2) if ours and theirs else None

    out: dict[str, float | None] = {}
    for peer in ("celery", "dask"):
        out[f"throughput_vs_{peer}"] = ratio("throughput", "jobs_per_s", peer=peer)
        out[f"latency_p50_vs_{peer}"] = ratio("latency", "p50_ms", peer=peer)
    return out


def checks(results: dict[str, Any], ratio: dict[str, float | None]) -> list[dict[str, Any]]:
    """Each target of the issue, what was measured, and whether it was met (None: not measured)."""

    def check(target: str, measured: Any, met: bool | None) -> dict[str, Any]:
        return {"target": target, "measured": measured, "met": met}

    rate = _get(results, "clusterai", "throughput", "jobs_per_s")
    p50 = _get(results, "clusterai", "latency", "p50_ms")
    celery_p50 = _get(results, "celery", "latency", "p50_ms")
    rss = _get(results, "memory", "rss_peak_mb")
    claim = _get(results, "claim", "ratio")
    recovery = _get(results, "recovery", "running_elsewhere_max_s")
    vs = [ratio["throughput_vs_celery"], ratio["throughput_vs_dask"]]

    def known(*values: Any) -> bool:
        return all(v is not None for v in values)

    return [
        check("no-op throughput >= 5,000 jobs/s", rate, rate >= 5000 if known(rate) else None),
        check(">= 5x Celery and >= 5x Dask throughput", vs, min(vs) >= 5 if known(*vs) else None),
        check("latency p50 <= 3 ms", p50, p50 <= 3 if known(p50) else None),
        check("latency p50 not above Celery's", [p50, celery_p50],
              p50 <= celery_p50 if known(p50, celery_p50) else None),
        check("100k queued: coordinator RSS <= 200 MB", rss, rss <= 200 if known(rss) else None),
        check("100k queued: claim latency <= 2x the 1k case", claim, claim <= 2 if known(claim) else None),
        check("SIGKILL of a worker: its job runs elsewhere in <= 2 s", recovery,
              recovery <= 2 if known(recovery) else None),
    ]


# -- the report -------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return " / ".join(_fmt(v) for v in value)
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _notes(results: dict[str, Any]) -> str:
    lines = []
    for key, how in (("memory", "wait() on every job"), ("memory_no_wait", "polling counts()")):
        run = results.get(key, {})
        lines.append(f"{_fmt(run.get('jobs'))} queued, {how}: peak RSS {_fmt(run.get('rss_peak_mb'))} MB"
                     f" (before connect {_fmt(run.get('rss_before_connect_mb'))} MB),"
                     f" {_fmt(run.get('jobs_per_s'))} jobs/s")
    rounds = _get(results, "recovery", "rounds") or []
    lines.append(f"recovery: running elsewhere after {_fmt([r['running_elsewhere_s'] for r in rounds])} s"
                 f" (loss detected after {_fmt([r['detected_s'] for r in rounds])} s)")
    return "\n".join(lines)


def report(results: dict[str, Any], ratio: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    systems = [("clusterai (SQLite store)", "clusterai"), ("Celery + Redis", "celery"),
               ("plain Dask", "dask")]
    peers = _table(
        ["system", "no-op jobs/s", "jobs per run", "latency p50 ms", "latency p99 ms"],
        [[label, _get(results, key, "throughput", "jobs_per_s"), _get(results, key, "throughput", "jobs"),
          _get(results, key, "latency", "p50_ms"), _get(results, key, "latency", "p99_ms")]
         for label, key in systems],
    )
    ratios_table = _table(
        ["clusterai / peer", "throughput", "latency p50"],
        [[peer, ratio[f"throughput_vs_{key}"], ratio[f"latency_p50_vs_{key}"]]
         for peer, key in (("Celery + Redis", "celery"), ("plain Dask", "dask"))],
    )
    claim = results.get("claim", {})
    scale = _table(
        ["jobs queued", "fetch_ready ms", "start_attempts ms", "claim ms (median)", "claim ms (max)"],
        [[_get(claim, f"queued_{size}"), _get(claim, size, "fetch_ms"), _get(claim, size, "start_ms"),
          _get(claim, size, "claim_ms"), _get(claim, size, "claim_max_ms")] for size in ("small", "large")],
    )
    met = {True: "yes", False: "**no**", None: "not measured"}
    goals = _table(["target", "measured", "met"],
                   [[t["target"], t["measured"], met[t["met"]]] for t in targets])
    notes = _notes(results)
    errors = [f"section {name} failed: {r['error']}" for name, r in results.items()
              if isinstance(r, dict) and "error" in r]
    return "\n\n".join([peers, ratios_table, scale, notes, goals, *errors])


# -- entry point ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run at 1/10 the size; its figures mean nothing")
    parser.add_argument("--out", type=Path, default=RESULTS / "jobs.json")
    parser.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.section:
        run_section(args.section, args.out)
        return 0

    started = time.perf_counter()
    info = machine()
    log(f"{info['nproc']} CPUs ({info['cpu']}), load average {info['loadavg_at_start']}")
    results: dict[str, Any] = {}
    for name in args.only or SECTIONS:
        log(f"section {name}")
        results[name] = spawn_section(name, args.quick)
    ratio = ratios(results)
    targets = checks(results, ratio)
    write_json(args.out, {
        "machine": info, "quick": args.quick, "command": " ".join(["python -m bench.jobs", *sys.argv[1:]]),
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results, "ratios": ratio, "targets": targets,
    })
    print(report(results, ratio, targets))
    log(f"wrote {args.out}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
