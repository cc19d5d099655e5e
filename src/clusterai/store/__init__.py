"""The durable store: protocols by concern (protocol.py), the SQL backends, the leader lock."""

from clusterai.store.protocol import JobStore, open_store

__all__ = ["JobStore", "open_store"]
