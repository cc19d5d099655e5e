"""The artifact store: round trips, atomic writes, sanitised names, refs kept inside the root, sha256
checks, streaming, and the memory:// filesystem."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from clusterai.core.artifacts import (
    TMP_PREFIX,
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactStore,
    default_root,
    safe_name,
    safe_namespace,
)
from clusterai.errors import BadInput, ConfigError


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(f"file://{tmp_path}/artifacts")


@pytest.fixture
def memory_store() -> Iterator[ArtifactStore]:
    root = f"memory://test-{uuid.uuid4().hex}"
    yield ArtifactStore(root)
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- roots -------------------------------------------------------------------------------------

def test_roots_become_absolute_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLUSTERAI_ARTIFACTS", raising=False)
    expected = f"file://{tmp_path.resolve()}/.clusterai/artifacts"
    assert default_root() == expected
    assert ArtifactStore().root == expected
    assert ArtifactStore("x/y").root == f"file://{tmp_path.resolve()}/x/y"
    assert ArtifactStore("file://x/y").root == f"file://{tmp_path.resolve()}/x/y"
    assert ArtifactStore(f"{tmp_path}/z/").root == f"file://{tmp_path.resolve()}/z"
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS", "elsewhere")
    assert default_root() == f"file://{tmp_path.resolve()}/elsewhere"


def test_s3_without_s3fs_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed, even where it is
    # fsspec keeps the classes it has imported; forget S3's (the package attribute is a read-only view)
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)
    with pytest.raises(ConfigError, match="pip install s3fs"):
        ArtifactStore("s3://bucket/prefix")


def test_unknown_protocol_is_a_config_error():
    with pytest.raises(ConfigError, match="nosuchfs"):
        ArtifactStore("nosuchfs://x")


# -- round trips -------------------------------------------------------------------------------

def test_put_and_get_bytes(store: ArtifactStore, tmp_path: Path):
    data = b"\x00\x01 frames" * 1000
    ref = store.put_bytes("runs/42/scan", "frames.bin", data)
    assert ref == {"artifact": f"{store.root}/runs/42/scan/frames.bin", "size": len(data),
                   "sha256": hashlib.sha256(data).hexdigest()}
    assert (tmp_path / "artifacts/runs/42/scan/frames.bin").read_bytes() == data
    assert store.get_bytes(ref) == data
    assert store.get_bytes(ref["artifact"]) == data
    with store.open(ref) as f:
        assert f.read(6) == b"\x00\x01 fra"
    assert store.exists(ref) and store.exists(ref["artifact"])
    store.verify(ref)


def test_overwrite_list_and_delete(store: ArtifactStore):
    first = store.put_bytes("ns", "b.txt", b"one")
    store.put_bytes("ns", "a.txt", b"")
    store.put_bytes("ns/deeper", "c.txt", b"nested, not listed with ns")
    second = store.put_bytes("ns", "b.txt", b"two!")
    assert store.get_bytes(second) == b"two!"
    assert [(r["name"], r["size"]) for r in store.list("ns")] == [("a.txt", 0), ("b.txt", 4)]
    assert store.list("ns")[1]["artifact"] == second["artifact"]
    assert store.list("nothing/here") == []
    with pytest.raises(ArtifactCorrupt):
        store.get_bytes(first)  # the old reference no longer matches what is there
    assert store.delete(second) is True
    assert store.delete(second["artifact"]) is False
    assert not store.exists(second)
    with pytest.raises(ArtifactNotFound, match="no artifact"):
        store.get_bytes(second)
    with pytest.raises(FileNotFoundError):  # ArtifactNotFound is one too
        store.open(second)


def test_unicode_and_odd_but_safe_names(store: ArtifactStore):
    for name in ["vidéo 1.mp4", "50%.txt", "...", ".hidden", "a b", "x" * 255]:
        ref = store.put_bytes("ns", name, name.encode())
        assert store.get_bytes(ref) == name.encode()


def test_memory_filesystem(memory_store: ArtifactStore):
    assert memory_store.root.startswith("memory://")
    ref = memory_store.put_bytes("runs/1", "out.json", b"{}")
    assert memory_store.get_bytes(ref) == b"{}"
    copy = memory_store.put_stream("runs/1", "copy.json", io.BytesIO(b"[]"))
    assert [r["name"] for r in memory_store.list("runs/1")] == ["copy.json", "out.json"]
    assert memory_store.delete(ref) and memory_store.delete(copy) and memory_store.list("runs/1") == []
    with pytest.raises(BadInput, match="outside"):
        memory_store.get_bytes("memory:///elsewhere/runs/1/out.json")


def test_memory_stream_and_sha(memory_store: ArtifactStore):
    ref = memory_store.put_stream("a", "b", io.BytesIO(b"x" * 3_000_000))
    assert ref["size"] == 3_000_000
    with fsspec.filesystem("memory").open(ref["artifact"], "wb") as f:
        f.write(b"y" * 3_000_000)
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        memory_store.get_bytes(ref)


# -- atomic writes -----------------------------------------------------------------------------

class Exploding(io.RawIOBase):
    """A stream that gives some bytes, then fails: the write must leave nothing behind."""

    def __init__(self) -> None:
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 2:
            raise OSError("the camera went away")
        return b"z" * 1000


def test_failing_write_leaves_nothing(store: ArtifactStore, tmp_path: Path):
    with pytest.raises(OSError, match="camera"):
        store.put_stream("ns", "clip.bin", Exploding())
    assert files_under(tmp_path / "artifacts") == []


def test_failing_write_keeps_the_previous_artifact(store: ArtifactStore, tmp_path: Path):
    ref = store.put_bytes("ns", "clip.bin", b"the old, whole clip")
    with pytest.raises(OSError):
        store.put_stream("ns", "clip.bin", Exploding())
    assert store.get_bytes(ref) == b"the old, whole clip"
    assert files_under(tmp_path / "artifacts") == ["ns/clip.bin"]


def test_failing_write_on_memory_leaves_nothing(memory_store: ArtifactStore):
    with pytest.raises(OSError):
        memory_store.put_stream("ns", "clip.bin", Exploding())
    fs = fsspec.filesystem("memory")
    root = memory_store.root
    assert not fs.exists(root) or fs.find(root) == []


def test_no_temporary_files_left(store: ArtifactStore, tmp_path: Path):
    for i in range(5):
        store.put_bytes("ns", f"f{i}", os.urandom(100))
    names = files_under(tmp_path / "artifacts")
    assert names == [f"ns/f{i}" for i in range(5)]
    assert not any(TMP_PREFIX in n for n in names)


def test_leftover_temporary_files_are_not_listed(store: ArtifactStore, tmp_path: Path):
    store.put_bytes("ns", "real", b"1")
    (tmp_path / "artifacts/ns" / f"{TMP_PREFIX}abc").write_bytes(b"half")
    assert [r["name"] for r in store.list("ns")] == ["real"]


def test_large_file_is_streamed(store: ArtifactStore, tmp_path: Path):
    source = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with open(source, "wb") as f:
        for _ in range(50):
            f.write(block)
            digest.update(block)
    tracemalloc.start()
    try:
        ref = store.put_file("videos", "big.bin", source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ref["size"] == 50 << 20 and ref["sha256"] == digest.hexdigest()
    assert peak < 8 << 20, f"put_file held {peak} bytes at once"
    store.verify(ref)  # streamed as well


def test_put_file_missing_source(store: ArtifactStore, tmp_path: Path):
    with pytest.raises(BadInput, match="no such file"):
        store.put_file("ns", "x", tmp_path / "absent")
    with pytest.raises(BadInput, match="directory"):
        store.put_file("ns", "x", tmp_path)


# -- names and escapes -------------------------------------------------------------------------

ESCAPES = ["../x", "a/../../b", "/etc/passwd", "C:\\x", "a\\b", "\x00", "a\x00b", "bell\x07", "new\nline",
           "%2e%2e", "%2E%2E/x", "a%2fb", "%252e%252e", "..", ".", "", "a//b", "a/", "x" * 256, "é" * 128,
           f"{TMP_PREFIX}sneaky", "q?x", "frag#x"]


@pytest.mark.parametrize("bad", ESCAPES)
def test_every_escape_is_refused_as_a_name(store: ArtifactStore, tmp_path: Path, bad: str):
    with pytest.raises(BadInput, match="artifact"):
        store.put_bytes("ns", bad, b"x")
    with pytest.raises(BadInput):
        safe_name(bad)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("bad", [e for e in ESCAPES if e not in ("a/", "a//b")] + ["/abs", "a//b", "a/", "/"])
def test_every_escape_is_refused_as_a_namespace(store: ArtifactStore, tmp_path: Path, bad: str):
    with pytest.raises(BadInput):
        store.put_bytes(bad, "name", b"x")
    with pytest.raises(BadInput):
        store.list(bad)
    assert files_under(tmp_path) == []


def test_messages_say_what_is_wrong():
    with pytest.raises(BadInput, match="absolute"):
        safe_namespace("/etc")
    with pytest.raises(BadInput, match="'..'"):
        safe_namespace("a/../../b")
    with pytest.raises(BadInput, match="backslash"):
        safe_name("C:\\x")
    with pytest.raises(BadInput, match="control character"):
        safe_name("\x00")
    with pytest.raises(BadInput, match="decodes"):
        safe_name("%2e%2e")
    with pytest.raises(BadInput, match="256 bytes"):
        safe_name("x" * 256)
    with pytest.raises(BadInput, match="empty"):
        safe_name("")
    assert safe_namespace("runs/42/scan") == "runs/42/scan"


@pytest.mark.parametrize("url", [
    "file:///etc/passwd",
    "/etc/passwd",
    "etc/passwd",
    "memory:///root/ns/x",
    "s3://bucket/ns/x",
])
def test_urls_outside_the_root_are_refused(store: ArtifactStore, url: str):
    for call in (store.get_bytes, store.open, store.exists, store.delete):
        with pytest.raises(BadInput):
            call(url)  # type: ignore[operator]
    with pytest.raises(BadInput):
        store.get_bytes({"artifact": url, "size": 1, "sha256": "0" * 64})


def test_tricky_urls_near_the_root_are_refused(store: ArtifactStore, tmp_path: Path):
    (tmp_path / "secret.txt").write_text("no")
    root = store.root
    for url in [f"{root}/ns/../../secret.txt", f"{root}/../secret.txt", f"{root}/%2e%2e/%2e%2e/secret.txt",
                f"{root}evil/ns/x", f"{root}/onlyname", f"{root}", f"{root}/", f"{root}/ns//x", f"{root}/ns/a\\b"]:
        with pytest.raises(BadInput):
            store.get_bytes(url)
    for ref in [{"artifact": 42}, {"no": "artifact"}, ["a"]]:
        with pytest.raises(BadInput):
            store.get_bytes(ref)  # type: ignore[arg-type]


def test_symlinks_cannot_lead_out(store: ArtifactStore, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0")
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts/ns").symlink_to(outside)
    with pytest.raises(BadInput, match="symbolic link"):
        store.get_bytes(f"{store.root}/ns/passwd")
    with pytest.raises(BadInput, match="symbolic link"):
        store.put_bytes("ns", "planted", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"]


def test_open_is_read_only(store: ArtifactStore):
    ref = store.put_bytes("ns", "a", b"1")
    for mode in ("wb", "ab", "r+b", "w"):
        with pytest.raises(BadInput, match="read-only"):
            store.open(ref, mode)


def test_sha_mismatch_is_detected(store: ArtifactStore, tmp_path: Path):
    ref = store.put_bytes("ns", "model.bin", b"weights v1")
    (tmp_path / "artifacts/ns/model.bin").write_bytes(b"weights v2")  # same size, other bytes
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        store.get_bytes(ref)
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        store.verify(ref)
    assert store.get_bytes(ref["artifact"]) == b"weights v2"  # a bare URL promises nothing
    (tmp_path / "artifacts/ns/model.bin").write_bytes(b"short")
    with pytest.raises(ArtifactCorrupt, match="5 bytes"):
        store.get_bytes(ref)
