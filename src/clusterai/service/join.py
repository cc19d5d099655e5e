"""Joining, the head's side: a new machine presents a join token (`clusterai token create NAME
--role worker --uses 1 --expires-in 1h`) and gets its identity in return: a worker certificate and
key signed by the cluster's CA, the CA itself, an enrollment token of its own, and the scheduler's
address. The joining side (worker/join.py) first checks the CA against the fingerprint it was given,
then talks to the head only over TLS verified by that CA, so a rogue head cannot hand it an identity.

Each join spends one use of the join token, in one store statement: two machines racing for a
token's last use cannot both get it. The machine's own token is named after it, so revoking it
(`clusterai token revoke`) or its certificate (`clusterai certs revoke NODE`) shuts that machine out
and no other."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from clusterai.errors import AuthRefused, ConfigError
from clusterai.service.access import Principal, new_token
from clusterai.store.protocol import JobStore
from clusterai.worker.tls import CA_CERT, check_node_names, fingerprint, issue_certificate


class JoinService:
    def __init__(self, store: JobStore, ca_dir: str | Path, scheduler: str):
        self.store = store
        self.ca_dir = Path(ca_dir)
        self.scheduler = scheduler
        self._ca_pem = (self.ca_dir / CA_CERT).read_text()

    def ca(self) -> dict[str, str]:
        return {"ca": self._ca_pem, "fingerprint": fingerprint(self._ca_pem)}

    def join(self, principal: Principal, node: str, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        try:
            (node,) = check_node_names([node])
        except ConfigError as exc:
            raise ConfigError(f"node: {exc}") from None
        record = self.store.get_token(principal.token_id)
        if record is None or record.uses_left is None:
            raise AuthRefused("this is not a join token: make one with `clusterai token create NAME --role worker "
                              "--uses 1`", status=403)
        if not self.store.use_token(principal.token_id, now):
            raise AuthRefused("this join token is used up, expired or revoked", status=403)
        cert, key = issue_certificate(self.ca_dir, node, "worker")
        text, own = new_token(node, "worker", created_by=f"join token {record.id} ({record.name})", now=now)
        self.store.add_token(own)
        return {"node": node, "scheduler": self.scheduler, "ca": self._ca_pem, "cert": cert.decode(),
                "key": key.decode(), "token": text, "token_id": own.id}
