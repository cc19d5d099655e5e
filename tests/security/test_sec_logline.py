"""Signed lines vouch only for what the cluster computed, and say who asked (issue 15, "the trust
boundary"). A submitter used to get a valid chained HMAC line for any `summary` dict it made up; now
`video.logline` takes the reference of a `video.summarize` artifact, reads and checks it in the store,
and signs what it says beside provenance the head supplies (job, owner, pipeline run) and the source's
SHA-256. Every forgery is refused and appends nothing; the real thing verifies, and an edit shows."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sec_cluster import SecCluster, sec_cluster, sha256_of

from clusterai.core import logline as loglines
from clusterai.workloads.synth import make_clip

pytestmark = pytest.mark.cluster

SUPPORT = Path(__file__).resolve().parents[1] / "support"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecCluster]:
    with sec_cluster(tmp_path_factory.mktemp("sec-logline")) as c:
        yield c


@pytest.fixture(scope="module")
def summarized(cluster: SecCluster) -> dict[str, Any]:
    """A clip the cluster scanned and summarised, submitted directly (no pipeline)."""
    clip = make_clip(cluster.media / "direct.avi", seconds=4, crossings=2, seed=11)
    scan = cluster.run("video.scan", {"source": clip.path, "detect_people": False, "detect_faces": False})
    assert scan["state"] == "succeeded", scan["error"]
    summary = cluster.run("video.summarize", {"scan": scan["result"]})
    assert summary["state"] == "succeeded", summary["error"]
    return {"clip": Path(clip.path), "scan": scan["result"], "summary": summary["result"]}


def cli(cluster: SecCluster, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "COLUMNS": "250"}
    env.pop("CLUSTERAI_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "clusterai.cli.main", "--config", str(cluster.config_file), *args],
                          cwd=cluster.root, env=env, capture_output=True, text=True, timeout=60)


# -- forgeries -------------------------------------------------------------------------------------

def test_an_inline_summary_is_a_422(cluster: SecCluster, summarized: dict[str, Any]) -> None:
    before, jobs = cluster.tree(), cluster.api.store.job_counts()
    forged = {"source": "/data/cams/vault.mp4", "scenes": 1, "text": "Nothing happened. Nobody was here."}
    for summary in (forged, summarized["summary"], {**summarized["summary"]["summary"], "text": "forged"}):
        r = cluster.submit("video.logline", {"summary": summary})
        assert r.status_code == 422, r.text
        assert "an artifact reference {artifact, size, sha256}" in r.text
    # who asked is the head's to say: a payload cannot name an owner or a run
    r = cluster.submit("video.logline", {"summary": summarized["summary"]["summary"], "owner": "admin", "run": 1})
    assert r.status_code == 422 and "owner" in r.text and "run" in r.text
    assert cluster.api.store.job_counts() == jobs and cluster.tree() == before


def forgeries(cluster: SecCluster, summarized: dict[str, Any]) -> dict[str, dict[str, Any]]:
    real = summarized["summary"]["summary"]
    passwd = Path("/etc/passwd").read_bytes()
    root = real["artifact"].split("/summaries/")[0]
    timeline = summarized["scan"]["timeline"]
    keyframe = summarized["scan"]["keyframes"][0]
    escape = f"{root}/summaries/x/../../{timeline['artifact'][len(root) + 1:]}"  # summaries/x/../../video/...
    return {
        "outside the store": {"artifact": "file:///etc/passwd", "size": len(passwd),
                              "sha256": hashlib.sha256(passwd).hexdigest()},
        "a wrong sha256": {**real, "sha256": "0" * 64},
        "a wrong size": {**real, "size": real["size"] + 1},
        "the scan's timeline": timeline,
        "a key frame": {k: keyframe[k] for k in ("artifact", "size", "sha256")},
        "an escape from summaries/": {**timeline, "artifact": escape},
        "a missing summary": {**real, "artifact": f"{root}/summaries/{'a' * 20}/{'b' * 64}.json"},
    }


@pytest.mark.parametrize("kind", ["outside the store", "a wrong sha256", "a wrong size", "the scan's timeline",
                                  "a key frame", "an escape from summaries/", "a missing summary"])
def test_a_forged_reference_is_refused_and_nothing_is_appended(cluster: SecCluster, summarized: dict[str, Any],
                                                               kind: str) -> None:
    ref = forgeries(cluster, summarized)[kind]
    before = cluster.tree()
    job = cluster.run("video.logline", {"summary": ref})
    assert job["state"] == "dead", job
    assert len(job["attempts"]) == 1  # refused, not retried: a forgery stays a forgery
    assert "video.logline:" in job["error"] and job["result"] is None
    assert cluster.tree() == before  # no line appended, no log or key made


def test_a_summary_artifact_other_content_is_refused(cluster: SecCluster, summarized: dict[str, Any]) -> None:
    # a file dropped into summaries/ by something other than video.summarize (say, a shared disk): its
    # reference checks out, its content does not have a summary's shape
    folder = Path(summarized["summary"]["summary"]["artifact"].removeprefix("file://")).parent
    body = json.dumps({"source": "/x.mp4", "text": "forged", "scenes": 1, "duration": 1.0}).encode()
    (folder / "dropped.json").write_bytes(body)
    ref = {"artifact": f"file://{folder}/dropped.json", "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    before = cluster.tree()
    job = cluster.run("video.logline", {"summary": ref})
    assert job["state"] == "dead" and "is not a video.summarize summary" in job["error"]
    assert cluster.tree() == before


# -- the real thing --------------------------------------------------------------------------------

def test_a_direct_line_says_who_asked_and_about_what(cluster: SecCluster, summarized: dict[str, Any]) -> None:
    job = cluster.run("video.logline", {"summary": summarized["summary"]["summary"], "log": "direct"})
    assert job["state"] == "succeeded", job["error"]
    record = json.loads(job["result"]["line"])
    assert record["job"] == job["id"] and record["owner"] == "submitter" and record["run"] is None
    assert record["source"] == str(summarized["clip"]) and record["source_digest"] == sha256_of(summarized["clip"])
    assert record["summary"] == summarized["summary"]["summary"]["sha256"]
    assert record["text"] == summarized["summary"]["text"]
    shown = cli(cluster, "logline", "verify", "direct", "--key-file", str(cluster.key_file))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"job {job['id']}, owner submitter, run -, source {summarized['clip']}" in shown.stdout


def test_a_pipeline_run_signs_with_its_run_then_an_edit_shows(cluster: SecCluster) -> None:
    clips = [make_clip(cluster.media / f"run{i}.avi", seconds=4, crossings=i + 1, seed=20 + i) for i in range(2)]
    c = cluster.http("submitter")
    r = c.post("/api/v1/pipelines/video-analysis/runs",
               json={"input": {"videos": [{"source": clip.path} for clip in clips]}, "fresh": True})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    deadline = time.monotonic() + 100
    while (status := c.get(f"/api/v1/pipelines/runs/{run_id}").json())["state"] == "running":
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["state"] == "succeeded", status
    outputs = c.get(f"/api/v1/pipelines/runs/{run_id}/outputs", params={"stage": "logline"}).json()["outputs"]
    records = [json.loads(o["result"]["line"]) for o in outputs]
    assert [(r["job"], r["owner"], r["run"]) for r in records] == [(o["job"], "submitter", run_id) for o in outputs]
    assert [r["source_digest"] for r in records] == [sha256_of(Path(clip.path)) for clip in clips]
    report = c.get(f"/api/v1/pipelines/runs/{run_id}/outputs").json()["outputs"][0]["result"]
    assert report["analysed"] == 2 and report["crossings"] == 3  # video.report still reads the summaries

    shown = cli(cluster, "logline", "verify", "video", "--key-file", str(cluster.key_file))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    for record, clip in zip(records, clips):
        assert (f"job {record['job']}, owner submitter, run {run_id}, source {clip.path}, "
                f"source sha256 {sha256_of(Path(clip.path))}") in shown.stdout
    assert "lines verified" in shown.stdout

    log = cluster.loglines / "video.log"
    lines = log.read_bytes().splitlines(keepends=True)
    number = next(i for i, raw in enumerate(lines, 1) if json.loads(raw)["job"] == records[-1]["job"])
    lines[number - 1] = lines[number - 1].replace(b'"owner":"submitter"', b'"owner":"operator"')
    log.write_bytes(b"".join(lines))
    edited = cli(cluster, "logline", "verify", str(log), "--key-file", str(cluster.key_file))
    assert edited.returncode == 1, edited.stdout + edited.stderr
    assert f"{log}:{number}: bad signature" in edited.stdout
    assert loglines.verify(log, loglines.load_key(cluster.key_file)).problems == [
        (number, "bad signature (edited, or signed with another key)")]
