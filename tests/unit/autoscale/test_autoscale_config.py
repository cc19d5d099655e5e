from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from autoscale_support import MONDAY, FakeClock, demand

import clusterai.autoscale.config as config_module
from clusterai.autoscale import (
    AutoscaleConfigError,
    CommandProvider,
    LocalProcessProvider,
    Predictive,
    Reactive,
    Scheduled,
    Snapshot,
    SSHHost,
    SSHProvider,
    TargetTracking,
    parse_autoscale,
)

pytestmark = pytest.mark.timeout(10)


def test_shorthand_is_one_default_profile_with_tracking_reactive_and_local() -> None:
    config = parse_autoscale({"min": 1, "max": 4})
    [profile] = config.profiles
    assert (profile.name, profile.min, profile.max, profile.concurrency) == ("default", 1, 4, 1)
    assert [type(p) for p in config.policies["default"]] == [TargetTracking, Reactive]
    assert config.provider.kind == "local"
    assert config.provider.options["command"] == list(config_module.DEFAULT_LOCAL_COMMAND)
    provider = config.make_provider(variables={"head": "tls://head:8786"}, token="secret")
    assert isinstance(provider, LocalProcessProvider)
    # and it decides: 120 s of work over 30 s is 4 workers
    scaler = config.autoscaler(clock=FakeClock())
    plan = scaler.decide(Snapshot(now=MONDAY, demand=[demand(queued=40, duration=3.0)]))
    assert plan.of("default").desired == 4


def test_shorthand_takes_other_profile_fields_and_settings() -> None:
    config = parse_autoscale({"min": 0, "max": 3, "concurrency": 2, "labels": {"region": "eu"}, "max_step": 2})
    assert config.profiles[0].labels == frozenset({"region=eu"}) and config.profiles[0].concurrency == 2
    assert config.max_step == 2


def test_the_documented_example_parses() -> None:
    docstring = config_module.__doc__ or ""
    example = docstring[docstring.index("    autoscale:"):docstring.index("\n\n    provider kind local")]
    raw = yaml.safe_load(example)["autoscale"]
    # the doc's time zone needs tzdata, which a bare container may lack: check the rest
    raw["policies"][2].pop("timezone")
    config = parse_autoscale(raw)
    assert [p.name for p in config.profiles] == ["cpu", "gpu"]
    gpu = config.profiles[1]
    assert (gpu.labels, dict(gpu.resources), gpu.models, gpu.start_s) == (
        frozenset({"gpu=true"}), {"GPU": 1.0}, ("llama-3-8b",), 180.0)
    assert [type(p) for p in config.policies["cpu"]] == [TargetTracking, Reactive]
    assert [type(p) for p in config.policies["gpu"]] == [TargetTracking, Reactive, Scheduled, Predictive]
    assert list(config.predictive) == ["cpu", "gpu"] and len(config.predictive["gpu"]) == 1
    assert config.predictive["gpu"][0].lead_s == 300
    assert (config.interval_s, config.up_cooldown_s, config.down_cooldown_s, config.decision_log) == (2, 30, 120, 200)
    [host] = config.provider.options["hosts"]
    assert host.host == "gpu1.lan" and host.max_workers == 2 and host.port == 22 and host.user == "ai"
    assert host.key_path is not None and "~" not in host.key_path
    assert isinstance(config.make_provider(variables={"head": "h"}), SSHProvider)


def test_each_profile_gets_its_own_predictive_policy() -> None:
    config = parse_autoscale({"profiles": {"a": {"max": 2}, "b": {"max": 2}},
                              "policies": [{"kind": "predictive"}]})
    [a], [b] = config.predictive["a"], config.predictive["b"]
    assert a is not b


def test_command_provider_and_windows() -> None:
    config = parse_autoscale({"min": 0, "max": 2, "policies": [
        {"kind": "scheduled", "timezone": "UTC", "windows": [{"days": "mon-fri", "hours": "9-17", "workers": 1}]}],
        "provider": {"kind": "command", "launch": "./up.sh", "terminate": ["./down.sh", "--now"],
                     "list": "./list.sh", "timeout_s": 30}})
    provider = config.make_provider()
    assert isinstance(provider, CommandProvider)
    assert provider.terminate_cmd == ["./down.sh", "--now"] and provider.timeout_s == 30
    scheduled = config.policies["default"][0]
    assert isinstance(scheduled, Scheduled)
    assert scheduled.desired(Snapshot(now=MONDAY + 10 * 3600), config.profiles[0], 0) is not None


def test_ssh_hosts_are_hosts() -> None:
    config = parse_autoscale({"min": 0, "max": 2, "provider": {"kind": "ssh", "hosts": [
        {"host": "a", "max_workers": 1, "port": 2222, "known_hosts": "/etc/ssh/known"}]}})
    assert config.provider.options["hosts"] == [SSHHost(host="a", port=2222, max_workers=1,
                                                        known_hosts="/etc/ssh/known")]
    assert config.provider.options["command"] == config_module.DEFAULT_SSH_COMMAND


def full(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"profiles": {"cpu": {"min": 0, "max": 4}, "gpu": {"min": 0, "max": 2}}}
    raw.update(changes)
    return raw


@pytest.mark.parametrize(("raw", "message"), [
    (full(profiles={"gpu": {"min": 5, "max": 2}}), "autoscale.profiles.gpu: min (5) is greater than max (2)"),
    ({"min": 3, "max": 1}, "autoscale.profiles.default: min (3) is greater than max (1)"),
    (full(profiles={"cpu": {"max": -1}}), "autoscale.profiles.cpu: max (-1) must not be negative"),
    (full(profiles={"cpu": {"concurrency": 0}}), "autoscale.profiles.cpu: concurrency (0) must be at least 1"),
    (full(profiles={"cpu": {"start_s": -5}}), "autoscale.profiles.cpu: start_s (-5.0) must not be negative"),
    (full(profiles={"cpu": {"resources": {"GPU": -1}}}),
     "autoscale.profiles.cpu: resources.GPU (-1.0) must not be negative"),
    (full(profiles={"cpu": {"max": "many"}}), "autoscale.profiles.cpu.max: expected a whole number, got 'many'"),
    (full(profiles={"cpu": {"maximum": 3}}), "autoscale.profiles.cpu: unknown key 'maximum'"),
    (full(profiles={}), "autoscale.profiles: at least one profile is needed"),
    (full(profiles={"a b": {}}), "autoscale.profiles.a b: a profile name is letters"),
    (full(up_cooldown_s=-5), "autoscale.up_cooldown_s (-5) must not be negative"),
    (full(max_step=0), "autoscale.max_step (0) must be at least 1"),
    ({"min": 1, "max": 2, "colour": "red"}, "autoscale: unknown key 'colour'"),
    (full(policies=[{"kind": "magic"}]),
     "autoscale.policies[0].kind: unknown policy 'magic'; known: predictive, reactive, scheduled, target_tracking"),
    (full(policies=[{"kind": "reactive"}, {"kind": "scheduled", "profiles": ["tpu"], "windows": []}]),
     "autoscale.policies[1].profiles: unknown profile 'tpu'; profiles are cpu, gpu"),
    (full(policies=[{"kind": "reactive", "cpu_high": 1.5}]), "autoscale.policies[0].cpu_high (1.5) is a fraction"),
    (full(policies=[{"kind": "reactive", "cpu_low": 0.9}]),
     "autoscale.policies[0]: cpu_low (0.9) must be below cpu_high (0.8)"),
    (full(policies=[{"kind": "reactive", "queue_high": -1}]),
     "autoscale.policies[0].queue_high (-1) must not be negative"),
    (full(policies=[{"kind": "target_tracking", "target_duration_s": 0}]),
     "autoscale.policies[0].target_duration_s must be greater than 0"),
    (full(policies=[{"kind": "target_tracking", "target": 30}]), "autoscale.policies[0]: unknown key 'target'"),
    (full(policies=[{"kind": "predictive", "alpha": 0}]), "autoscale.policies[0].alpha (0.0) must be in (0, 1]"),
    (full(policies=[{"kind": "scheduled", "windows": [{"cron": "0 8 * *", "duration_s": 3600, "workers": 1}]}]),
     "autoscale.policies[0].windows[0].cron: cron '0 8 * *' has 4 fields; it needs 5"),
    (full(policies=[{"kind": "scheduled", "windows": [{"cron": "0 25 * * *", "duration_s": 3600, "workers": 1}]}]),
     "autoscale.policies[0].windows[0].cron: cron '0 25 * * *': hour 25 is outside 0-23"),
    (full(policies=[{"kind": "scheduled", "windows": [{"cron": "0 8 * * *", "workers": 1}]}]),
     "autoscale.policies[0].windows[0].duration_s: a cron window needs a duration"),
    (full(policies=[{"kind": "scheduled", "windows": [{"days": "mon-fri", "hours": "9-17", "workers": -2}]}]),
     "autoscale.policies[0].windows[0].workers (-2) must not be negative"),
    (full(policies=[{"kind": "scheduled", "windows": [{"days": "xyz", "hours": "9", "workers": 1}]}]),
     "autoscale.policies[0].windows[0].days/hours: cron '* 9 * * xyz': day of week has 'xyz', not a number"),
    (full(policies=[{"kind": "scheduled", "windows": []}]),
     "autoscale.policies[0].windows: a scheduled policy needs at least one window"),
    (full(provider={"kind": "kubernetes"}),
     "autoscale.provider.kind: unknown provider 'kubernetes'; known: command, local, none, ssh"),
    (full(provider={"kind": "ssh", "hosts": [{"host": "gpu1"}]}),
     "autoscale.provider.hosts[0] (gpu1): max_workers is required"),
    (full(provider={"kind": "ssh", "hosts": [{"host": "gpu1", "max_workers": 0}]}),
     "autoscale.provider.hosts[0] (gpu1).max_workers (0) must be at least 1"),
    (full(provider={"kind": "ssh", "hosts": [{"host": "gpu1", "max_workers": 1, "port": 70000}]}),
     "autoscale.provider.hosts[0] (gpu1).port (70000) must be at most 65535"),
    (full(provider={"kind": "ssh", "hosts": [{"max_workers": 1}]}), "autoscale.provider.hosts[0].host: required"),
    (full(provider={"kind": "ssh", "hosts": []}), "autoscale.provider.hosts: an ssh provider needs at least one host"),
    (full(provider={"kind": "ssh", "hosts": [{"host": "a", "max_workers": 1}], "command": "run {name"}),
     "autoscale.provider.command: bad placeholder in 'run {name'"),
    (full(provider={"kind": "command", "launch": "./up.sh", "list": "./ls.sh"}),
     "autoscale.provider.terminate: a command provider needs its terminate command"),
    (full(provider={"kind": "local", "command": []}), "autoscale.provider.command: empty"),
    (full(provider={"kind": "local", "grace_s": -1}), "autoscale.provider.grace_s (-1) must not be negative"),
    (full(provider="local"), "autoscale.provider: expected a mapping, got str"),
    ("min: 1", "autoscale: expected a mapping, got str"),
])
def test_errors_name_the_field(raw: Any, message: str) -> None:
    with pytest.raises(AutoscaleConfigError, match="^" + re.escape(message)):
        parse_autoscale(raw)


def test_unknown_time_zone() -> None:
    message = r"^autoscale.policies\[0\].timezone: unknown time zone 'Mars/Olympus'"
    with pytest.raises(AutoscaleConfigError, match=message):
        parse_autoscale(full(policies=[{"kind": "predictive", "timezone": "Mars/Olympus"}]))
