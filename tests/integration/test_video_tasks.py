"""The video and camera tasks on a real cluster of worker processes: synthetic clips with known
object counts (in a folder media.sources allows) are scanned, summarised and logged with signed
lines, counted; a corrupt clip goes dead with a clear error while its siblings finish."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config

from clusterai.core import logline as loglines
from clusterai.core.artifacts import ArtifactStore
from clusterai.core.model import State
from clusterai.workloads.synth import make_clip, make_corrupt

pytestmark = pytest.mark.cluster


def test_scan_summarize_logline_and_count_across_workers(tmp_path: Path, monkeypatch, start_cluster):
    artifacts = tmp_path / "artifacts"
    key_file = tmp_path / "logline.key"
    # the worker processes start after these are set, so they share the test's artifact root and key
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("CLUSTERAI_LOGLINE_KEY", str(key_file))
    media = tmp_path / "media"
    clips = {"three": make_clip(media / "three.avi", seconds=4, crossings=3, seed=1),
             "two": make_clip(media / "two.avi", seconds=4, crossings=2, seed=2)}
    corrupt = make_corrupt(media / "corrupt.avi")
    monkeypatch.delenv("OPENCV_FOR_THREADS_NUM", raising=False)
    config = make_config(tmp_path).with_overrides(**{"media.sources": [str(media)],
                                                     "logline.dir": str(tmp_path / "loglines")})
    client = start_cluster(config)
    # each worker's OpenCV pool is as wide as its Dask threads (1), not every core of the machine
    assert client.result(client.submit("test.cv2_threads"), timeout=60) == 1

    scans = client.submit_many("video.scan", [{"source": c.path} for c in clips.values()] +
                               [{"source": str(corrupt)}])
    counts = client.submit_many("camera.count", [{"source": c.path, "checkpoint_every": 1.0}
                                                 for c in clips.values()])
    client.wait([*scans, *counts], timeout=120)
    *good, bad = client.get_many(scans)
    assert bad.state is State.DEAD and "corrupt.avi' cannot be read" in (bad.error or "")
    assert len(client.get(bad.id).attempts) == 1  # not retried: a broken file stays broken
    store = ArtifactStore()
    for job in good:
        assert job.state is State.SUCCEEDED, job.error
        assert job.result["scenes"] >= 1 and len(job.result["digest"]) == 64  # the source's SHA-256
        assert store.get_bytes(job.result["timeline"]).startswith(b"{")
        assert job.result["keyframes"] and all(store.get_bytes(k)[:2] == b"\xff\xd8" for k in job.result["keyframes"])

    for job, truth in zip(client.get_many(counts), clips.values()):
        assert job.state is State.SUCCEEDED, job.error
        assert job.result["total"] == truth.crossings
        assert job.result["left_to_right"] == truth.left_to_right

    summaries = client.submit_many("video.summarize", [{"scan": job.result} for job in good])
    client.wait(summaries, timeout=60)
    lines = client.submit_many("video.logline", [{"summary": job.result["summary"], "log": "clips"}
                                                 for job in client.get_many(summaries)])
    client.wait(lines, timeout=60)
    assert all(j.state is State.SUCCEEDED for j in client.get_many(lines)), [j.error for j in client.get_many(lines)]
    log = tmp_path / "loglines" / "clips.log"  # the name, in logline.dir
    report = loglines.verify(log, loglines.load_key(key_file))
    assert report.valid and report.ok == 2, report.problems
    records = [r for r in (c.record for c in loglines.check_lines(log, loglines.load_key(key_file))) if r]
    assert sorted(r["job"] for r in records) == sorted(j.id for j in lines)  # who asked: the job, told by the head
    assert all(r["owner"] is None and r["run"] is None for r in records)  # the local client, no pipeline
    assert {r["source_digest"] for r in records} == {j.result["digest"] for j in good}
