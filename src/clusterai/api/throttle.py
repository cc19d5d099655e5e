"""Failed authentications, throttled per client address and audited in aggregate.

The rate limit is per valid token, so without this a client could try tokens (or session cookies,
or the dashboard's sign-in) as fast as it can send them. After `limit` failures within `window`
seconds an address gets 429 for `window` seconds, whatever token it then shows: a valid token from
a throttled address waits too. That is the simple, safe choice (the address, not the token, is
what misbehaved; telling a good token from a bad one would mean checking it), at a cost: clients
behind one NAT or proxy share an address, and so share the throttle. IPv6 clients count per /64,
the block one machine usually holds.

The audit log gets a bounded number of records, so that a flood cannot fill the store: for each
address and window, one at its first failure and one when it is throttled (with the count and the
token ids tried); at most `audit_per_window` such records in all per window, and a single record
saying how many were left out beyond that. Never a secret: a token id is written only when the
presented text has the shape of one (`cai_<12 hex>_...`), and only that id.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from dataclasses import dataclass, field

from clusterai.core.model import AuditEntry
from clusterai.service.access import split_token

ACTOR = "(unauthenticated)"
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
_IDS_KEPT = 5


def client_key(host: str | None) -> str:
    """The address a throttle counts against: the IP, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(host or "")
    except ValueError:
        return (host or "unknown")[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def token_id_of(text: str | None) -> str | None:
    """The id part of a presented token, when it has the shape of one; else None (the text may be
    anything, a pasted secret included, so nothing else of it is ever kept)."""
    parts = split_token(text.strip()) if text else None
    return parts[0] if parts and _TOKEN_ID.fullmatch(parts[0]) else None


@dataclass
class _Address:
    since: float  # the start of its counting window
    failures: int = 0
    blocked_until: float = 0.0
    refused: int = 0  # requests refused while it was throttled, reported with its next record
    ids: list[str] = field(default_factory=list)


class AuthThrottle:
    def __init__(self, limit: int, window: float, *, max_addresses: int = 10_000, audit_per_window: int = 100):
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self.audit_per_window = audit_per_window
        self._addresses: dict[str, _Address] = {}
        self._lock = threading.Lock()
        self._audit_since = 0.0
        self._audited = 0
        self._left_out = 0

    def blocked(self, address: str, now: float | None = None) -> float:
        """Seconds until `address` may try again; 0 when it may now."""
        if self.limit <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            entry = self._addresses.get(address)
            if entry is None or entry.blocked_until <= now:
                return 0.0
            entry.refused += 1
            return entry.blocked_until - now

    def failed(self, address: str, presented: str | None, action: str, now: float | None = None) -> list[AuditEntry]:
        """Count a failed authentication; the audit records it calls for (often none)."""
        if self.limit <= 0:
            return []
        now = time.monotonic() if now is None else now
        token_id = token_id_of(presented)
        records: list[AuditEntry] = []
        with self._lock:
            entry = self._addresses.get(address)
            if entry is None or (now - entry.since >= self.window and entry.blocked_until <= now):
                earlier = entry.refused if entry is not None else 0
                entry = self._track(address, now)
                said = f"token {token_id}" if token_id else "no well-formed token id"
                more = f"; {earlier} requests were refused while it was throttled before" if earlier else ""
                records.append(self._record(address, action, 401, f"failed authentication ({said}){more}"))
            entry.failures += 1
            if token_id and token_id not in entry.ids and len(entry.ids) < _IDS_KEPT:
                entry.ids.append(token_id)
            if entry.failures == self.limit:
                entry.blocked_until = now + self.window
                tried = ", ".join(entry.ids) or "none well-formed"
                records.append(self._record(address, action, 429, f"{entry.failures} failed authentications in "
                                            f"{self.window:g} s: every request refused for {self.window:g} s; "
                                            f"token ids tried: {tried}"))
            return self._capped(records, now)

    def _track(self, address: str, now: float) -> _Address:
        if address not in self._addresses and len(self._addresses) >= self.max_addresses:
            # forget the addresses that are neither counting nor throttled, then the oldest
            for key in [k for k, e in self._addresses.items() if now - e.since >= self.window
                        and e.blocked_until <= now]:
                del self._addresses[key]
            while len(self._addresses) >= self.max_addresses:
                del self._addresses[next(iter(self._addresses))]
        self._addresses.pop(address, None)  # re-inserted last: the dict stays ordered oldest first
        entry = self._addresses[address] = _Address(since=now)
        return entry

    @staticmethod
    def _record(address: str, action: str, status: int, detail: str) -> AuditEntry:
        return AuditEntry(actor=ACTOR, role="-", action=action[:200], target=f"client {address}", status=status,
                          detail=detail)

    def _capped(self, records: list[AuditEntry], now: float) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        if now - self._audit_since >= self.window:
            if self._left_out:
                out.append(AuditEntry(actor=ACTOR, role="-", action="authentication", target=None, status=429,
                                      detail=f"{self._left_out} more failed-authentication records left out in "
                                             f"{self.window:g} s (over {self.audit_per_window} per window)"))
            self._audit_since, self._audited, self._left_out = now, 0, 0
        for record in records:
            if self._audited < self.audit_per_window:
                self._audited += 1
                out.append(record)
            else:
                self._left_out += 1
        return out
