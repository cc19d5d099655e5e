"""Task parameters that name files (issue 15, "the trust boundary"): a submitter must not make a worker
create or append a file anywhere but the cluster's own folders. `video.logline` takes a log *name*
(NAME.log in logline.dir); anything else is a 422 at submit, and refused again on the worker (a light
worker has no payload model). What clusterai writes there is private: folders 0700, files 0600."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sec_cluster import SecCluster, sec_cluster

from clusterai.core import logline as loglines
from clusterai.core.artifacts import ArtifactStore
from clusterai.core.model import JobSpec
from clusterai.core.tasks import get_task, import_task_modules
from clusterai.errors import BadInput, NonRetryableError
from clusterai.workloads import media
from clusterai.workloads.synth import make_clip

pytestmark = pytest.mark.cluster

import_task_modules([])

# the names an attacker would try: out of the folder, absolute, the home's dot files, a folder, hidden
BAD_NAMES = ["../../x", "../x", "/tmp/clusterai-attack.log", "~/.bash_profile", "a/b", "..", ".", ".bashrc",
             "x\n", "x\x00y", "x\x1b[2J", "", "a" * 101, "C:\\x", "video/../../x"]
REF = {"artifact": "file:///nowhere/summaries/x/y.json", "size": 1, "sha256": "0" * 64}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecCluster]:
    with sec_cluster(tmp_path_factory.mktemp("sec-files")) as c:
        yield c


# -- over HTTP, against the cluster ----------------------------------------------------------------

@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:24] for n in BAD_NAMES])
def test_a_log_that_is_not_a_plain_name_is_a_422_and_nothing_is_written(cluster: SecCluster, name: str) -> None:
    before, jobs = cluster.tree(), cluster.api.store.job_counts()
    home_profile = Path(os.path.expanduser("~/.bash_profile"))  # the test's own HOME, as a worker's would be
    existed = home_profile.exists()
    r = cluster.submit("video.logline", {"summary": REF, "log": name})
    assert r.status_code == 422, r.text
    assert "a log name is 1 to 100 letters, digits" in r.text  # says what is allowed
    assert cluster.api.store.job_counts() == jobs  # no job stored
    assert cluster.tree() == before and home_profile.exists() == existed
    assert not Path("/tmp/clusterai-attack.log").exists()


def test_a_job_that_skipped_the_api_is_refused_on_the_worker(cluster: SecCluster) -> None:
    # a job put in the store without the payload model (as from a head without pydantic): the worker's
    # own check refuses it, at once, and writes nothing
    before = cluster.tree()
    store = cluster.api.store
    (job,) = store.submit_many([JobSpec(task="video.logline", payload={"summary": REF, "log": "../../x"},
                                        owner="submitter")], time.time())
    done = cluster.finished(job.id)
    assert done["state"] == "dead" and len(done["attempts"]) == 1
    assert "a log name is 1 to 100 letters" in done["error"]
    assert cluster.tree() == before


def test_a_name_lands_in_logline_dir_private(cluster: SecCluster) -> None:
    clip = make_clip(cluster.media / "files.avi", seconds=4, crossings=1, seed=5)
    scan = cluster.run("video.scan", {"source": clip.path, "detect_people": False, "detect_faces": False})
    assert scan["state"] == "succeeded", scan["error"]
    summary = cluster.run("video.summarize", {"scan": scan["result"]})
    assert summary["state"] == "succeeded", summary["error"]
    line = cluster.run("video.logline", {"summary": summary["result"]["summary"], "log": "gate.log"})
    assert line["state"] == "succeeded", line["error"]
    assert line["result"]["log"] == "gate"  # gate and gate.log are one log
    log = cluster.loglines / "gate.log"
    assert [p.name for p in cluster.loglines.iterdir()] == ["gate.log"]
    assert mode(log) == 0o600  # made by the worker, whose umask is 022
    assert json.loads(log.read_text())["owner"] == "submitter"
    # what the scan and the summary stored: private folders, private files
    stored = list(cluster.artifacts.rglob("*"))
    assert any(p.name == "timeline.json" for p in stored) and any(p.parent.parent.name == "summaries" for p in stored)
    for path in stored:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), (path, oct(mode(path)))


# -- on the worker, without the API ----------------------------------------------------------------

@pytest.mark.parametrize("name", BAD_NAMES[:6])
def test_the_task_itself_refuses_a_path(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NonRetryableError, match="a log name is"):
        media.video_logline(summary=REF, log=name)
    # a light worker: no payload model, the markers are checked before the call
    light = dataclasses.replace(get_task("video.logline"), model=None)
    with pytest.raises(NonRetryableError, match="invalid payload: log: a log name is"):
        light.call({"summary": REF, "log": name})
    with pytest.raises(BadInput, match="log: a log name is"):
        light.validate({"summary": REF, "log": name})
    assert list(tmp_path.iterdir()) == []


def test_log_names_and_where_they_lead(tmp_path: Path) -> None:
    assert loglines.log_path("video", tmp_path) == tmp_path / "video.log"
    assert loglines.log_path("video.log", tmp_path) == tmp_path / "video.log"
    assert loglines.log_path("cam-1_2026.11", tmp_path) == tmp_path / "cam-1_2026.11.log"
    for name in [*BAD_NAMES, None, 3, "a..b"]:
        with pytest.raises(BadInput, match="no '/', '..', '~' or control characters"):
            loglines.log_path(name, tmp_path)  # type: ignore[arg-type]


def test_no_other_workload_parameter_names_a_file() -> None:
    # The rule holds for every built-in task: a parameter that names where to write is a name, checked.
    import inspect

    for name in ("video.scan", "video.summarize", "video.logline", "camera.count", "video.report",
                 "image.filter", "primes.count", "hash.chain", "demo.flaky", "llm.generate", "llm.embed"):
        try:
            params = inspect.signature(get_task(name).fn).parameters
        except Exception:  # noqa: BLE001 - a task whose extra is not installed here
            continue
        writes = {p for p in params if p in ("log", "path", "file", "output", "out", "dest", "folder", "dir")}
        assert writes <= {"log"}, (name, writes)


def test_logs_and_artifacts_are_private_whatever_the_umask(tmp_path: Path, permissive_umask: None) -> None:
    log = tmp_path / "new" / "deeper" / "v.log"
    loglines.append(log, {"a": 1}, b"k" * 32)
    assert mode(log) == 0o600 and mode(log.parent) == 0o700 and mode(log.parent.parent) == 0o700
    store = ArtifactStore(str(tmp_path / "store"))
    store.put_bytes("video/abc/def", "timeline.json", b"{}")
    for path in [tmp_path / "store", *(tmp_path / "store").rglob("*")]:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), (path, oct(mode(path)))
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    loglines.append(shared / "v.log", {"a": 1}, b"k" * 32)
    assert mode(shared) == 0o755 and mode(shared / "v.log") == 0o600  # an existing folder is left as it is
