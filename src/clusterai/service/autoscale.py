"""The autoscaler as operators see it, for the API, the CLI and the Python client: what it reports
(the head's last state document and the decision log, both in the store) and the operator's
override (enable or disable, new bounds per profile), written to the store for the head to apply at
its next round. Nothing here talks to the head directly, so it works from any machine that reaches
the store, and the override outlives a restart of the head."""

from __future__ import annotations

import time
from typing import Any

from clusterai.autoscale import parse_autoscale
from clusterai.config import ClusterConfig
from clusterai.errors import BadInput
from clusterai.store.protocol import JobStore

STATE_KEY = "state"
OVERRIDE_KEY = "override"
# what `enable` scales when cluster.yaml has no autoscale section (the head uses the same)
DEFAULT_AUTOSCALE: dict[str, Any] = {"min": 0, "max": 4}
MAX_WORKERS = 10_000


class AutoscaleService:
    def __init__(self, store: JobStore, config: ClusterConfig):
        self.store = store
        self.config = config

    def _declared(self) -> dict[str, tuple[int, int]]:
        """Profiles and bounds as cluster.yaml declares them (the default profile without a section)."""
        raw = self.config.autoscale if self.config.autoscale is not None else DEFAULT_AUTOSCALE
        return {p.name: (p.min, p.max) for p in parse_autoscale(raw).profiles}

    def status(self, decisions: int = 50) -> dict[str, Any]:
        """The head's last report (None before its first), the override in force, and the newest
        decisions; `running` says whether the report is fresh (the head is deciding now)."""
        found = self.store.get_autoscale(STATE_KEY)
        state, reported_at = found if found is not None else (None, None)
        override = self.store.get_autoscale(OVERRIDE_KEY)
        now = time.time()
        fresh = state is not None and reported_at is not None and \
            now - reported_at <= max(3 * float(state.get("interval_s", 5.0)), 35.0)
        return {
            "configured": self.config.autoscale is not None,
            "enabled": bool(state["enabled"]) if state is not None else self._enabled(override),
            "running": fresh,
            "reported_at": reported_at,
            "state": state,
            "override": override[0] if override is not None else None,
            "decisions": self.store.list_scale_decisions(limit=max(0, min(decisions, 1000))),
        }

    def _enabled(self, override: tuple[dict[str, Any], float] | None) -> bool:
        if override is not None and "enabled" in override[0]:
            return bool(override[0]["enabled"])
        return self.config.autoscale is not None

    def set(self, *, enabled: bool, minimum: int | None = None, maximum: int | None = None,
            profile: str | None = None) -> dict[str, Any]:
        """Enable (optionally with new bounds for one profile) or disable; returns the override."""
        declared = self._declared()
        found = self.store.get_autoscale(OVERRIDE_KEY)
        override = dict(found[0]) if found is not None else {}
        bounds: dict[str, dict[str, int]] = {k: dict(v) for k, v in (override.get("profiles") or {}).items()}
        if minimum is not None or maximum is not None:
            if profile is None:
                if len(declared) != 1:
                    raise BadInput(f"several profiles ({', '.join(declared)}): say which one (profile)")
                profile = next(iter(declared))
            if profile not in declared:
                raise BadInput(f"unknown profile {profile!r}; profiles are {', '.join(declared)}")
            current = bounds.get(profile, {})
            low = minimum if minimum is not None else current.get("min", declared[profile][0])
            high = maximum if maximum is not None else current.get("max", declared[profile][1])
            for name, value in (("min", low), ("max", high)):
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS:
                    raise BadInput(f"{name} must be a whole number from 0 to {MAX_WORKERS}, got {value!r}")
            if low > high:
                raise BadInput(f"min ({low}) is greater than max ({high}) for profile {profile!r}")
            bounds[profile] = {"min": low, "max": high}
        elif profile is not None and profile not in declared:
            raise BadInput(f"unknown profile {profile!r}; profiles are {', '.join(declared)}")
        override = {"enabled": bool(enabled), "profiles": bounds}
        self.store.put_autoscale(OVERRIDE_KEY, override, time.time())
        return override
