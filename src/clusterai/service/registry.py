"""The model registry, the operations every surface shares: list models, show a version (by number,
alias or the latest), point an alias, register a model by hand, download a version's bytes.

A sweep registers its best trial's model when it finishes (head/sweep_driver.py); a version names
the sweep, trial, job and parameters that made it, its metrics, and its artifact with its SHA-256,
which every download is checked against.
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Mapping
from typing import Any

from clusterai.core.artifacts import ArtifactCorrupt, ArtifactStore
from clusterai.core.trials import ModelVersion
from clusterai.errors import BadInput
from clusterai.store.protocol import JobStore

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise BadInput(f"{what}: letters, digits and _.:- (at most 128, starting with a letter or digit), "
                       f"got {value!r}")
    return value


def parse_ref(ref: Any) -> int | str | None:
    """A version reference as typed: "3" or 3 is version 3, "production" an alias, None the latest."""
    if ref is None or ref == "" or ref == "latest":
        return None
    if isinstance(ref, bool):
        raise BadInput(f"version: a number or an alias, got {ref!r}")
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isascii() and ref.isdigit()):
        number = int(ref)
        if number < 1:
            raise BadInput(f"version: numbers start at 1, got {number}")
        return number
    return check_name("alias", ref)


class RegistryService:
    def __init__(self, store: JobStore, artifacts: ArtifactStore | None = None):
        self.store = store
        self._artifacts = artifacts

    @property
    def artifacts(self) -> ArtifactStore:
        if self._artifacts is None:  # made when first needed: the root may be a remote store
            self._artifacts = ArtifactStore()
        return self._artifacts

    def models(self) -> builtins.list[dict[str, Any]]:
        """One entry per model: its latest version, how many there are, and its aliases."""
        by_name: dict[str, list[ModelVersion]] = {}
        for v in self.store.model_versions(limit=10_000):
            by_name.setdefault(v.name, []).append(v)
        out = []
        for name, versions in sorted(by_name.items()):
            latest = versions[0]  # newest first
            out.append({"name": name, "versions": len(versions), "latest": latest.version,
                        "updated_at": latest.created_at, "metrics": latest.metrics,
                        "aliases": {a: v.version for v in versions for a in v.aliases}})
        return out

    def versions(self, name: str, *, limit: int = 200) -> builtins.list[dict[str, Any]]:
        check_name("model", name)
        found = self.store.model_versions(name, limit=limit)
        if not found:
            self.store.get_model_version(name)  # raises RegistryNotFound with the message
        return [v.to_dict() for v in found]

    def show(self, name: str, ref: Any = None) -> dict[str, Any]:
        return self.store.get_model_version(check_name("model", name), parse_ref(ref)).to_dict()

    def set_alias(self, name: str, alias: str, version: Any) -> dict[str, Any]:
        """Point `alias` at `version` (a number or another alias); None removes it."""
        check_name("model", name)
        check_name("alias", alias)
        if alias.isdigit() or alias == "latest":
            raise BadInput(f"alias: {alias!r} would read as a version; pick a name such as production")
        number = None
        if version is not None:
            ref = parse_ref(version)
            if ref is None:
                raise BadInput("version: a number or an alias to point the alias at")
            number = self.store.get_model_version(name, ref).version
        self.store.set_model_alias(name, alias, number, time.time())
        return self.store.get_model_version(name, number).to_dict() if number is not None else {
            "name": name, "alias": alias, "removed": True}

    def register(self, name: str, artifact: Mapping[str, Any], *, params: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, Any] | None = None, alias: str | None = None,
                 created_by: str | None = None, job_id: int | None = None) -> dict[str, Any]:
        """A new version from an artifact already in the store (a job's result, say): checked against
        its SHA-256 before it is registered."""
        check_name("model", name)
        if alias is not None:
            check_name("alias", alias)
        if not isinstance(artifact, Mapping) or not {"artifact", "sha256", "size"} <= set(artifact):
            raise BadInput("artifact: a reference {artifact: URL, size, sha256}, as a job's result holds it")
        ref = {"artifact": artifact["artifact"], "size": artifact["size"], "sha256": artifact["sha256"]}
        try:
            self.artifacts.verify(ref)
        except ArtifactCorrupt as exc:  # the caller's reference is wrong, not the store
            raise BadInput(f"artifact: {exc}") from None
        version = ModelVersion(name=name, version=0, artifact=ref, created_at=0.0, params=dict(params or {}),
                               metrics=dict(metrics or {}), job_id=job_id, created_by=created_by,
                               aliases=(alias,) if alias else ())
        return self.store.register_model(version, time.time()).to_dict()

    def download(self, name: str, ref: Any = None) -> tuple[dict[str, Any], bytes]:
        """A version and its bytes, checked against the SHA-256 it was registered with."""
        version = self.store.get_model_version(check_name("model", name), parse_ref(ref))
        return version.to_dict(), self.artifacts.get_bytes(version.artifact)
