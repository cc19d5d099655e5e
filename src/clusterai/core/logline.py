"""Signed log lines: one canonical JSON record per line, HMAC-SHA256 signed and chained.

Each line is the record plus `prev` (the previous line's `sig`; "" on the first line) and `sig`, an
HMAC-SHA256 over the canonical JSON of everything but `sig`. Editing any byte breaks that line's
signature or canonical form; deleting, reordering or inserting lines breaks the chain. What a chain
cannot show by itself is whole lines cut off the end: keep `VerifyReport.last_sig` somewhere else
(a job result, a ticket) to anchor it.

Tasks write logs by *name* only: NAME.log in the log folder (`logline.dir`, set on every worker by
the clusterai worker plugin), never a path a submitter chose. Folders made here are 0700 and logs
0600: a line says who asked for what.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterai.core.artifacts import private_dirs
from clusterai.errors import BadInput, ConfigError

GENESIS = ""  # the `prev` of a log's first line
KEY_BYTES = 32
MIN_KEY_BYTES = 16
RESERVED = ("prev", "sig")
_SIG = re.compile(r"[0-9a-f]{64}")
_TAIL_CHUNK = 4096
DEFAULT_DIR = ".clusterai/loglines"
SUFFIX = ".log"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_PATTERN = f"^{_NAME.pattern}$"  # for a JSON schema; here fullmatch (a '$' would let a newline through)
NAME_RULE = ("a log name is 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit "
             "(one file in logline.dir, NAME.log; no '/', '..', '~' or control characters)")

try:  # serialises appenders on POSIX; elsewhere one appender at a time is the caller's business
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class LineCheck:
    """One line of a log as verify() found it: its record (without prev and sig) when it verified."""

    number: int  # from 1
    record: dict[str, Any] | None  # None when the line is bad
    problem: str | None  # None when the line verified
    sig: str | None


@dataclass
class VerifyReport:
    lines: int = 0  # lines read, good or bad
    ok: int = 0  # lines that verified
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line number from 1, reason)
    last_sig: str | None = None  # the last line's sig: anchor it elsewhere to detect cut-off lines

    @property
    def valid(self) -> bool:
        return not self.problems


def canonical(obj: Any) -> str:
    """Sorted keys, no spaces, ASCII only (so no Unicode form or newline can vary), no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _mac(body: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical(body).encode("ascii"), hashlib.sha256).hexdigest()


def sign(record: dict[str, Any], key: bytes, prev: str = GENESIS) -> str:
    """The signed line for record (no trailing newline), chained to the line whose sig is prev."""
    if not isinstance(record, dict):
        raise BadInput(f"a log record is a JSON object, got {type(record).__name__}")
    if not all(isinstance(k, str) for k in record):
        raise BadInput("a log record's keys must be strings")
    taken = [k for k in RESERVED if k in record]
    if taken:
        raise BadInput(f"a log record may not have the field(s) {', '.join(taken)}: the signature adds them")
    _check_key(key)
    body = {**record, "prev": prev}
    try:
        body["sig"] = _mac(body, key)
        return canonical(body)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"a log record must be plain JSON (no NaN, no objects of other types): {exc}") from None


# -- where tasks write -----------------------------------------------------------------------------

_log_dir = DEFAULT_DIR


def set_log_dir(folder: str | os.PathLike[str]) -> None:
    """The folder named logs live in, in this process (the worker plugin sets logline.dir)."""
    global _log_dir
    _log_dir = os.fspath(folder)


def log_dir() -> str:
    return _log_dir


def check_name(name: Any) -> str:
    """A log's name, checked (a trailing .log is dropped: `video` and `video.log` are one log);
    BadInput saying what is allowed."""
    if not isinstance(name, str):
        raise BadInput(f"{NAME_RULE}; got {type(name).__name__}")
    base = name[: -len(SUFFIX)] if name.endswith(SUFFIX) and len(name) > len(SUFFIX) else name
    if not _NAME.fullmatch(base) or ".." in base:
        raise BadInput(f"{NAME_RULE}; got {name!r}")
    return base


def log_path(name: str, folder: str | os.PathLike[str] | None = None) -> Path:
    """FOLDER/NAME.log for a checked name (folder: the one in force)."""
    return Path(folder if folder is not None else _log_dir) / f"{check_name(name)}{SUFFIX}"


def append(path: str | os.PathLike[str], record: dict[str, Any], key: bytes) -> str:
    """Append one signed record, chained to the file's last line; returns the line written. A new
    log (and any folder made for it) is readable by its owner only."""
    private_dirs(os.path.dirname(os.fspath(path)) or ".")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            # without the lock two appenders could both chain to the same last line
            fcntl.flock(fd, fcntl.LOCK_EX)
        line = sign(record, key, prev=_last_sig(fd, os.fspath(path)))
        data = (line + "\n").encode("ascii")
        # One write with O_APPEND: the line lands whole at the end, never interleaved with another.
        written = os.write(fd, data)
        while written < len(data):  # a short write to a regular file means a full disk; finish or fail
            written += os.write(fd, data[written:])
        os.fsync(fd)
        return line
    finally:
        os.close(fd)  # also releases the lock


def _last_sig(fd: int, shown: str) -> str:
    end = os.lseek(fd, 0, os.SEEK_END)
    if end == 0:
        return GENESIS
    tail = b""
    position = end
    # read backwards until the newline before the last line (or the file's start)
    while position > 0:
        step = min(_TAIL_CHUNK, position)
        position -= step
        os.lseek(fd, position, os.SEEK_SET)
        tail = os.read(fd, step) + tail
        if tail.count(b"\n") >= 2:
            break
    if not tail.endswith(b"\n"):
        raise BadInput(f"{shown}: the last line is incomplete (no newline at the end); run "
                       "`clusterai logline verify` before appending")
    last = tail[:-1].rsplit(b"\n", 1)[-1]
    try:
        sig = json.loads(last).get("sig")
    except (ValueError, AttributeError):
        sig = None
    if not isinstance(sig, str) or not _SIG.fullmatch(sig):
        raise BadInput(f"{shown}: the last line has no valid sig to chain to; run `clusterai logline verify`")
    return sig


def verify(path: str | os.PathLike[str], key: bytes) -> VerifyReport:
    """Check every line: its JSON, canonical form, signature and link to the line before."""
    report = VerifyReport()
    for line in check_lines(path, key):
        report.lines = line.number
        if line.problem is None:
            report.ok += 1
        else:
            report.problems.append((line.number, line.problem))
        report.last_sig = line.sig
    return report


def check_lines(path: str | os.PathLike[str], key: bytes) -> Iterator[LineCheck]:
    """Every line checked, in order, with the record of each good one (what it stands for)."""
    _check_key(key)
    expected: str | None = GENESIS  # the prev the next line must carry; None when unknowable
    try:
        f = open(path, "rb")  # noqa: SIM115 - a with block would make the errors below harder to tell apart
    except FileNotFoundError:
        raise BadInput(f"{os.fspath(path)}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{os.fspath(path)}: a directory, not a log file") from None
    with f:
        for number, raw in enumerate(f, start=1):
            reason, sig, prev = _check_line(raw, key)
            if reason is None and expected is not None and prev != expected:
                reason = ("broken chain: the first line must have an empty prev (lines removed before it?)"
                          if number == 1 else f"broken chain: prev does not match line {number - 1}'s sig "
                          "(a line removed, inserted or moved?)")
            if reason is None and not raw.endswith(b"\n"):
                reason = "no newline at the end (truncated?)"
            record = None
            if reason is None:
                record = {k: v for k, v in json.loads(raw).items() if k not in RESERVED}
            yield LineCheck(number, record, reason, sig)
            expected = sig  # the next line chains to what this one claims, verified or not


def _check_line(raw: bytes, key: bytes) -> tuple[str | None, str | None, str | None]:
    """(the problem or None, the line's sig if it has one, its prev if it has one)."""
    truncated = not raw.endswith(b"\n")
    text = raw[:-1] if not truncated else raw
    if not text.strip():
        return "empty line", None, None
    try:
        obj = json.loads(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"{'truncated' if truncated else 'bad'} JSON ({exc})", None, None
    if not isinstance(obj, dict):
        return "not a JSON object", None, None
    sig, prev = obj.get("sig"), obj.get("prev")
    if sig is None:
        return "missing sig", None, None
    if not isinstance(sig, str) or not _SIG.fullmatch(sig):
        return "malformed sig (expected 64 lowercase hex digits)", None, None
    if not isinstance(prev, str):
        return "missing prev", sig, None
    body = {k: v for k, v in obj.items() if k != "sig"}
    try:
        mac = _mac(body, key)
        exact = canonical(obj)
    except ValueError:  # NaN or Infinity: never written by sign()
        return "not canonical JSON", sig, prev
    if not hmac.compare_digest(mac, sig):
        return "bad signature (edited, or signed with another key)", sig, prev
    if exact.encode("ascii") != text:
        # same values, other bytes (spacing, escapes): still an edit
        return "not in canonical form (edited)", sig, prev
    return None, sig, prev


# -- keys ----------------------------------------------------------------------------------------

def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"a logline key is at least {MIN_KEY_BYTES} bytes")


def load_key(path: str | os.PathLike[str]) -> bytes:
    """Read an existing key file; never makes one (a new key would make every old line bad)."""
    file = Path(path)
    try:
        key = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{file}: no logline key file (the first `clusterai logline sign` makes one; "
                          "or give --key-file)") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the logline key: {exc}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{file}: a logline key is at least {MIN_KEY_BYTES} bytes, this one {len(key)}")
    return key


def load_or_create_key(path: str | os.PathLike[str]) -> bytes:
    """The key in path, made first (32 random bytes, mode 0600) when missing. There is no default key."""
    file = Path(path)
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(KEY_BYTES))
                out.flush()
                os.fsync(out.fileno())
            try:
                # a link never replaces: when two processes race, both end up with the winner's key
                os.link(tmp, file)
            except FileExistsError:
                pass
            except OSError:  # no hard links here (some network and Android filesystems)
                if not file.exists():
                    os.replace(tmp, file)
        finally:
            tmp.unlink(missing_ok=True)
    return load_key(file)
