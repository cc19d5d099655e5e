"""deploy/compose.yaml against the Compose Specification's JSON schema, and against what its
services need from each other: secrets and files that are there, healthchecks the dependencies wait
for, no password in the file, the head's cluster.yaml as clusterai reads it, Prometheus's scrape
target and credentials."""

from __future__ import annotations

import copy
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_support import (
    COMPOSE,
    DEPLOY,
    CheckFailed,
    argv_commands,
    load_compose,
    parse_command,
    public_api_paths,
    validate_compose,
)

from clusterai.autoscale import parse_autoscale
from clusterai.config import load_config


@pytest.fixture
def compose() -> dict[str, Any]:
    return load_compose()


def _secret_files(service: dict[str, Any]) -> dict[str, str]:
    """/run/secrets/<target> -> the top-level secret a service mounts there."""
    files = {}
    for entry in service.get("secrets", []):
        source, target = (entry, entry) if isinstance(entry, str) else (entry["source"], entry.get("target",
                                                                                                 entry["source"]))
        files[str(PurePosixPath("/run/secrets") / target)] = source
    return files


def _config_files(service: dict[str, Any]) -> set[str]:
    return {c["target"] for c in service.get("configs", []) if isinstance(c, dict)}


def _command(service: dict[str, Any]) -> Any:
    """The clusterai command line a service runs, parsed by the CLI."""
    command = service["command"]
    argv = command if isinstance(command, list) else ["sh", "-c", command]
    (line,) = argv_commands(argv)
    return parse_command(line)


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    validate_compose(compose)


def test_services_are_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "head", "worker-1", "worker-2", "prometheus", "grafana"}
    assert _command(services["head"]).path == ("scheduler",)
    assert [_command(services[w]).params["name"] for w in ("worker-1", "worker-2")] == ["worker-1", "worker-2"]


def test_references_resolve(compose: dict[str, Any]) -> None:
    secrets, configs, volumes = compose["secrets"], compose["configs"], compose["volumes"]
    for name, service in compose["services"].items():
        for source in _secret_files(service).values():
            assert source in secrets, f"{name} mounts secret {source!r}, which is not defined"
        for entry in service.get("configs", []):
            assert entry["source"] in configs, f"{name} mounts config {entry['source']!r}, which is not defined"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in deploy/"
            else:
                assert source in volumes, f"{name} mounts volume {source!r}, which is not defined"
        for dependency, how in (service.get("depends_on") or {}).items() if isinstance(
                service.get("depends_on"), dict) else ((d, {}) for d in service.get("depends_on", [])):
            assert dependency in compose["services"]
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in compose["services"][dependency], f"{name} waits for {dependency} to be " \
                                                                         "healthy, which has no healthcheck"
    for name, config in configs.items():
        assert (DEPLOY / config["file"]).is_file(), f"config {name}: {config['file']} is not in deploy/"
    # the secrets are files the operator makes in deploy/secrets, which git ignores
    ignore = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore and "!.gitignore" in ignore
    for name, secret in secrets.items():
        assert secret["file"].startswith("./secrets/"), f"secret {name} lives outside deploy/secrets"


def test_no_password_or_token_is_written_in_the_file(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict)
        for key, value in environment.items():
            if any(word in key for word in ("PASSWORD", "TOKEN", "SECRET")):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret in the file; read it from a file"
                assert str(value).startswith("/run/secrets/") and value in _secret_files(service), \
                    f"{name}: {key} points at {value}, not at a secret the service mounts"
            if "://" in str(value):
                assert urlsplit(str(value)).password is None, f"{name}: {key} carries a password"
    # PostgreSQL's image starts without a password only when told to; here it is not
    assert "POSTGRES_HOST_AUTH_METHOD" not in compose["services"]["postgres"]["environment"]


def test_only_dask_is_published_beyond_this_machine(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host = str(port).rsplit(":", 2)
            if str(port).endswith(":8786"):
                assert name == "head"  # mutual TLS (--tls-dir): only certificate holders get in
                assert _command(service).params["tls_dir"] is not None
            else:
                assert len(host) == 3 and host[0] == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_head_reads_its_certificates_store_and_config(compose: dict[str, Any]) -> None:
    head = compose["services"]["head"]
    cmd = _command(head)
    files = _secret_files(head)
    tls = PurePosixPath(cmd.params["tls_dir"])
    node = cmd.params["tls_node"]
    assert {str(tls / "ca.pem"), str(tls / f"{node}.pem"), str(tls / f"{node}.key")} <= set(files)
    assert files[str(tls / "ca.pem")] == "ca_cert" and files[str(tls / f"{node}.key")] == "head_key"
    assert "ca.key" not in " ".join(files)  # the CA's key stays out of every container
    assert head["environment"]["CLUSTERAI_CONFIG"] in _config_files(head)
    store = urlsplit(head["environment"]["CLUSTERAI_STORE"])
    assert store.scheme == "postgresql" and store.hostname == "postgres" and store.password is None
    # the password: PGPASSWORD, read from the secret the postgres service was given
    assert 'PGPASSWORD="$(cat /run/secrets/postgres_password)"' in head["command"][2]
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert files["/run/secrets/postgres_password"] == "postgres_password"
    # the healthcheck asks a route that needs no token, on the port the API listens on, over HTTPS
    test = " ".join(head["healthcheck"]["test"])
    assert f"https://head:{cmd.params['api_port']}/readyz" in test and "/readyz" in public_api_paths()


def test_cluster_yaml_is_one_clusterai_accepts(compose: dict[str, Any]) -> None:
    config = load_config(DEPLOY / compose["configs"]["cluster_yaml"]["file"])  # ConfigError if not
    head = compose["services"]["head"]
    assert {config.api.tls_cert, config.api.tls_key} <= set(_secret_files(head))
    scaling = parse_autoscale(config.autoscale)
    assert scaling.provider.kind == "none"
    profiles = {p.name for p in scaling.profiles}
    for name in ("worker-1", "worker-2"):
        worker = compose["services"][name]
        cmd = _command(worker)
        assert cmd.params["address"] == f"tls://head:{_command(head).params['port']}"
        files = _secret_files(worker)
        tls = PurePosixPath(cmd.params["tls_dir"])
        assert {str(tls / "ca.pem"), str(tls / f"{cmd.params['tls_node']}.pem"),
                str(tls / f"{cmd.params['tls_node']}.key"), str(cmd.params["token_file"])} <= set(files)
        assert not any(source.startswith("head_") for source in files.values())  # not the head's key
        labels = dict(label.split("=", 1) for label in cmd.params["label"])
        assert labels["profile"] in profiles  # the workers count towards the profile the head decides for


def test_prometheus_scrapes_the_api_with_a_mounted_token(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    (config_file,) = [c for c in prometheus["configs"] if c["target"] == "/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load((DEPLOY / compose["configs"][config_file["source"]]["file"]).read_text())
    (job,) = config["scrape_configs"]
    files = _secret_files(prometheus)
    assert job["authorization"]["type"] == "Bearer"
    assert files[job["authorization"]["credentials_file"]] == "prometheus_token"
    assert files[job["tls_config"]["ca_file"]] == "ca_cert"
    head = _command(compose["services"]["head"])
    assert job["scheme"] == "https" and job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": [f"head:{head.params['api_port']}"]}]


def test_grafana_gets_its_password_and_provisioning(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] in _secret_files(grafana)
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("."))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/clusterai.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/dashboards"] == path
    home = PurePosixPath(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert str(home.parent) == path and (DEPLOY / "grafana/dashboards" / home.name).is_file()


# -- the checks fail on what is broken ---------------------------------------------------------------

@pytest.mark.parametrize("breakage", [
    lambda c: c["services"]["head"].update(enviroment={"A": "b"}),                       # a typo
    lambda c: c["services"]["worker-1"]["depends_on"]["head"].update(condition="healthy"),  # not a condition
    lambda c: c["services"]["postgres"]["healthcheck"].update(interval=5),              # a duration is a string
    lambda c: c["services"]["head"].update(ports="8000:8000"),                           # a list, not a string
    lambda c: c["secrets"]["worker_token"].update(path="./secrets/worker.token"),
    lambda c: c.update(service={}),
])
def test_the_compose_check_refuses_broken_files(compose: dict[str, Any], breakage: Any) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    with pytest.raises(CheckFailed):
        validate_compose(broken)


def test_an_unescaped_variable_is_caught(tmp_path: Any) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace('PGPASSWORD="$$(cat', 'PGPASSWORD="$(cat'))
    load_compose(COMPOSE)
    with pytest.raises(CheckFailed, match="interpolate"):
        load_compose(broken)


def test_the_compose_file_is_read_as_compose_reads_it() -> None:
    # the workers share one definition through a YAML merge key: the check sees it merged
    text = COMPOSE.read_text()
    assert "<<: *worker" in text
    compose = load_compose()
    assert compose["services"]["worker-2"]["secrets"] == compose["services"]["worker-1"]["secrets"]
    assert compose["services"]["worker-2"]["image"] == "clusterai:local"


def test_the_image_is_built_from_this_repository_without_its_secrets(compose: dict[str, Any]) -> None:
    from deploy_support import ROOT, render_chart

    build = compose["x-clusterai-image"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    dockerfile = context / build["dockerfile"]
    assert context == ROOT and dockerfile.is_file()
    lines = [line.split() for line in dockerfile.read_text().splitlines() if line and not line.startswith("#")]
    for words in lines:
        if words[0] == "COPY":
            for source in words[1:-1]:
                assert (context / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
    # BuildKit's <Dockerfile>.dockerignore: nothing but what the image needs, so no .clusterai/ (admin
    # token, CA key) and no deploy/secrets/ can reach a layer
    ignore = [line for line in (dockerfile.parent / (dockerfile.name + ".dockerignore")).read_text().splitlines()
              if line and not line.startswith("#")]
    assert ignore[0] == "*" and {line for line in ignore if line.startswith("!")} == {
        "!pyproject.toml", "!README.md", "!src/"}
    # the image's user is the one the chart runs as (its Secrets are group-readable by fsGroup)
    user = next(words[1] for words in lines if words[0] == "USER")
    pod = next(d for d in render_chart()["clusterai/templates/worker-deployment.yaml"])["spec"]["template"]["spec"]
    assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
