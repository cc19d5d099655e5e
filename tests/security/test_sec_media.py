"""Media sources (issue 15, "the trust boundary"): `video.scan` and `camera.count` used to open any path
or URL FFmpeg accepts, so a submitter could make workers fetch internal HTTP/RTSP URLs and map their
disks from the errors. Now a source must match `media.sources` (checked on the worker, where it is
opened), FFmpeg gets the checked path or URL and may open nothing else (no playlists, no redirects),
every refusal reads the same, and numbers are bounded in the schema."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from sec_cluster import Recorder, SecCluster, recording_server, sec_cluster

from clusterai.config import parse_config
from clusterai.core import media_policy
from clusterai.core.media_policy import SourcePolicy, use_policy
from clusterai.errors import ConfigError
from clusterai.workloads import sources
from clusterai.workloads.synth import make_clip, make_corrupt

UNREADABLE = "cannot be read: not found, not a readable video file, or not allowed by media.sources"
SUPPORT = Path(__file__).resolve().parents[1] / "support"


# -- the allow-list ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "allowed"), [
    ("rtsp://10.1.2.3/stream", True), ("rtsp://10.255.255.255:8554/s", True), ("RTSP://10.1.2.3/s", True),
    ("rtsp://11.0.0.1/stream", False), ("http://10.1.2.3/stream", False),  # other network, other scheme
    ("rtsp://user:pw@10.1.2.3/s", True),
    ("http://cam1.local:8080/video.mjpg", True), ("http://CAM1.Local.:8080/v", True),
    ("http://cam1.local/video.mjpg", False), ("http://cam1.local:8081/v", False),  # the port must match
    ("https://cam1.local:8080/v", False), ("http://cam2.local:8080/v", False),
    ("http://cam1.local.evil.com:8080/v", False), ("http://evilcam1.local:8080/v", False),
    ("rtsp://[fd00::1]/s", True), ("rtsp://[fe80::1]/s", False),
    ("rtsps://cam.example.com/live", True), ("rtsps://cam.example.com:8322/live", False),  # 322 is the default
    # what two URL parsers could read as two different hosts: refused
    ("rtsp://10.1.2.3@evil.com/s", False), ("rtsp://evil.com#@10.1.2.3/s", False),
    ("rtsp://evil.com\\@10.1.2.3/s", False), ("rtsp://a@b@10.1.2.3/s", False), ("rtsp://10.1.2.3 /s", False),
    ("rtsp://[fd00::1%25eth0]/s", False), ("rtsp://10.1.2.3:99999/s", False), ("rtsp:///s", False),
    ("file:///etc/passwd", False), ("ftp://10.1.2.3/x", False), ("concat:rtsp://10.1.2.3/s", False),
])
def test_url_patterns(url: str, allowed: bool) -> None:
    policy = SourcePolicy.parse(["rtsp://10.0.0.0/8", "http://cam1.local:8080", "rtsp://[fd00::/8]",
                                 "rtsps://cam.example.com:322"])
    assert (policy.allowed_url(url) is not None) is allowed, url


def test_a_host_name_against_a_network_counts_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = SourcePolicy.parse(["rtsp://10.0.0.0/8"])
    answers = {"cam.lan": ["10.0.0.5"], "split.lan": ["10.0.0.5", "192.168.1.1"], "gone.lan": []}
    monkeypatch.setattr(media_policy, "_resolve", lambda host, port: [
        media_policy.ipaddress.ip_address(a) for a in answers.get(host, [])])
    assert policy.allowed_url("rtsp://cam.lan/s") == "rtsp://cam.lan/s"
    assert policy.allowed_url("rtsp://split.lan/s") is None  # one address outside is enough to refuse
    assert policy.allowed_url("rtsp://gone.lan/s") is None  # does not resolve
    # a host name pattern is a name: no resolving, and its addresses do not matter
    named = SourcePolicy.parse(["rtsp://cam.lan"])
    assert named.allowed_url("rtsp://CAM.LAN:554/s") == "rtsp://cam.lan:554/s"
    assert named.allowed_url("rtsp://10.0.0.5/s") is None


def test_the_url_ffmpeg_gets_is_rebuilt_from_its_checked_parts() -> None:
    policy = SourcePolicy.parse(["rtsp://10.0.0.0/8"])
    assert policy.allowed_url("RTSP://admin:s3cret@10.0.0.7:8554/live/ch1?subtype=0") == (
        "rtsp://admin:s3cret@10.0.0.7:8554/live/ch1?subtype=0")


def test_local_sources_resolve_symlinks_and_dots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    media, outside, evil = tmp_path / "media", tmp_path / "outside", tmp_path / "media-evil"
    for folder in (media / "sub", outside, evil):
        folder.mkdir(parents=True)
    for path in (media / "a.avi", media / "sub" / "b.avi", outside / "secret.avi", evil / "c.avi"):
        path.write_bytes(b"x")
    (media / "link-out.avi").symlink_to(outside / "secret.avi")
    (media / "link-in.avi").symlink_to(media / "sub" / "b.avi")
    (media / "dir-out").symlink_to(outside)
    (tmp_path / "via-link").symlink_to(media)
    policy = SourcePolicy.parse([str(media)])
    assert policy.local_file(str(media / "a.avi")) == str(media / "a.avi")
    assert policy.local_file(str(media / "link-in.avi")) == str(media / "sub" / "b.avi")  # the real path
    assert policy.local_file(str(tmp_path / "via-link" / "a.avi")) == str(media / "a.avi")
    for refused in (outside / "secret.avi", media / "link-out.avi", media / "dir-out" / "secret.avi",
                    media / ".." / "outside" / "secret.avi", evil / "c.avi", media / "sub", media,
                    media / "missing.avi", Path("/dev/null"), Path("/etc/passwd")):
        assert policy.local_file(str(refused)) is None, refused
    for trick in ("concat:" + str(media / "a.avi"), "subfile:,,start,0,end,0,,:" + str(media / "a.avi"),
                  "file:" + str(media / "a.avi"), str(media / "a.avi") + "\x00"):
        assert policy.local_file(trick) is None, trick
    # a relative folder is the worker's own: relative to its working directory
    monkeypatch.chdir(tmp_path)
    assert SourcePolicy.parse(["media"]).local_file("media/a.avi") == str(media / "a.avi")
    assert SourcePolicy().local_file("media/a.avi") is None  # the default: .clusterai/media only


@pytest.mark.parametrize(("entry", "message"), [
    ("rtsp://10.0.0.1/8", "has host bits set"), ("rtsp://10.0.0.0/33", "is not a network such as 10.0.0.0/8"),
    ("ftp://files.lan", "unknown scheme 'ftp'; allowed: http, https, rtsp, rtsps, rtmp"),
    ("file:///data", "unknown scheme 'file'"), ("http://cam1.local/live", "a pattern has no path"),
    ("http://cam1.local?x=1", "with no path, query, user or password"),
    ("rtsp://admin:pw@10.0.0.1", "with no path, query, user or password"),
    ("http://cam1.local:0", "port '0' is not a number from 1 to 65535"), ("http://cam1.local:http", "port 'http'"),
    ("rtsp://fd00::1", "in brackets"), ("rtsp://bad_host!", "is not a host name, an IP address or a network"),
    ("", "not empty"),
])
def test_bad_entries_are_named_at_config_load(entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"media": {"sources": ["/data/cams", entry]}}, source="cluster.yaml")
    text = " ".join(str(caught.value).split())
    assert f"media.sources entry {entry!r}" in text and message in text, text


def test_the_default_is_the_clusters_own_folder() -> None:
    config = parse_config({})
    assert config.media.sources == [".clusterai/media"]
    assert SourcePolicy.parse(config.media.sources) == SourcePolicy() == media_policy.current_policy()


# -- what FFmpeg may open, with the installed OpenCV ---------------------------------------------------

@pytest.fixture
def folders(tmp_path: Path) -> Iterator[dict[str, Path]]:
    media, outside = tmp_path / "media", tmp_path / "outside"
    make_clip(outside / "secret.avi", seconds=4, crossings=1, seed=3)
    make_clip(media / "ok.avi", seconds=4, crossings=1, seed=4)
    with use_policy([str(media)]):
        yield {"media": media, "outside": outside}


def playlist(path: Path, target: str) -> Path:
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:4.0,\n{target}\n#EXT-X-ENDLIST\n")
    return path


def frames_read_without_the_guard(path: Path) -> int:
    """How many frames FFmpeg reads from `path` when nothing restricts it (proof that the attack is real)."""
    before = os.environ.pop(sources.CAPTURE_OPTIONS_ENV, None)
    try:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        n = 0
        while cap.isOpened() and cap.grab():
            n += 1
        cap.release()
        return n
    finally:
        if before is not None:
            os.environ[sources.CAPTURE_OPTIONS_ENV] = before


def test_a_playlist_in_an_allowed_folder_cannot_reach_a_file_outside(folders: dict[str, Path]) -> None:
    hls = playlist(folders["media"] / "inside.m3u8", str(folders["outside"] / "secret.avi"))
    assert frames_read_without_the_guard(hls) > 0  # FFmpeg alone would read the file outside
    concat = folders["media"] / "inside.ffconcat"
    concat.write_text(f"ffconcat version 1.0\nfile {folders['outside'] / 'secret.avi'}\n")
    for path in (hls, concat):
        with pytest.raises(ValueError, match=UNREADABLE):
            sources.open_video(str(path), 5)
    sources.open_video(str(folders["media"] / "ok.avi"), 5).release()  # a real video still opens


def test_a_playlist_in_an_allowed_folder_cannot_fetch_a_url(folders: dict[str, Path]) -> None:
    with recording_server() as internal:
        internal.files["/secret.avi"] = (folders["outside"] / "secret.avi").read_bytes()
        hls = playlist(folders["media"] / "fetch.m3u8", f"{internal.url}/secret.avi")
        concat = folders["media"] / "fetch.ffconcat"
        concat.write_text(f"ffconcat version 1.0\nfile {internal.url}/secret.avi\n")
        for path in (hls, concat):
            with pytest.raises(ValueError, match=UNREADABLE):
                sources.open_video(str(path), 5)
        assert internal.requests == []


def test_an_allowed_url_follows_no_redirect(folders: dict[str, Path]) -> None:
    clip = (folders["media"] / "ok.avi").read_bytes()
    with recording_server() as internal, recording_server() as camera:
        internal.files["/secret.avi"] = clip
        camera.files["/live.avi"] = clip
        camera.redirects["/moved.avi"] = f"{internal.url}/secret.avi"
        with use_policy([camera.url]):
            sources.open_video(f"{camera.url}/live.avi", 5).release()  # allowed, and read
            with pytest.raises(ValueError, match=UNREADABLE):
                sources.open_video(f"{camera.url}/moved.avi", 5)
            with pytest.raises(ValueError, match=UNREADABLE):
                sources.open_video(f"{internal.url}/secret.avi", 5)  # another port: not allowed
        assert "/moved.avi" in camera.requests and internal.requests == []


def test_the_capture_options_are_set_only_while_opening(folders: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []
    real = cv2.VideoCapture

    def spy(*args: Any) -> Any:
        seen.append(os.environ.get(sources.CAPTURE_OPTIONS_ENV))
        return real(*args)

    monkeypatch.setattr(cv2, "VideoCapture", spy)
    monkeypatch.delenv(sources.CAPTURE_OPTIONS_ENV, raising=False)
    ok = str(folders["media"] / "ok.avi")
    threads = [threading.Thread(target=lambda: sources.open_video(ok, 5).release()) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(seen) == 6 and all(s is not None and s.startswith("protocol_whitelist;file|") for s in seen)
    assert sources.CAPTURE_OPTIONS_ENV not in os.environ  # restored, also after threads overlapped
    monkeypatch.setenv(sources.CAPTURE_OPTIONS_ENV, "stimeout;5000000")  # an operator's own: kept, ours win
    sources.open_video(ok, 5).release()
    assert seen[-1] is not None and seen[-1].startswith("stimeout;5000000|protocol_whitelist;file|")
    assert os.environ[sources.CAPTURE_OPTIONS_ENV] == "stimeout;5000000"


def test_every_refusal_reads_the_same(folders: dict[str, Path]) -> None:
    media = folders["media"]
    make_corrupt(media / "corrupt.avi")
    (media / "empty.avi").touch()
    (media / "folder.avi").mkdir()
    (media / "link.avi").symlink_to(folders["outside"] / "secret.avi")
    cases = [str(folders["outside"] / "secret.avi"), str(media / "missing.avi"), str(media / "folder.avi"),
             str(media / "corrupt.avi"), str(media / "empty.avi"), str(media / "link.avi"), "/etc/shadow",
             "/etc/no-such-file", "http://127.0.0.1:9/x", "http://user:pw@10.0.0.1/x"]
    texts = set()
    for source in cases:
        with pytest.raises(ValueError) as caught:
            sources.open_video(source, 2)
        texts.add(str(caught.value).replace(sources.describe(source), "SOURCE"))
    assert texts == {f"video source 'SOURCE' {UNREADABLE}"}
    with pytest.raises(ValueError) as caught:  # a URL's password is never shown
        sources.open_video("http://user:pw@10.0.0.1/x", 2)
    assert "pw" not in str(caught.value) and "http://***@10.0.0.1/x" in str(caught.value)


# -- attacks over HTTP, against a cluster ----------------------------------------------------------------

@pytest.fixture(scope="module")
def camera() -> Iterator[Recorder]:
    """An allowed camera (its exact host and port are in media.sources)."""
    with recording_server() as rec:
        yield rec


@pytest.fixture(scope="module")
def internal() -> Iterator[Recorder]:
    """An internal service no rule allows (same address, another port)."""
    with recording_server() as rec:
        yield rec


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, camera: Recorder, internal: Recorder) -> Iterator[SecCluster]:
    root = tmp_path_factory.mktemp("sec-media")
    with sec_cluster(root, sources=[str(root / "media"), camera.url]) as c:
        secret = make_clip(c.outside / "secret.avi", seconds=4, crossings=1, seed=8)
        make_clip(c.media / "ok.avi", seconds=4, crossings=1, seed=9)
        internal.files["/secret.avi"] = camera.files["/live.avi"] = Path(secret.path).read_bytes()
        camera.redirects["/moved.avi"] = f"{internal.url}/secret.avi"
        (c.media / "link.avi").symlink_to(c.outside / "secret.avi")
        playlist(c.media / "fetch.m3u8", f"{internal.url}/secret.avi")
        playlist(c.media / "escape.m3u8", str(c.outside / "secret.avi"))
        yield c


def attacks(c: SecCluster, internal: Recorder, camera: Recorder) -> dict[str, str]:
    secret = str(c.outside / "secret.avi")
    return {
        "a file outside": secret,
        "an internal URL": f"{internal.url}/secret.avi",
        "a redirect to an internal URL": f"{camera.url}/moved.avi",
        "a symlink out": str(c.media / "link.avi"),
        "dot-dot": str(c.media / ".." / "outside" / "secret.avi"),
        "concat:": f"concat:{c.media / 'ok.avi'}|{secret}",
        "subfile:": f"subfile:,,start,0,end,0,,:{secret}",
        "file:": f"file:{secret}",
        "file://": f"file://{secret}",
        "a playlist fetching a URL": str(c.media / "fetch.m3u8"),
        "a playlist escaping the folder": str(c.media / "escape.m3u8"),
        "a missing file": str(c.media / "missing.avi"),
        "a folder": str(c.media),
    }


@pytest.mark.cluster
@pytest.mark.parametrize("task", ["video.scan", "camera.count"])
def test_every_source_attack_ends_dead_with_one_message(cluster: SecCluster, internal: Recorder, camera: Recorder,
                                                        task: str) -> None:
    before = cluster.tree()
    errors = {}
    for kind, source in attacks(cluster, internal, camera).items():
        job = cluster.run(task, {"source": source})
        assert job["state"] == "dead" and len(job["attempts"]) == 1, (kind, job)
        assert job["result"] is None
        errors[kind] = job["error"].replace(repr(sources.describe(source)), "'SOURCE'")
        assert f"video source 'SOURCE' {UNREADABLE}" in errors[kind], (kind, errors[kind])
    # byte for byte, traceback included: nothing tells a refused file from a missing one, or from a folder
    assert len(set(errors.values())) == 1, errors
    assert internal.requests == []  # nothing fetched from the internal service, directly or redirected
    assert cluster.tree() == before  # no artifact, nothing else written


@pytest.mark.cluster
def test_an_allowed_file_and_an_allowed_url_are_read(cluster: SecCluster, camera: Recorder) -> None:
    job = cluster.run("camera.count", {"source": f"{camera.url}/live.avi", "checkpoint_every": 1.0})
    assert job["state"] == "succeeded" and job["result"]["total"] == 1, job["error"]
    job = cluster.run("video.scan", {"source": str(cluster.media / "ok.avi"), "detect_people": False})
    assert job["state"] == "succeeded", job["error"]


BAD_NUMBERS = [("video.scan", {"thumb_width": 40000}, "thumb_width: Input should be less than or equal to 1920"),
               ("video.scan", {"thumb_width": 4}, "thumb_width: Input should be greater than or equal to 16"),
               ("video.scan", {"sample_fps": 0}, "sample_fps: Input should be greater than 0"),
               ("video.scan", {"sample_fps": 1e9}, "sample_fps"), ("video.scan", {"scene_threshold": 5}, "scene"),
               ("video.scan", {"max_frames": 0}, "max_frames"),
               ("camera.count", {"checkpoint_every": 0.001}, "checkpoint_every"),
               ("camera.count", {"max_frames": -1}, "max_frames"), ("camera.count", {"fps": 1e7}, "fps"),
               ("camera.count", {"line": [0, 0, 10]}, "line: List should have at least 4 items"),
               ("camera.count", {"line": [0, 0, 10, 1e12]}, "line.3: Input should be less than or equal to"),
               ("camera.count", {"line": [0, 0, 10, "x"]}, "line.3")]


@pytest.mark.cluster
@pytest.mark.parametrize(("task", "params", "message"), BAD_NUMBERS)
def test_numbers_out_of_bounds_are_a_422(cluster: SecCluster, task: str, params: dict[str, Any],
                                         message: str) -> None:
    jobs = cluster.api.store.job_counts()
    r = cluster.submit(task, {"source": str(cluster.media / "ok.avi"), **params})
    assert r.status_code == 422 and message in r.text, r.text
    assert cluster.api.store.job_counts() == jobs
    schema = next(t for t in cluster.http().get("/api/v1/tasks").json()["tasks"] if t["name"] == task)
    props = schema["payload_schema"]["properties"]
    assert props["thumb_width" if task == "video.scan" else "checkpoint_every"].get("maximum") is not None


@pytest.mark.cluster
def test_the_cli_refuses_a_folder_outside_media_sources_up_front(cluster: SecCluster) -> None:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "COLUMNS": "250"}
    runs = len(cluster.api.store.list_runs())
    for args in ([str(cluster.outside)], [str(cluster.outside / "secret.avi")], [str(cluster.media / "link.avi")]):
        result = subprocess.run([sys.executable, "-m", "clusterai.cli.main", "--config", str(cluster.config_file),
                                 "pipeline", "run", "video-analysis", *args], cwd=cluster.root, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "outside the folders media.sources allows" in " ".join(result.stderr.split())
    assert len(cluster.api.store.list_runs()) == runs
