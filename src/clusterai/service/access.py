"""API tokens, roles and what each role may do.

A token reads `cai_<id>_<secret>`. The store keeps the id and a SHA-256 of the secret, never the
secret: the secret is 256 random bits, so a fast hash is enough (no password stretching needed),
and the check compares digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass
from enum import Enum

from clusterai.core.model import TokenRecord
from clusterai.errors import BadInput
from clusterai.store.protocol import JobStore

PREFIX = "cai"


class Permission(str, Enum):
    READ = "read"  # every job, worker, event, status and metric
    READ_OWN = "read_own"  # the jobs (and their events) this token's name submitted
    SUBMIT = "submit"
    CANCEL = "cancel"
    OPERATE = "operate"  # retry, dead-letter requeue, drain/undrain/remove/restart workers
    ADMIN = "admin"  # tokens and the audit log
    JOIN = "join"  # trade a join token for a worker's identity (certificate, key, token): `clusterai join`


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "operator": frozenset({Permission.READ, Permission.READ_OWN, Permission.SUBMIT, Permission.CANCEL,
                           Permission.OPERATE}),
    "submitter": frozenset({Permission.READ_OWN, Permission.SUBMIT}),
    "viewer": frozenset({Permission.READ, Permission.READ_OWN}),
    # enrollment tokens: they let a machine join as a worker (worker/enroll.py), and do nothing in the API
    "worker": frozenset({Permission.JOIN}),
}
ROLES = tuple(ROLE_PERMISSIONS)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, name and role."""

    token_id: str
    name: str
    role: str

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())

    @property
    def reads_everything(self) -> bool:
        return self.can(Permission.READ)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(name: str, role: str, *, created_by: str | None, expires_in: float | None = None,
              now: float | None = None, uses: int | None = None) -> tuple[str, TokenRecord]:
    """A fresh token: the text to hand to its user (shown once) and the record to store. With
    `uses`, a join token: good for that many `clusterai join`s, and for nothing else."""
    name = name.strip()
    if not name or len(name) > 100:
        raise BadInput("token name must be 1 to 100 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):  # it owns jobs, and shows in logs and the audit log
        raise BadInput("token name must not contain control characters")
    if role not in ROLE_PERMISSIONS:
        raise BadInput(f"unknown role {role!r}; allowed: {', '.join(ROLES)}")
    if expires_in is not None and expires_in <= 0:
        raise BadInput(f"expires_in must be > 0 seconds, got {expires_in}")
    if uses is not None and (role != "worker" or not 1 <= uses <= 10_000):
        raise BadInput("uses is for join tokens: role worker, 1 to 10000 uses")
    now = time.time() if now is None else now
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = TokenRecord(id=token_id, name=name, role=role, secret_hash=_digest(secret), created_at=now,
                         created_by=created_by, expires_at=now + expires_in if expires_in else None,
                         uses_left=uses)
    return f"{PREFIX}_{token_id}_{secret}", record


def split_token(text: str) -> tuple[str, str] | None:
    prefix, _, rest = text.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != PREFIX or not token_id or not secret:
        return None
    return token_id, secret


class TokenVerifier:
    """Checks presented tokens against the store. Records are cached for `ttl` seconds so the hot
    path does not read the store on every request; a revocation through this process's API takes
    effect at once, one made elsewhere (the CLI on the store) within `ttl`."""

    def __init__(self, store: JobStore, ttl: float = 2.0):
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[TokenRecord | None, float]] = {}
        self._lock = threading.Lock()
        self._decoy = _digest(secrets.token_urlsafe(32))

    def verify(self, text: str, now: float | None = None) -> Principal | None:
        parts = split_token(text.strip())
        if parts is None:
            return None
        return self._check(parts, self._record(parts[0]), now)

    def verify_cached(self, text: str, now: float | None = None) -> Principal | None | bool:
        """Like verify, without touching the store: False when the token's record is not cached
        (call verify then, off the event loop)."""
        parts = split_token(text.strip())
        if parts is None:
            return None
        with self._lock:
            cached = self._cache.get(parts[0])
        if cached is None or time.monotonic() - cached[1] >= self.ttl:
            return False
        return self._check(parts, cached[0], now)

    def _check(self, parts: tuple[str, str], record: TokenRecord | None, now: float | None) -> Principal | None:
        token_id, secret = parts
        presented = _digest(secret)
        # compare even for unknown ids, so timing says nothing about which ids exist
        matches = hmac.compare_digest(presented, record.secret_hash if record else self._decoy)
        now = time.time() if now is None else now
        if record is None or not matches or not record.usable(now):
            return None
        return Principal(record.id, record.name, record.role)

    def refusal(self, text: str, now: float | None = None) -> str:
        """Why a token that verify() refused is refused. The particular reason (revoked, expired,
        used up) only to whoever holds its secret; to anyone else, that it is unknown."""
        parts = split_token(text.strip())
        record = self._record(parts[0]) if parts is not None else None
        if parts is None or record is None or not hmac.compare_digest(_digest(parts[1]), record.secret_hash):
            return "the token is unknown, revoked or expired"
        now = time.time() if now is None else now
        if record.revoked_at is not None:
            return f"token {record.id} ({record.name}) was revoked"
        if record.expires_at is not None and now >= record.expires_at:
            return f"token {record.id} ({record.name}) expired"
        if record.uses_left is not None and record.uses_left <= 0:
            return f"join token {record.id} ({record.name}) is used up"
        return "the token is unknown, revoked or expired"

    def forget(self, token_id: str) -> None:
        with self._lock:
            self._cache.pop(token_id, None)

    def _record(self, token_id: str) -> TokenRecord | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(token_id)
        if cached is not None and now - cached[1] < self.ttl:
            return cached[0]
        record = self.store.get_token(token_id)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()  # bound the memory a flood of made-up ids can take
            self._cache[token_id] = (record, now)
        return record


class RateLimiter:
    """A token bucket per API token: `rate` requests per second, `burst` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str, now: float | None = None) -> float:
        """0 if the request may go ahead, else the seconds to wait before the next one may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            level, last = self._buckets.get(key, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                return 0.0
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
