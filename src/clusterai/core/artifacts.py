"""Artifacts: large job outputs stored beside the job store, addressed by fsspec URL.

A job result holds a reference (`{"artifact": URL, "size": n, "sha256": hex}`), never the blob itself,
so results stay small in the store and on the wire. Every name is sanitised and every URL handed back
to the store must lie inside its root: a job result cannot point the head at /etc/passwd.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import unquote

import fsspec.core
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from clusterai.errors import BadInput, ClusterAIError, ConfigError

ENV_ROOT = "CLUSTERAI_ARTIFACTS"
# fsspec storage options as a JSON object, e.g. {"endpoint_url": "http://minio:9000"} for a
# self-hosted S3; credentials are better left to the backend's own sources (AWS_* variables, files)
ENV_OPTIONS = "CLUSTERAI_ARTIFACTS_OPTIONS"
DEFAULT_ROOT = ".clusterai/artifacts"
CHUNK = 1 << 20  # bytes per read when streaming: bounded memory whatever the artifact's size
MAX_PART_BYTES = 255  # the usual file-name limit (ext4, APFS, NTFS)
# Writes go to a hidden name first and are moved into place, so a reader never sees half an artifact.
# User names may not start with it, so list() can skip leftovers without hiding anything real.
TMP_PREFIX = ".clusterai-tmp-"
# Characters that mean something to a path or a URL somewhere (Windows drives, queries, fragments).
_FORBIDDEN = {"\\": "a backslash", ":": "a colon", "?": "a question mark", "#": "a hash sign"}
_MISSING_LIBRARY = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs", "az": "adlfs"}

Ref = dict[str, Any]


class ArtifactNotFound(BadInput, FileNotFoundError):
    """The reference names an artifact that is not (or no longer) in the store."""


class ArtifactCorrupt(ClusterAIError):
    """The artifact's bytes differ from its reference (size or sha256): changed or damaged since."""

    code = "artifact_corrupt"


def private_dirs(folder: str | os.PathLike[str]) -> None:
    """Make a local `folder` and any missing parents, each 0700 whatever the umask (artifacts and
    logs say what was computed for whom); folders that exist are left as they are (one may be a
    folder the operator shares)."""
    path = Path(os.path.abspath(folder))
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for made in reversed(missing):
        try:
            made.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another writer
            continue
        os.chmod(made, 0o700)  # mkdir's mode is filtered by the umask; this is not


def default_root() -> str:
    """$CLUSTERAI_ARTIFACTS, else .clusterai/artifacts under the current directory, as a URL."""
    return normalise_root(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def default_options() -> dict[str, Any]:
    """$CLUSTERAI_ARTIFACTS_OPTIONS (a JSON object), else none."""
    text = os.environ.get(ENV_OPTIONS)
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{ENV_OPTIONS}: not JSON ({exc})") from None
    if not isinstance(options, dict):
        raise ConfigError(f"{ENV_OPTIONS}: a JSON object of fsspec storage options, e.g. "
                          '{"endpoint_url": "http://127.0.0.1:9000"}')
    return options


def normalise_root(root: str) -> str:
    """A plain or relative path (or a relative file:// URL) becomes an absolute file:// URL."""
    if not root or not root.strip():
        raise ConfigError("artifact root: empty; give a path or a URL such as s3://bucket/prefix")
    protocol, sep, rest = root.partition("://")
    if not sep:
        protocol, rest = "file", root
    if protocol in ("file", "local"):
        # resolve(): symlinks and '..' in the root itself are settled once, so the inside-the-root
        # check below compares plain strings.
        return "file://" + Path(rest).expanduser().resolve().as_posix()
    return f"{protocol}://{rest.rstrip('/')}"


def safe_name(part: str, *, what: str = "name") -> str:
    """One path component, checked: returned unchanged, or BadInput saying what is wrong with it."""
    if not isinstance(part, str):
        raise BadInput(f"artifact {what} must be a string, got {type(part).__name__}")
    _check_part(part, what)
    # fsspec backends and HTTP layers may decode %-escapes: the decoded form must be just as safe
    decoded = part
    for _ in range(3):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
        try:
            _check_part(decoded, what)
        except BadInput as exc:
            raise BadInput(f"artifact {what} {part!r} decodes (%-escapes) to {decoded!r}: {exc}") from None
    return part


def _check_part(part: str, what: str) -> None:
    if part == "":
        raise BadInput(f"artifact {what}: empty (or a doubled or trailing '/')")
    if "/" in part:
        raise BadInput(f"artifact {what} {part!r}: one component only, no '/' (nest with the namespace)")
    if part in (".", ".."):
        raise BadInput(f"artifact {what} {part!r}: '.' and '..' are not allowed (no path escapes)")
    for char, called in _FORBIDDEN.items():
        if char in part:
            raise BadInput(f"artifact {what} {part!r}: contains {called}, which is not allowed")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in part):
        raise BadInput(f"artifact {what} {part!r}: contains NUL or another control character")
    try:
        size = len(part.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadInput(f"artifact {what} {part!r}: not valid Unicode text") from None
    if size > MAX_PART_BYTES:
        raise BadInput(f"artifact {what} is {size} bytes in UTF-8; at most {MAX_PART_BYTES} allowed")
    if part.startswith(TMP_PREFIX):
        raise BadInput(f"artifact {what} {part!r}: names starting with {TMP_PREFIX!r} are reserved")


def safe_namespace(namespace: str) -> str:
    """A namespace: one or more safe components joined by '/', such as runs/42/scan."""
    if not isinstance(namespace, str):
        raise BadInput(f"artifact namespace must be a string, got {type(namespace).__name__}")
    if namespace.startswith("/"):
        raise BadInput(f"artifact namespace {namespace!r}: absolute paths are not allowed")
    for part in namespace.split("/"):
        safe_name(part, what="namespace component")
    return namespace


class ArtifactStore:
    """Artifacts under one root URL: file:// (default), memory://, s3:// (with s3fs), any fsspec filesystem."""

    def __init__(self, root: str | None = None, *, options: dict[str, Any] | None = None):
        self.root = normalise_root(root) if root is not None else default_root()
        options = default_options() if options is None else options
        try:
            fs, path = fsspec.core.url_to_fs(self.root, **options)
        except ImportError:
            protocol = self.root.partition("://")[0]
            library = _MISSING_LIBRARY.get(protocol, f"the fsspec backend for {protocol}://")
            raise ConfigError(f"artifact root {self.root}: needs {library}: pip install {library}") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"artifact root {self.root}: {exc}") from None
        self.fs: AbstractFileSystem = fs
        self._root_path = str(path).rstrip("/")
        # one spelling of the root (memory://x and memory:///x are the same place), so URLs compare as strings
        self.root = str(fs.unstrip_protocol(self._root_path)).rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self._protocols = set(protocols)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    # -- addressing ------------------------------------------------------------------------------

    def url(self, namespace: str, name: str) -> str:
        """The URL an artifact has (or would have) in this store."""
        return f"{self.root}/{safe_namespace(namespace)}/{safe_name(name)}"

    def locate(self, ref_or_url: Ref | str) -> tuple[str, str]:
        """(namespace, name) of a reference or URL inside this store, checked like a read."""
        path = self._resolve(ref_or_url)
        namespace, _, name = path[len(self._root_path) + 1:].rpartition("/")
        return namespace, name

    def _path(self, namespace: str, name: str) -> str:
        return f"{self._root_path}/{safe_namespace(namespace)}/{safe_name(name)}"

    def _resolve(self, ref_or_url: Ref | str) -> str:
        """The filesystem path of a reference or URL, refused unless it lies inside this store's root."""
        url = _url_of(ref_or_url)
        protocol, sep, _ = url.partition("://")
        if not sep:
            raise BadInput(f"{url!r} is not an artifact URL (expected {self.root}/NAMESPACE/NAME)")
        if protocol not in self._protocols:
            raise BadInput(f"{url!r} is outside this artifact store ({self.root})")
        path = str(self.fs._strip_protocol(url)).rstrip("/")
        if not path.startswith(self._root_path + "/"):
            raise BadInput(f"{url!r} is outside this artifact store ({self.root})")
        parts = path[len(self._root_path) + 1:].split("/")
        if len(parts) < 2:
            raise BadInput(f"{url!r} names no artifact: expected {self.root}/NAMESPACE/NAME")
        # every component checked again: no '..', encoded escapes or empty parts get back out of the root
        for part in parts[:-1]:
            safe_name(part, what="namespace component")
        safe_name(parts[-1])
        self._no_symlink_escape(path, url)
        return path

    def _no_symlink_escape(self, path: str, shown: str) -> None:
        # Names are clean by now, but on a shared disk a symbolic link inside the root could still lead out.
        if self._local and not os.path.realpath(path).startswith(self._root_path + "/"):
            raise BadInput(f"{shown!r} leads outside this artifact store ({self.root}) through a symbolic link")

    # -- writing ---------------------------------------------------------------------------------

    def put_bytes(self, namespace: str, name: str, data: bytes | bytearray | memoryview) -> Ref:
        """Store data under namespace/name (replacing any artifact there); returns its reference."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadInput(f"artifact data must be bytes, got {type(data).__name__}")
        view = memoryview(data).cast("B")
        return self._write(namespace, name, (view[i:i + CHUNK] for i in range(0, len(view), CHUNK)))

    def put_file(self, namespace: str, name: str, path: str | os.PathLike[str]) -> Ref:
        """Copy a local file in, streamed: memory stays bounded whatever its size."""
        try:
            source = open(path, "rb")  # noqa: SIM115 - closed below, after the first check
        except FileNotFoundError:
            raise BadInput(f"{os.fspath(path)}: no such file") from None
        except IsADirectoryError:
            raise BadInput(f"{os.fspath(path)}: a directory, not a file") from None
        with source:
            return self.put_stream(namespace, name, source)

    def put_stream(self, namespace: str, name: str, stream: BinaryIO | IO[bytes]) -> Ref:
        """Store everything read from a binary file object, streamed."""
        return self._write(namespace, name, _chunks(stream))

    def _write(self, namespace: str, name: str, chunks: Iterable[bytes | memoryview]) -> Ref:
        final = self._path(namespace, name)
        directory = final.rsplit("/", 1)[0]
        # The temporary name sits in the same directory: a rename there is atomic on a local disk.
        tmp = f"{directory}/{TMP_PREFIX}{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        size = 0
        try:
            if self._local:
                self._no_symlink_escape(final, f"{namespace}/{name}")
                private_dirs(directory)
                # 0600 from the start, whatever the umask allows
                with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                    out.flush()
                    # on disk before it gets its name: a crash leaves the old artifact or the new, whole
                    os.fsync(out.fileno())
                os.replace(tmp, final)
            else:
                with self._backend(f"{namespace}/{name}"):
                    if not self._object_store:
                        self.fs.makedirs(directory, exist_ok=True)
                    with self.fs.open(tmp, "wb") as out:
                        for chunk in chunks:
                            out.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
                    # on an object store this move is a server-side copy; still no reader sees a partial object
                    self.fs.mv(tmp, final)
                    self._fresh(final)
        except BaseException:
            self._discard(tmp)
            raise
        return {"artifact": f"{self.root}{final[len(self._root_path):]}", "size": size,
                "sha256": digest.hexdigest()}

    @property
    def _object_store(self) -> bool:
        # object stores have no directories to make (and s3fs would try to create a bucket)
        return bool(self._protocols & set(_MISSING_LIBRARY))

    @contextmanager
    def _backend(self, shown: str) -> Iterator[None]:
        """An object store's client is made at first use: a misspelt option shows up only here, as a
        TypeError from deep inside its library; and an object replaced while it was being read (a
        checkpoint rewritten by another worker, a tampered file) is the store's to report."""
        try:
            yield
        except TypeError as exc:
            if self._local:
                raise
            raise ConfigError(f"artifact root {self.root}: {exc} (check {ENV_OPTIONS})") from None
        except OSError as exc:
            if type(exc).__name__ != "FileExpired":  # s3fs: the object's ETag changed under the reader
                raise
            raise ArtifactCorrupt(f"{shown} changed while it was being read") from None

    def _fresh(self, path: str) -> None:
        # fsspec keeps one filesystem per root and process, with its listings: another worker may have
        # replaced this object since (a checkpoint's manifest), so never read by a stale listing
        if not self._local:
            self.fs.invalidate_cache(path)

    def _discard(self, tmp: str) -> None:
        try:
            if self._local:
                os.unlink(tmp)
            else:
                self.fs.rm_file(tmp)
        except (OSError, TypeError):
            pass  # never written, already gone, or the backend cannot even start (its error is raised above)

    # -- reading ---------------------------------------------------------------------------------

    def open(self, ref_or_url: Ref | str, mode: str = "rb") -> Any:
        """A read-only file object; no sha256 check (use get_bytes or verify for that)."""
        if mode not in ("rb", "r"):
            raise BadInput(f"artifacts open read-only ('rb' or 'r'), not {mode!r}; write with put_bytes/put_file")
        path = self._resolve(ref_or_url)
        self._fresh(path)
        try:
            with self._backend(_url_of(ref_or_url)):
                return self.fs.open(path, mode)
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact at {_url_of(ref_or_url)}") from None

    def get_bytes(self, ref_or_url: Ref | str) -> bytes:
        """The artifact's bytes; given a reference, checked against its size and sha256."""
        with self.open(ref_or_url) as f, self._backend(_url_of(ref_or_url)):
            data: bytes = f.read()
        if isinstance(ref_or_url, dict):
            _check(ref_or_url, len(data), hashlib.sha256(data).hexdigest())
        return data

    def verify(self, ref: Ref) -> None:
        """Check an artifact against its reference, streamed; ArtifactCorrupt if it differs."""
        if not isinstance(ref, dict):
            raise BadInput("verify needs a reference (a dict with artifact, size and sha256)")
        digest = hashlib.sha256()
        size = 0
        with self.open(ref) as f, self._backend(_url_of(ref)):
            for chunk in _chunks(f):
                digest.update(chunk)
                size += len(chunk)
        _check(ref, size, digest.hexdigest())

    def exists(self, ref_or_url: Ref | str) -> bool:
        path = self._resolve(ref_or_url)
        self._fresh(path)
        with self._backend(_url_of(ref_or_url)):
            return bool(self.fs.isfile(path))

    def list(self, namespace: str) -> list[Ref]:
        """Artifacts directly in a namespace (not nested ones), by name: artifact URL, name and size.

        No sha256: that would mean reading every artifact; keep the references put_* returned."""
        directory = f"{self._root_path}/{safe_namespace(namespace)}"
        self._fresh(directory)
        try:
            with self._backend(directory):
                entries = self.fs.ls(directory, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        refs: list[Ref] = []
        for entry in entries:
            name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") != "file" or name.startswith(TMP_PREFIX):
                continue
            try:
                safe_name(name)
            except BadInput:
                continue  # put there by something else; it could not be read back through the store
            refs.append({"artifact": f"{self.root}/{namespace}/{name}", "name": name, "size": int(entry["size"])})
        return sorted(refs, key=lambda ref: ref["name"])

    def delete(self, ref_or_url: Ref | str) -> bool:
        """Remove an artifact; False when there was none."""
        if self._object_store and not self.exists(ref_or_url):
            return False  # an object store deletes a missing key without a word
        path = self._resolve(ref_or_url)
        try:
            with self._backend(_url_of(ref_or_url)):
                self.fs.rm_file(path)
        except FileNotFoundError:
            return False
        return True


def _url_of(ref_or_url: Ref | str) -> str:
    if isinstance(ref_or_url, dict):
        url = ref_or_url.get("artifact")
        if not isinstance(url, str):
            raise BadInput("an artifact reference is a dict with an 'artifact' URL string")
        return url
    if isinstance(ref_or_url, str):
        return ref_or_url
    raise BadInput(f"expected an artifact reference or URL, got {type(ref_or_url).__name__}")


def _check(ref: Ref, size: int, sha256: str) -> None:
    url = ref["artifact"]
    expected_size = ref.get("size")
    if expected_size is not None and expected_size != size:
        raise ArtifactCorrupt(f"{url}: {size} bytes, its reference says {expected_size}: changed since written")
    expected_sha = ref.get("sha256")
    if expected_sha is not None and expected_sha != sha256:
        raise ArtifactCorrupt(f"{url}: sha256 {sha256}, its reference says {expected_sha}: changed since written")


def _chunks(stream: Any) -> Iterator[bytes]:
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return
        yield chunk
