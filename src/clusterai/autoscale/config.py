"""The `autoscale:` section of cluster.yaml (already parsed into a dict) -> profiles, policies, provider.

The shorthand `autoscale: {min: 1, max: 4}` is one profile named "default" with target tracking and
reactive policies and the local provider; any profile field (concurrency, labels...) may sit beside
min and max. The full form:

    autoscale:
      interval_s: 2            # how often the head decides (a backlog is seen within it)
      up_cooldown_s: 30        # growing again waits this long after any change
      down_cooldown_s: 120     # shrinking waits this long after any change (no flapping)
      max_step: 4              # the most workers one decision adds or removes
      decision_log: 200        # decisions kept in memory
      profiles:                # in order: demand goes to the first profile that can run it
        cpu: {min: 1, max: 8, concurrency: 4, resources: {CPU: 4}, start_s: 20}
        gpu:
          min: 0
          max: 2
          labels: [gpu]        # or a mapping {region: eu} -> "region=eu"
          resources: {GPU: 1}
          models: [llama-3-8b]
          start_s: 180         # worker start + model load: the predictive lead time
      policies:                # default: target_tracking and reactive, for every profile
        - kind: target_tracking
          target_duration_s: 30
        - kind: reactive       # cpu_high 0.8, memory_high 0.85, queue_high 100, latency_high_s 0.5,
          cpu_high: 0.8        # cpu_low 0.3, memory_low 0.6, queue_low 10, latency_low_s 0.25, step 1
        - kind: scheduled
          profiles: [gpu]      # any policy may name the profiles it applies to (default: all)
          timezone: Europe/Berlin
          windows:
            - {cron: "0 8 * * 1-5", duration_s: 36000, workers: 1}
            - {days: sat, hours: 10-15, workers: 1}
        - kind: predictive
          profiles: [gpu]
          alpha: 0.3           # weight of the latest week
          lead_s: 300          # default: the profile's start_s
      provider:
        kind: ssh              # local (default) | ssh | command | none (only export the desired count)
        command: "clusterai worker {head} --name {name} --nthreads {concurrency}"
        hosts:
          - {host: gpu1.lan, user: ai, max_workers: 2, key_path: ~/.ssh/id_ed25519}

    provider kind local:   command (a list, or a string split like a shell would), env, cwd, grace_s, log_dir
    provider kind command: launch, terminate, list (each a shell string or an argv list), env, cwd, timeout_s

Templates may name {name}, {profile}, {concurrency} and the variables the caller passes to
`make_provider` (e.g. {head}).
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from pathlib import Path
from typing import Any

from clusterai.autoscale.cron import CronError
from clusterai.autoscale.engine import Autoscaler
from clusterai.autoscale.model import Profile, ProfileError
from clusterai.autoscale.policies import Policy, Predictive, Reactive, Scheduled, TargetTracking, Window
from clusterai.autoscale.providers import (
    CommandProvider,
    LocalProcessProvider,
    NoProvider,
    Provider,
    template_fields,
)
from clusterai.autoscale.ssh import SSHHost, SSHProvider
from clusterai.errors import AutoscaleConfigError

ROOT = "autoscale"
DEFAULT_PROFILE = "default"
DEFAULT_LOCAL_COMMAND = ("clusterai", "worker", "{head}", "--name", "{name}", "--nthreads", "{concurrency}")
DEFAULT_SSH_COMMAND = "clusterai worker {head} --name {name} --nthreads {concurrency}"
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # it goes into worker names
_PROFILE_KEYS = {"min", "max", "concurrency", "labels", "resources", "models", "start_s"}
_TOP_KEYS = {"interval_s", "up_cooldown_s", "down_cooldown_s", "max_step", "decision_log", "profiles",
             "policies", "provider"}


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)  # validated; the provider's keyword arguments


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    profiles: tuple[Profile, ...]
    policies: Mapping[str, tuple[Policy, ...]]  # profile -> its own policy objects
    provider: ProviderSpec
    interval_s: float = 2.0
    up_cooldown_s: float = 30.0
    down_cooldown_s: float = 120.0
    max_step: int = 4
    decision_log: int = 200

    def autoscaler(self, clock: Callable[[], float] = time.monotonic) -> Autoscaler:
        return Autoscaler(self.profiles, self.policies, up_cooldown_s=self.up_cooldown_s,
                          down_cooldown_s=self.down_cooldown_s, max_step=self.max_step, clock=clock,
                          log_size=self.decision_log)

    @property
    def predictive(self) -> dict[str, list[Predictive]]:
        """Per profile, its predictive policies: the caller feeds them history with `learn`."""
        return {name: [p for p in policies if isinstance(p, Predictive)] for name, policies in self.policies.items()}

    def make_provider(self, *, variables: Mapping[str, str] | None = None, token: str | None = None) -> Provider:
        """The configured provider; `variables` fill the command template (e.g. {"head": address}),
        `token` is the enrollment token, which travels in the environment or on stdin only."""
        o = self.provider.options
        if self.provider.kind == "local":
            return LocalProcessProvider(o["command"], o.get("env"), o.get("cwd"), variables=variables, token=token,
                                        grace_s=o.get("grace_s", 10.0), log_dir=o.get("log_dir"))
        if self.provider.kind == "none":
            return NoProvider()
        if self.provider.kind == "ssh":
            return SSHProvider(o["hosts"], o["command"], variables=variables, token=token,
                               grace_s=o.get("grace_s", 10.0))
        return CommandProvider(o["launch"], o["terminate"], o["list"], env=o.get("env"), cwd=o.get("cwd"),
                               token=token, timeout_s=o.get("timeout_s", 120.0))


def parse_autoscale(raw: Mapping[str, Any] | None) -> AutoscaleConfig:
    """Validate the section; every error names the field, e.g. "autoscale.profiles.gpu: min (5) is
    greater than max (2)"."""
    section = _mapping(raw or {}, ROOT)
    if "profiles" in section:
        _known_keys(section, _TOP_KEYS, ROOT)
        raw_profiles = _mapping(section["profiles"], f"{ROOT}.profiles")
        if not raw_profiles:
            raise AutoscaleConfigError(f"{ROOT}.profiles: at least one profile is needed")
    else:  # shorthand: the section itself is the one profile
        _known_keys(section, _TOP_KEYS | _PROFILE_KEYS, ROOT)
        raw_profiles = {DEFAULT_PROFILE: {k: v for k, v in section.items() if k in _PROFILE_KEYS}}
    profiles = tuple(_profile(str(name), spec) for name, spec in raw_profiles.items())
    names = [p.name for p in profiles]

    interval_s = _number(section.get("interval_s", 2.0), f"{ROOT}.interval_s", low=0.1)
    raw_policies = section.get("policies")
    if raw_policies is None:
        raw_policies = [{"kind": "target_tracking"}, {"kind": "reactive"}]
    policies: dict[str, list[Policy]] = {name: [] for name in names}
    for i, spec in enumerate(_list(raw_policies, f"{ROOT}.policies")):
        path = f"{ROOT}.policies[{i}]"
        spec = _mapping(spec, path)
        targets = _policy_profiles(spec, names, path)
        for name in targets:  # each profile its own object: a predictive one learns that profile's history
            policies[name].append(_policy(spec, path, interval_s))

    return AutoscaleConfig(
        profiles=profiles,
        policies={name: tuple(p) for name, p in policies.items()},
        provider=_provider(section.get("provider", {"kind": "local"}), f"{ROOT}.provider"),
        interval_s=interval_s,
        up_cooldown_s=_number(section.get("up_cooldown_s", 30.0), f"{ROOT}.up_cooldown_s"),
        down_cooldown_s=_number(section.get("down_cooldown_s", 120.0), f"{ROOT}.down_cooldown_s"),
        max_step=_integer(section.get("max_step", 4), f"{ROOT}.max_step", low=1),
        decision_log=_integer(section.get("decision_log", 200), f"{ROOT}.decision_log", low=1),
    )


# -- profiles -----------------------------------------------------------------------------------

def _profile(name: str, raw: Any) -> Profile:
    path = f"{ROOT}.profiles.{name}"
    if not _PROFILE_NAME.match(name):
        raise AutoscaleConfigError(f"{path}: a profile name is letters, digits, '_', '.' and '-' (at most 63)")
    spec = _mapping(raw if raw is not None else {}, path)
    _known_keys(spec, _PROFILE_KEYS, path)
    resources = {str(k): _number(v, f"{path}.resources.{k}", low=None)
                 for k, v in _mapping(spec.get("resources", {}), f"{path}.resources").items()}
    try:
        return Profile(
            name=name, labels=_labels(spec.get("labels", []), f"{path}.labels"), resources=resources,
            models=tuple(_strings(spec.get("models", []), f"{path}.models")),
            concurrency=_integer(spec.get("concurrency", 1), f"{path}.concurrency", low=None),
            min=_integer(spec.get("min", 0), f"{path}.min", low=None),
            max=_integer(spec.get("max", 1), f"{path}.max", low=None),
            start_s=_number(spec.get("start_s", 60.0), f"{path}.start_s", low=None))
    except ProfileError as exc:  # the profile's own checks, with this path in front
        raise AutoscaleConfigError(f"{path}: {exc.problem}") from None


def _labels(raw: Any, path: str) -> frozenset[str]:
    if isinstance(raw, Mapping):
        return frozenset(f"{k}={v}" for k, v in raw.items())
    return frozenset(label if "=" in label else f"{label}=true" for label in _strings(raw, path))


# -- policies -----------------------------------------------------------------------------------

_POLICY_FIELDS: dict[str, set[str]] = {
    "target_tracking": {"target_duration_s", "unknown_duration_s"},
    "reactive": {"cpu_high", "memory_high", "queue_high", "latency_high_s", "cpu_low", "memory_low",
                 "queue_low", "latency_low_s", "step"},
    "scheduled": {"windows", "timezone"},
    "predictive": {"lead_s", "alpha", "timezone", "noise_slots"},
}
_FRACTIONS = {"cpu_high", "memory_high", "cpu_low", "memory_low"}
_INTEGERS = {"queue_high", "queue_low", "step"}


def _policy_profiles(spec: Mapping[str, Any], names: list[str], path: str) -> list[str]:
    if "profiles" not in spec:
        return names
    chosen = _strings(spec["profiles"], f"{path}.profiles")
    for name in chosen:
        if name not in names:
            raise AutoscaleConfigError(f"{path}.profiles: unknown profile {name!r}; profiles are {', '.join(names)}")
    return chosen


def _policy(spec: Mapping[str, Any], path: str, interval_s: float) -> Policy:
    kind = spec.get("kind")
    if kind not in _POLICY_FIELDS:
        raise AutoscaleConfigError(f"{path}.kind: unknown policy {kind!r}; known: {', '.join(sorted(_POLICY_FIELDS))}")
    _known_keys(spec, _POLICY_FIELDS[kind] | {"kind", "profiles"}, path)
    if kind == "scheduled":
        raw_windows = _list(spec.get("windows"), f"{path}.windows")
        windows = [_window(w, f"{path}.windows[{i}]") for i, w in enumerate(raw_windows)]
        if not windows:
            raise AutoscaleConfigError(f"{path}.windows: a scheduled policy needs at least one window")
        return Scheduled(windows, tz=_timezone(spec.get("timezone"), f"{path}.timezone"))
    if kind == "predictive":
        lead = spec.get("lead_s")
        alpha = _number(spec.get("alpha", 0.3), f"{path}.alpha")
        if not 0 < alpha <= 1:
            raise AutoscaleConfigError(f"{path}.alpha ({alpha}) must be in (0, 1]")
        return Predictive(lead_s=None if lead is None else _number(lead, f"{path}.lead_s"), alpha=alpha,
                          tz=_timezone(spec.get("timezone"), f"{path}.timezone"),
                          noise_slots=_number(spec.get("noise_slots", 0.1), f"{path}.noise_slots"),
                          tick_s=interval_s)
    options: dict[str, Any] = {}
    for key in _POLICY_FIELDS[kind] & set(spec):
        where = f"{path}.{key}"
        options[key] = _integer(spec[key], where) if key in _INTEGERS else _number(spec[key], where)
        if key in _FRACTIONS and options[key] > 1:
            raise AutoscaleConfigError(f"{where} ({options[key]}) is a fraction, at most 1")
    if kind == "target_tracking":
        if options.get("target_duration_s", 1.0) <= 0:
            raise AutoscaleConfigError(f"{path}.target_duration_s must be greater than 0")
        return TargetTracking(**options)
    reactive = Reactive(**options)
    for signal in ("cpu", "memory", "queue", "latency"):
        suffix = "_s" if signal == "latency" else ""
        low, high = getattr(reactive, f"{signal}_low{suffix}"), getattr(reactive, f"{signal}_high{suffix}")
        if low >= high:
            raise AutoscaleConfigError(f"{path}: {signal}_low{suffix} ({low}) must be below {signal}_high{suffix} "
                                       f"({high}), or there is no band to stop flapping")
    return reactive


def _window(raw: Any, path: str) -> Window:
    spec = _mapping(raw, path)
    workers = _integer(spec.get("workers"), f"{path}.workers")
    try:
        if "cron" in spec:
            _known_keys(spec, {"cron", "duration_s", "workers"}, path)
            if "duration_s" not in spec:
                raise AutoscaleConfigError(f"{path}.duration_s: a cron window needs a duration")
            duration = _number(spec["duration_s"], f"{path}.duration_s", low=60)
            return Window.of(str(spec["cron"]), duration, workers)
        _known_keys(spec, {"days", "hours", "workers"}, path)
        return Window.hours(str(spec.get("days", "*")), str(spec.get("hours", "*")), workers)
    except CronError as exc:
        field_name = "cron" if "cron" in spec else "days/hours"
        raise AutoscaleConfigError(f"{path}.{field_name}: {exc}") from None


def _timezone(raw: Any, path: str) -> tzinfo:
    if raw is None or str(raw).upper() == "UTC":
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(str(raw))
    except (ZoneInfoNotFoundError, ValueError):
        raise AutoscaleConfigError(f"{path}: unknown time zone {raw!r}") from None


# -- providers ----------------------------------------------------------------------------------

_PROVIDER_KEYS = {
    "none": set(),  # decide and export clusterai_desired_workers only: an HPA or KEDA scales the workers
    "local": {"command", "env", "cwd", "grace_s", "log_dir"},
    "ssh": {"command", "hosts", "grace_s"},
    "command": {"launch", "terminate", "list", "env", "cwd", "timeout_s"},
}
_HOST_KEYS = {"host", "port", "user", "max_workers", "key_path", "known_hosts", "connect_timeout_s"}


def _provider(raw: Any, path: str) -> ProviderSpec:
    spec = _mapping(raw, path)
    kind = spec.get("kind", "local")
    if kind not in _PROVIDER_KEYS:
        known = ", ".join(sorted(_PROVIDER_KEYS))
        raise AutoscaleConfigError(f"{path}.kind: unknown provider {kind!r}; known: {known}")
    _known_keys(spec, _PROVIDER_KEYS[kind] | {"kind"}, path)
    options: dict[str, Any] = {}
    for key in ("env",):
        if key in spec:
            options[key] = {str(k): str(v) for k, v in _mapping(spec[key], f"{path}.{key}").items()}
    for key in ("cwd", "log_dir"):
        if key in spec:
            options[key] = str(Path(str(spec[key])).expanduser())
    for key in ("grace_s", "timeout_s"):
        if key in spec:
            options[key] = _number(spec[key], f"{path}.{key}")
    if kind == "local":
        command = spec.get("command", list(DEFAULT_LOCAL_COMMAND))
        argv = shlex.split(command) if isinstance(command, str) else _strings(command, f"{path}.command")
        if not argv:
            raise AutoscaleConfigError(f"{path}.command: empty")
        for part in argv:
            _template(part, f"{path}.command")
        options["command"] = argv
    elif kind == "none":
        pass
    elif kind == "ssh":
        options["command"] = _template(spec.get("command", DEFAULT_SSH_COMMAND), f"{path}.command")
        hosts = [_host(h, f"{path}.hosts[{i}]") for i, h in enumerate(_list(spec.get("hosts"), f"{path}.hosts"))]
        if not hosts:
            raise AutoscaleConfigError(f"{path}.hosts: an ssh provider needs at least one host")
        options["hosts"] = hosts
    else:  # command
        for key in ("launch", "terminate", "list"):
            if key not in spec:
                raise AutoscaleConfigError(f"{path}.{key}: a command provider needs its {key} command")
            value = spec[key]
            options[key] = value if isinstance(value, str) else _strings(value, f"{path}.{key}")
            if not options[key]:
                raise AutoscaleConfigError(f"{path}.{key}: empty")
    return ProviderSpec(kind, options)


def _host(raw: Any, path: str) -> SSHHost:
    spec = _mapping(raw, path)
    _known_keys(spec, _HOST_KEYS, path)
    if not isinstance(spec.get("host"), str) or not spec["host"]:
        raise AutoscaleConfigError(f"{path}.host: required (a host name or address)")
    path = f"{path} ({spec['host']})"
    if "max_workers" not in spec:
        raise AutoscaleConfigError(f"{path}: max_workers is required (how many workers this machine may run)")
    port = _integer(spec.get("port", 22), f"{path}.port", low=1)
    if port > 65535:
        raise AutoscaleConfigError(f"{path}.port ({port}) must be at most 65535")
    return SSHHost(
        host=spec["host"], port=port, user=None if spec.get("user") is None else str(spec["user"]),
        max_workers=_integer(spec["max_workers"], f"{path}.max_workers", low=1),
        key_path=None if spec.get("key_path") is None else str(Path(str(spec["key_path"])).expanduser()),
        known_hosts=None if spec.get("known_hosts") is None else str(Path(str(spec["known_hosts"])).expanduser()),
        connect_timeout_s=_number(spec.get("connect_timeout_s", 10.0), f"{path}.connect_timeout_s", low=0.1))


def _template(raw: Any, path: str) -> str:
    if not isinstance(raw, str):
        raise AutoscaleConfigError(f"{path}: expected a string, got {type(raw).__name__}")
    try:
        template_fields(raw)
    except ValueError as exc:
        raise AutoscaleConfigError(f"{path}: bad placeholder in {raw!r}: {exc}") from None
    return raw


# -- plain values -------------------------------------------------------------------------------

def _mapping(raw: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise AutoscaleConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
    return raw


def _list(raw: Any, path: str) -> list[Any]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise AutoscaleConfigError(f"{path}: expected a list, got {type(raw).__name__}")
    return list(raw)


def _strings(raw: Any, path: str) -> list[str]:
    items = _list(raw, path)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise AutoscaleConfigError(f"{path}[{i}]: expected a string, got {type(item).__name__}")
    return items


def _known_keys(spec: Mapping[str, Any], known: set[str], path: str) -> None:
    unknown = sorted(str(k) for k in set(spec) - known)
    if unknown:
        raise AutoscaleConfigError(f"{path}: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")


def _number(raw: Any, path: str, low: float | None = 0.0) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise AutoscaleConfigError(f"{path}: expected a number, got {raw!r}")
    if low is not None and raw < low:
        detail = "must not be negative" if low == 0 else f"must be at least {low:g}"
        raise AutoscaleConfigError(f"{path} ({raw}) {detail}")
    return float(raw)


def _integer(raw: Any, path: str, low: int | None = 0) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise AutoscaleConfigError(f"{path}: expected a whole number, got {raw!r}")
    if low is not None and raw < low:
        detail = "must not be negative" if low == 0 else f"must be at least {low}"
        raise AutoscaleConfigError(f"{path} ({raw}) {detail}")
    return raw
