"""The artifact store on an S3-compatible server (moto's, on loopback, started here): artifacts, a
trial's checkpoints and the registry's models under s3://BUCKET/clusterai, configured the way an
operator does it, with $CLUSTERAI_ARTIFACTS and $CLUSTERAI_ARTIFACTS_OPTIONS.

Nothing leaves the machine: the credentials exist nowhere else, this machine's AWS configuration is
hidden, and a client that was not given the endpoint would talk to a closed loopback port."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from clusterai.core.artifacts import (  # noqa: E402 - after the skips
    ENV_OPTIONS,
    ENV_ROOT,
    TMP_PREFIX,
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactStore,
)
from clusterai.errors import ConfigError  # noqa: E402

pytestmark = [pytest.mark.timeout(60)]

KEY = SECRET = "testing"
PREFIX = "clusterai"


@dataclass
class S3:
    endpoint: str
    bucket: str
    fs: Any  # an s3fs filesystem of its own, without caches: what another writer sees
    options: dict[str, Any]  # what $CLUSTERAI_ARTIFACTS_OPTIONS holds

    @property
    def root(self) -> str:
        return f"s3://{self.bucket}/{PREFIX}"

    def keys(self) -> list[str]:
        """Every object under the root, as a path below it."""
        return sorted(k[len(f"{self.bucket}/{PREFIX}/"):] for k in self.fs.find(f"{self.bucket}/{PREFIX}"))


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for this module."""
    werkzeug = logging.getLogger("werkzeug")  # one log line per request otherwise
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        werkzeug.setLevel(level)


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3]:
    """A fresh bucket, and the environment that points the artifact store (and the workers, which
    inherit it) at s3://BUCKET/clusterai on it."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with socket.socket() as closed:  # bound, never listening: a connection there is refused at once
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed.getsockname()[1]}")
        fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key=KEY, secret=SECRET, skip_instance_cache=True,
                               use_listings_cache=False)
        bucket = f"clusterai-test-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        options = {"endpoint_url": s3_endpoint, "key": KEY, "secret": SECRET}
        found = S3(s3_endpoint, bucket, fs, options)
        monkeypatch.setenv(ENV_ROOT, found.root)
        monkeypatch.setenv(ENV_OPTIONS, json.dumps(options))
        yield found


# -- the store ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["endpoint_url", "client_kwargs"])
def test_put_get_verify_list_and_delete_on_s3(s3: S3, spelling: str, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path):
    if spelling == "client_kwargs":  # botocore's own spelling, which s3fs passes on
        monkeypatch.setenv(ENV_OPTIONS, json.dumps({"client_kwargs": {"endpoint_url": s3.endpoint},
                                                    "key": KEY, "secret": SECRET}))
    store = ArtifactStore()
    assert store.root == s3.root
    data = bytes(range(256)) * 4096  # 1 MiB: more than one chunk of a stream
    ref = store.put_bytes("runs/7", "blob.bin", data)
    assert ref == {"artifact": f"{s3.root}/runs/7/blob.bin", "size": len(data),
                   "sha256": hashlib.sha256(data).hexdigest()}
    assert s3.keys() == ["runs/7/blob.bin"], "moved into place, no temporary object left"
    assert s3.fs.cat(f"{s3.bucket}/{PREFIX}/runs/7/blob.bin") == data

    assert store.get_bytes(ref) == data
    store.verify(ref)
    assert store.exists(ref)
    assert store.locate(ref) == ("runs/7", "blob.bin")

    source = tmp_path / "big.bin"
    source.write_bytes(data * 3)
    streamed = store.put_file("runs/7", "big.bin", source)
    assert streamed["sha256"] == hashlib.sha256(data * 3).hexdigest()
    store.verify(streamed)
    assert [(r["name"], r["size"]) for r in store.list("runs/7")] == [("big.bin", 3 * len(data)),
                                                                       ("blob.bin", len(data))]

    assert store.delete(ref) is True
    assert not store.exists(ref)
    with pytest.raises(ArtifactNotFound):
        store.get_bytes(ref)
    assert s3.keys() == ["runs/7/big.bin"]


def test_an_object_changed_in_the_bucket_fails_verify(s3: S3):
    store = ArtifactStore()
    ref = store.put_bytes("runs/1", "model.bin", b"a" * 5000)
    key = f"{s3.bucket}/{PREFIX}/runs/1/model.bin"

    s3.fs.pipe(key, b"b" * 5000)  # same size, other bytes
    with pytest.raises(ArtifactCorrupt, match="sha256 .* its reference says .*: changed since written"):
        store.verify(ref)
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        store.get_bytes(ref)

    s3.fs.pipe(key, b"a" * 5001)  # one byte more
    with pytest.raises(ArtifactCorrupt, match="5001 bytes, its reference says 5000"):
        store.verify(ref)


def test_an_object_changed_after_its_namespace_was_listed_fails_verify(s3: S3):
    store = ArtifactStore()
    ref = store.put_bytes("runs/2", "model.bin", b"a" * 5000)
    assert [r["name"] for r in store.list("runs/2")] == ["model.bin"]
    s3.fs.pipe(f"{s3.bucket}/{PREFIX}/runs/2/model.bin", b"b" * 6000)
    with pytest.raises(ArtifactCorrupt, match="6000 bytes, its reference says 5000"):
        store.verify(ref)


def test_deleting_what_is_not_there_is_false_on_s3(s3: S3):
    store = ArtifactStore()
    ref = store.put_bytes("runs/3", "once.bin", b"x")
    assert store.delete(ref) is True
    assert store.delete(ref) is False
    assert store.delete(f"{s3.root}/runs/3/never.bin") is False


@pytest.mark.parametrize(("text", "says"), [
    ('{"endpoint_url": "http://127.0.0.1:9"', f"{ENV_OPTIONS}: not JSON"),
    ("endpoint_url=http://127.0.0.1:9", f"{ENV_OPTIONS}: not JSON"),
    ('["endpoint_url", "http://127.0.0.1:9"]', f"{ENV_OPTIONS}: a JSON object of fsspec storage options, e.g."),
    ('"http://127.0.0.1:9"', f"{ENV_OPTIONS}: a JSON object of fsspec storage options"),
])
def test_bad_options_are_a_config_error(s3: S3, monkeypatch: pytest.MonkeyPatch, text: str, says: str):
    monkeypatch.setenv(ENV_OPTIONS, text)
    with pytest.raises(ConfigError, match=says.replace(".", r"\.")):
        ArtifactStore()
    assert s3.keys() == []


def test_a_misspelt_option_is_a_config_error(s3: S3, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(ENV_OPTIONS, json.dumps({"endpont_url": s3.endpoint, "key": KEY, "secret": SECRET}))
    with pytest.raises(ConfigError, match="endpont_url"):
        ArtifactStore().put_bytes("runs/4", "x.bin", b"x")


# -- a sweep's checkpoints and model, and the registry -------------------------------------------

@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_a_sweeps_checkpoints_and_registered_model_live_in_the_bucket(s3: S3, config_factory, start_cluster):
    pytest.importorskip("sklearn")
    from clusterai.workloads.training import load_model, validation_digits

    c = start_cluster(config_factory())  # after the fixture set the environment: the workers inherit it
    status = c.sweep("train.sgd_digits", {"alpha": {"loguniform": [1e-5, 1e-2]}, "epochs": 3}, trials=2,
                     sampler="random", metric="accuracy", register={"name": "digits-s3"}, wait=True, timeout=120)
    assert status["state"] == "succeeded", status["note"]
    assert [t["state"] for t in status["trials"]] == ["succeeded"] * 2
    job_ids = [t["job_id"] for t in status["trials"]]

    keys = s3.keys()
    assert not [k for k in keys if k.rsplit("/", 1)[-1].startswith(TMP_PREFIX)], keys
    for job_id in job_ids:
        mine = sorted(k.rsplit("/", 1)[-1] for k in keys if k.startswith(f"jobs/{job_id}/"))
        assert len(mine) == 3 and mine[0] == "manifest.json" and mine[1] == "model.bin", keys
        assert mine[2].startswith("state-") and mine[2].endswith(".bin"), "only the last checkpoint is kept"
        manifest = json.loads(s3.fs.cat(f"{s3.bucket}/{PREFIX}/jobs/{job_id}/manifest.json"))
        assert manifest["artifact"] == f"{s3.root}/jobs/{job_id}/{mine[2]}"
        assert manifest["step"] == 3
        ArtifactStore().verify(manifest)
        model = c.get(job_id).result["model"]
        assert model["artifact"] == f"{s3.root}/jobs/{job_id}/model.bin"

    version = c.registry.show("digits-s3")
    best = status["best"]
    assert version["job_id"] == best["job_id"]
    assert version["artifact"]["artifact"] == f"{s3.root}/jobs/{best['job_id']}/model.bin"
    assert version["artifact"]["artifact"].startswith("s3://")
    shown, data = c.registry.download("digits-s3")
    assert shown["version"] == version["version"]
    assert hashlib.sha256(data).hexdigest() == version["artifact"]["sha256"]
    assert data == s3.fs.cat(f"{s3.bucket}/{PREFIX}/jobs/{best['job_id']}/model.bin")
    x, y = validation_digits()
    accuracy = float((load_model(data).predict(x) == y).mean())
    assert accuracy == pytest.approx(version["metrics"]["accuracy"], abs=2e-3)
