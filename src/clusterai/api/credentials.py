"""The inference-only credentials the head hands to batch workers (for llm.generate, llm.embed).

Each worker gets its own: `caiw.<its address, base64url>.<HMAC-SHA256 of the address>`, keyed by a
secret made when the API starts and kept in memory only. So a credential lives no longer than the
API that made it (a restart makes all of them anew), names the one worker it was made for, and is
accepted only while that worker is in the coordinator's registry: a worker that left, or a machine
whose certificate was revoked and that was put out of the cluster, keeps a credential that no longer
works. Nothing is stored: the head can compute any worker's credential again from its address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from typing import Any

PREFIX = "caiw"
_MAX_TEXT = 1000  # a worker's address is short; anything longer is not a credential


class WorkerCredentials:
    def __init__(self, secret: bytes | None = None):
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, address: str) -> str:
        return hmac.new(self._secret, address.encode(), hashlib.sha256).hexdigest()

    def credential_for(self, worker_address: str) -> str:
        """The credential of the worker at `worker_address` (its Dask address, as the registry has it)."""
        tag = base64.urlsafe_b64encode(worker_address.encode()).decode().rstrip("=")
        return f"{PREFIX}.{tag}.{self._mac(worker_address)}"

    @staticmethod
    def looks_like(text: str) -> bool:
        return text.startswith(PREFIX + ".")

    def address_of(self, text: str) -> str | None:
        """The worker address a credential was made for by this secret; None if it was not."""
        if len(text) > _MAX_TEXT or not self.looks_like(text):
            return None
        _, tag, mac = (text.split(".", 2) + ["", ""])[:3]
        try:
            address = base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4)).decode()
        except (binascii.Error, ValueError):
            return None
        return address if hmac.compare_digest(mac.encode(), self._mac(address).encode()) else None


def present(worker_slots: Callable[[], Iterable[Any]] | None, address: str) -> bool:
    """Whether the registry has the worker at `address` now (any status but "gone", which means it left)."""
    if worker_slots is None:
        return False
    return any(getattr(s, "address", None) == address and getattr(s, "status", "gone") != "gone"
               for s in worker_slots())
