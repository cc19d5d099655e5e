"""The Helm chart deploy/helm/clusterai, rendered by Helm's engine and checked against the
Kubernetes schemas (two releases: the chart's floor and the newest known), KEDA's CRD, and what
clusterai itself accepts (cluster.yaml, the files its commands read)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from deploy_support import (
    CHART,
    NEWEST_KUBERNETES,
    OLDEST_KUBERNETES,
    VALUE_SETS,
    CheckFailed,
    chart_manifests,
    check_references,
    container_commands,
    find,
    mounted_files,
    parse_command,
    public_api_paths,
    render_chart,
    renders,
    validate_manifest,
)

from clusterai.autoscale import parse_autoscale
from clusterai.config import parse_config

VERSIONS = (OLDEST_KUBERNETES, NEWEST_KUBERNETES)


def test_helm_engine_is_helm() -> None:
    assert helm.helm_sdk_version().startswith("v4.")  # Helm's own Go SDK, not a look-alike


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_manifest_is_valid_kubernetes(name: str) -> None:
    docs = renders()[name]
    assert {d["kind"] for d in docs} >= {"ConfigMap", "Deployment", "Service"}
    for doc in docs:
        for version in VERSIONS:
            validate_manifest(doc, version)
    check_references(docs)


def test_the_scalers_render_only_when_enabled() -> None:
    kinds = {name: sorted(d["kind"] for d in docs) for name, docs in renders().items()}
    assert "ScaledObject" not in kinds["defaults"] and "HorizontalPodAutoscaler" not in kinds["defaults"]
    assert "ScaledObject" in kinds["keda"] and "HorizontalPodAutoscaler" not in kinds["keda"]
    assert "HorizontalPodAutoscaler" in kinds["hpa"] and "ScaledObject" not in kinds["hpa"]
    # with a scaler the Deployment leaves replicas to it (a helm upgrade would reset them otherwise)
    assert find(renders()["defaults"], "Deployment", "-worker")["spec"]["replicas"] == 2
    for scaled in ("keda", "hpa"):
        assert "replicas" not in find(renders()[scaled], "Deployment", "-worker")["spec"]


def test_keda_and_hpa_scale_the_worker_deployment_on_the_desired_count() -> None:
    so = find(renders()["keda"], "ScaledObject")
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == 'max(clusterai_desired_workers{profile="cpu"})'
    assert trigger["metadata"]["threshold"] == "1"
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (0, 6)
    hpa = find(renders()["hpa"], "HorizontalPodAutoscaler")
    external = hpa["spec"]["metrics"][0]["external"]
    assert external["metric"] == {"name": "clusterai_desired_workers", "selector": {"matchLabels": {"profile": "cpu"}}}
    assert external["target"] == {"type": "AverageValue", "averageValue": "1"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def _cluster_yaml(docs: list[dict[str, Any]]) -> dict[str, Any]:
    data = yaml.safe_load(find(docs, "ConfigMap", "-config")["data"]["cluster.yaml"])
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_cluster_yaml_is_one_clusterai_accepts(name: str) -> None:
    data = _cluster_yaml(renders()[name])
    config = parse_config(data, source=f"{name}: cluster.yaml")  # the head's own parser; ConfigError if bad
    head = find(renders()[name], "Deployment", "-head")["spec"]["template"]["spec"]
    files = mounted_files(head, head["containers"][0])
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    assert env["CLUSTERAI_CONFIG"] in files  # the head reads the ConfigMap's cluster.yaml
    if config.api.tls_cert:
        assert {config.api.tls_cert, config.api.tls_key} <= files
    worker = find(renders()[name], "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    profile = parse_command(container_commands(worker)[0]).params["label"][0]
    if config.autoscale is not None:
        scaling = parse_autoscale(config.autoscale)
        assert scaling.provider.kind == "none"  # Kubernetes scales; the head only decides and exports
        # the worker pods count towards the profile the head decides for
        assert profile == f"profile={scaling.profiles[0].name}"


def test_head_probes_use_what_the_api_offers() -> None:
    for name in ("defaults", "plain"):
        head = find(renders()[name], "Deployment", "-head")
        c = head["spec"]["template"]["spec"]["containers"][0]
        scheme = "HTTPS" if name == "defaults" else "HTTP"
        assert c["startupProbe"]["httpGet"] == {"path": "/livez", "port": "api", "scheme": scheme}
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "api", "scheme": scheme}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api", "scheme": scheme}
        api_port = parse_command(container_commands(c)[0]).params["api_port"]
        assert {"name": "api", "containerPort": api_port, "protocol": "TCP"} in c["ports"]
        assert head["spec"]["strategy"] == {"type": "Recreate"}
        # kubelet sends no token: each probe is a route of the API that needs none
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["path"] in public_api_paths()
    # workers must reach Dask even while /readyz fails (store down): that Service ignores readiness
    scheduler = find(renders()["defaults"], "Service", "-scheduler")
    assert scheduler["spec"]["publishNotReadyAddresses"] is True
    assert "publishNotReadyAddresses" not in find(renders()["defaults"], "Service", "-api")["spec"]


def test_worker_rolls_and_drains_within_its_grace() -> None:
    deployment = find(renders()["defaults"], "Deployment", "-worker")
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 3600 + 30
    c = pod["containers"][0]
    hook = c["lifecycle"]["preStop"]["exec"]["command"]
    commands = [parse_command(argv) for argv in container_commands(c)[1:]]
    assert [cmd.path for cmd in commands] == [("workers", "drain"), ("workers", "show")]
    for cmd in commands:
        assert cmd.params["url"] == "https://rel-clusterai-api:8000"
        assert cmd.params["ca_cert"] in mounted_files(pod, c)
        assert cmd.params["name"] == "$POD_NAME"
    assert "/etc/clusterai/drain/token" in hook[2] and "/etc/clusterai/drain/token" in mounted_files(pod, c)
    # the worker's name is its pod's, so the hook drains the right one
    worker = parse_command(container_commands(c)[0])
    assert worker.params["name"] == "$(POD_NAME)"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    assert worker.params["address"] == "tls://rel-clusterai-scheduler:8786"
    files = mounted_files(pod, c)
    tls = worker.params["tls_dir"]
    assert {f"{tls}/ca.pem", f"{tls}/worker.pem", f"{tls}/worker.key", str(worker.params["token_file"])} <= files
    # without the drain: no hook, no operator token in the pod, the default grace
    plain = find(renders()["plain"], "Deployment", "-worker")["spec"]["template"]["spec"]
    assert "lifecycle" not in plain["containers"][0] and plain["terminationGracePeriodSeconds"] == 30
    assert not any(v["name"] == "drain" for v in plain["volumes"])


def test_secrets_hold_what_the_pods_read() -> None:
    docs = render_chart({"store": {"existingSecret": "", "url": "postgresql://u:pw@db:5432/c"}})
    made = find(docs["clusterai/templates/secret.yaml"], "Secret")
    head = find(docs["clusterai/templates/head-deployment.yaml"], "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    ref = env["CLUSTERAI_STORE"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": made["metadata"]["name"], "key": "url"}
    assert made["stringData"] == {"url": "postgresql://u:pw@db:5432/c"}
    # with a Secret of one's own, the chart makes none and reads that one
    docs = render_chart({"store": {"existingSecret": "mine", "existingSecretKey": "dsn"}})
    assert docs["clusterai/templates/secret.yaml"] == []
    head = find(docs["clusterai/templates/head-deployment.yaml"], "Deployment")["spec"]["template"]["spec"]
    assert head["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "dsn"}
    # no password, token or key appears in a manifest other than a Secret the user asked the chart to make
    for doc in chart_manifests():
        assert doc["kind"] != "Secret"
        assert "BEGIN" not in yaml.safe_dump(doc)


def test_helm_lint_strict_is_clean() -> None:
    report = helm.lint(str(CHART), {"store": {"existingSecret": "clusterai-store"}}, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# -- the checks fail on what is broken ---------------------------------------------------------------

@pytest.mark.parametrize(("values", "message"), [
    ({"autoscaling": {"keda": {"enabled": True}, "hpa": {"enabled": True}}}, "exclusive"),
    ({"autoscaling": {"hpa": {"enabled": True}, "minReplicas": 0}}, "at least 1 for an HPA"),
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "greater than"),
    ({"autoscaling": {"enabled": False, "keda": {"enabled": True}}}, "only with autoscaling.enabled"),
    ({"store": {"existingSecret": ""}}, "needs its PostgreSQL store"),
    ({"config": {"store": "sqlite:///x.db"}}, "set by the chart"),
])
def test_values_that_cannot_work_fail_the_render(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render_chart(values)


@pytest.mark.parametrize("values", [
    {"worker": {"replica": 3}},                        # a typo
    {"worker": {"drain": {"graceSeconds": "1h"}}},     # a string where seconds go
    {"head": {"apiPort": 70000}},
    {"image": {"pullPolicy": "Sometimes"}},
])
def test_values_schema_refuses_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render_chart(values)


def test_a_broken_template_fails_the_render(tmp_path: Path) -> None:
    chart = tmp_path / "clusterai"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope.deeper }}\n")
    with pytest.raises(helm.HelmRenderError):
        render_chart(chart=chart)


def _worker() -> dict[str, Any]:
    return copy.deepcopy(find(renders()["defaults"], "Deployment", "-worker"))


@pytest.mark.parametrize("breakage", [
    lambda d: d["spec"].update(replica=3),                                              # unknown field
    lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="3630"),  # wrong type
    lambda d: d["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"].update(
        command="clusterai workers drain x"),                                           # a string, not a list
    lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),               # required
    lambda d: d["spec"]["selector"]["matchLabels"].update(extra="x"),                   # selects no pod
    lambda d: d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].append(
        {"name": "missing", "mountPath": "/x"}),                                        # no such volume
    lambda d: d["metadata"].update(name="Worker_1"),                                    # not a DNS name
])
def test_the_kubernetes_check_refuses_broken_manifests(breakage: Any) -> None:
    doc = _worker()
    validate_manifest(doc, NEWEST_KUBERNETES)  # the real one passes...
    breakage(doc)
    with pytest.raises(CheckFailed):           # ...and the broken one does not
        validate_manifest(doc, NEWEST_KUBERNETES)


def test_the_kubernetes_check_refuses_broken_probes_and_services() -> None:
    head = copy.deepcopy(find(renders()["defaults"], "Deployment", "-head"))
    head["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "http"
    with pytest.raises(CheckFailed, match="probes port"):
        validate_manifest(head, NEWEST_KUBERNETES)
    docs = copy.deepcopy(renders()["defaults"])
    find(docs, "Service", "-api")["spec"]["ports"][0]["targetPort"] = "https"
    with pytest.raises(CheckFailed, match="targetPort"):
        check_references(docs)
    docs = copy.deepcopy(renders()["hpa"])
    find(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] = "rel-clusterai-workers"
    with pytest.raises(CheckFailed, match="scales"):
        check_references(docs)


@pytest.mark.parametrize("breakage", [
    lambda d: d["spec"]["triggers"][0]["metadata"].update(threshold=1),   # trigger metadata are strings
    lambda d: d["spec"].pop("triggers"),                                  # required
    lambda d: d["spec"].update(minReplicas=1),                            # the HPA's word, not KEDA's
    lambda d: d["spec"]["scaleTargetRef"].pop("name"),
])
def test_the_keda_check_refuses_broken_scaled_objects(breakage: Any) -> None:
    so = copy.deepcopy(find(renders()["keda"], "ScaledObject"))
    validate_manifest(so, NEWEST_KUBERNETES)
    breakage(so)
    with pytest.raises(CheckFailed):
        validate_manifest(so, NEWEST_KUBERNETES)


def test_an_unknown_kind_is_not_waved_through() -> None:
    doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    with pytest.raises(CheckFailed, match="Couldn't find schema"):
        validate_manifest(doc, NEWEST_KUBERNETES)


def test_a_bad_cluster_yaml_is_caught_by_clusterai() -> None:
    from clusterai.errors import AutoscaleConfigError, ConfigError

    data = _cluster_yaml(renders()["defaults"])
    data["api"]["tls_key"] = None  # tls_cert without tls_key
    with pytest.raises(ConfigError):
        parse_config(data)
    data = _cluster_yaml(renders()["defaults"])
    data["autoscale"]["profiles"]["cpu"]["min"] = 9  # above max
    with pytest.raises(AutoscaleConfigError):
        parse_autoscale(parse_config(data).autoscale)
