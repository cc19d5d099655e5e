"""The durable store: protocols by concern (protocol.py), the SQL backends, the leader lock."""

from clusterai.store.open import open_store
from clusterai.store.protocol import JobStore

__all__ = ["JobStore", "open_store"]
