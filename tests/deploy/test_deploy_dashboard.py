"""The provisioned Grafana dashboard (deploy/grafana/dashboards) and the scalers' queries read only
metrics clusterai exports, with labels those metrics have: taken from the collectors the REST API
serves at /metrics (head/metrics.py, api/metrics.py, api/edges.py), not from a list kept by hand."""

from __future__ import annotations

import copy
import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, CheckFailed, find, load_compose, renders
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "clusterai-cluster.json"
ADDED_BY_PROMETHEUS = {"instance", "job"}
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
             "summary": ("", "_sum", "_count")}
_NOT_METRICS = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "delta", "histogram_quantile",
                "topk", "bottomk", "abs", "clamp_min", "clamp_max", "and", "or", "unless", "bool", "offset",
                "vector", "scalar", "time", "label_values"}


class _Store:
    """Just enough of a store for StoreCollector to yield every family it has, with its labels."""

    def job_counts(self) -> dict[str, int]:
        return {"queued": 1}

    def queue_depths(self) -> list[tuple[str, int, str, int]]:
        return [("default", 1, "queued", 1)]

    def list_workers(self) -> list[Any]:
        return [SimpleNamespace(status="ready")]

    def sweep_counts(self) -> dict[str, Any]:
        return {"sweeps": {"running": 1}, "trials": {"running": 2}, "model_versions": 1}

    def get_autoscale(self, key: str) -> tuple[dict[str, Any], float]:
        profile = {"name": "cpu", "desired": 2, "min": 1, "max": 4, "ready": 1, "starting": 0, "draining": 0}
        return {"profiles": [profile], "unschedulable": [], "enabled": True}, 0.0


def exported_metrics() -> dict[str, set[str]]:
    """Every sample name the head's /metrics can serve -> its label names."""
    from clusterai.api.edges import AuditAndCount
    from clusterai.api.metrics import StoreCollector
    from clusterai.head.metrics import Metrics

    out: dict[str, set[str]] = {}

    def add(name: str, kind: str, labels: Any) -> None:
        for suffix in _SUFFIXES[kind]:
            out[name + suffix] = set(labels) | ({"le"} if suffix == "_bucket" else set())

    edges = AuditAndCount(None, None, CollectorRegistry())  # type: ignore[arg-type]
    for wrapper in [*vars(Metrics()).values(), edges.requests, edges.seconds]:
        if isinstance(wrapper, MetricWrapperBase):
            add(wrapper._name, wrapper._type, wrapper._labelnames)  # type: ignore[attr-defined]
    for family in StoreCollector(_Store()).collect():
        add(family.name, family.type, {k for s in family.samples for k in s.labels})
    return out


def check_promql(expr: str, metrics: dict[str, set[str]], legend: str = "") -> None:
    """Raise CheckFailed if `expr` reads a metric clusterai does not export, matches or groups on a
    label it does not have, or its legend names a label the result does not keep."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                     # string literals out
    grouping = {label.strip() for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text)
                for label in group.split(",") if label.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)                             # range selectors
    names = []
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?", text):
        name, braces = match.group(1), match.group(2)
        if name in _NOT_METRICS or (braces is None and text[match.end():].lstrip().startswith("(")):
            continue
        if name not in metrics:
            raise CheckFailed(f"{expr}: clusterai exports no metric {name!r}")
        names.append(name)
        for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", braces or ""):
            if label not in metrics[name] | ADDED_BY_PROMETHEUS:
                raise CheckFailed(f"{expr}: {name} has no label {label!r} (it has {sorted(metrics[name])})")
    if not names:
        raise CheckFailed(f"{expr}: reads no metric")
    available = set().union(*(metrics[n] for n in names)) | ADDED_BY_PROMETHEUS
    if not grouping <= available:
        raise CheckFailed(f"{expr}: groups by {sorted(grouping - available)}, which {names} do not have")
    kept = grouping if re.search(r"\b(sum|max|min|avg|count)\b", expr) else available
    for label in re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend):
        if label not in kept:
            raise CheckFailed(f"{expr}: the legend names {label!r}, which the result does not keep ({sorted(kept)})")


def check_dashboard(dashboard: dict[str, Any], datasource_uid: str, metrics: dict[str, set[str]]) -> None:
    """Raise CheckFailed if a panel reads another data source, a query fails check_promql, panel ids
    repeat, or panels overlap on the grid."""
    ids, cells = set(), set()
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["datasource"]["uid"] != datasource_uid:
            raise CheckFailed(f"variable {variable['name']} reads data source {variable['datasource']['uid']}")
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
        if not match or match.group(1) not in metrics or match.group(2) not in metrics[match.group(1)] | \
                ADDED_BY_PROMETHEUS:
            raise CheckFailed(f"variable {variable['name']}: {variable['query']['query']} reads no exported label")
    for panel in dashboard["panels"]:
        if panel["id"] in ids:
            raise CheckFailed(f"panel id {panel['id']} is used twice")
        ids.add(panel["id"])
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                if (x, y) in cells or x >= 24:
                    raise CheckFailed(f"panel {panel['title']!r} overlaps another or leaves the 24-column grid")
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        for where in (panel, *panel["targets"]):
            if where["datasource"] != {"type": "prometheus", "uid": datasource_uid}:
                raise CheckFailed(f"panel {panel['title']!r} reads data source {where['datasource']}")
        if not panel["targets"]:
            raise CheckFailed(f"panel {panel['title']!r} has no query")
        for target in panel["targets"]:
            check_promql(target["expr"], metrics, target.get("legendFormat", ""))


@pytest.fixture(scope="module")
def metrics() -> dict[str, set[str]]:
    return exported_metrics()


@pytest.fixture
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _datasource() -> dict[str, Any]:
    provisioning = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert provisioning["apiVersion"] == 1
    (datasource,) = provisioning["datasources"]
    return dict(datasource)


def test_the_exported_metrics_are_found(metrics: dict[str, set[str]]) -> None:
    # the collectors were read: the autoscaler's gauges and the seed metrics are among them
    assert metrics["clusterai_desired_workers"] == {"profile"}
    assert metrics["clusterai_autoscale_workers"] == {"profile", "state"}
    assert metrics["clusterai_queue_depth"] == {"queue", "priority", "state"}
    assert "cluster_total_tasks_total" in metrics and "le" in metrics["clusterai_http_request_seconds_bucket"]


def test_dashboard_reads_what_clusterai_exports(dashboard: dict[str, Any], metrics: dict[str, set[str]]) -> None:
    check_dashboard(dashboard, _datasource()["uid"], metrics)


def test_dashboard_has_the_panels_it_promises(dashboard: dict[str, Any]) -> None:
    queries = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    assert "clusterai_jobs" in queries["Jobs per state"] and "by (state)" in queries["Jobs per state"]
    assert "clusterai_queue_depth" in next(q for t, q in queries.items() if t.startswith("Queue depth"))
    assert "clusterai_workers" in queries["Workers"]
    desired = queries["Desired vs actual workers, per profile"]
    assert "clusterai_desired_workers" in desired and "clusterai_autoscale_workers" in desired


def test_grafana_provisioning_points_at_the_stack() -> None:
    datasource = _datasource()
    compose = load_compose()
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in compose["services"]["prometheus"]["command"]


def test_the_scalers_query_what_clusterai_exports(metrics: dict[str, set[str]]) -> None:
    trigger = find(renders()["keda"], "ScaledObject")["spec"]["triggers"][0]["metadata"]
    check_promql(trigger["query"], metrics)
    external = find(renders()["hpa"], "HorizontalPodAutoscaler")["spec"]["metrics"][0]["external"]["metric"]
    assert external["name"] in metrics and set(external["selector"]["matchLabels"]) <= metrics[external["name"]]


# -- the checks fail on what is broken ---------------------------------------------------------------

@pytest.mark.parametrize(("expr", "legend", "message"), [
    ("sum(clusterai_desired_worker)", "", "exports no metric"),                       # a typo in the name
    ('sum(clusterai_jobs{status="queued"})', "", "no label 'status'"),              # it is `state`
    ("sum by (worker) (clusterai_queue_depth)", "", "groups by"),
    ("sum by (queue) (clusterai_queue_depth)", "{{priority}}", "does not keep"),
    ("cluster_total_tasks", "", "exports no metric"),                                # a counter ends in _total
    ("rate(clusterai_http_request_seconds[5m])", "", "exports no metric"),          # a histogram's _bucket/_sum
])
def test_the_promql_check_refuses_what_clusterai_does_not_export(metrics: dict[str, set[str]], expr: str,
                                                                   legend: str, message: str) -> None:
    with pytest.raises(CheckFailed, match=message):
        check_promql(expr, metrics, legend)


@pytest.mark.parametrize("breakage", [
    lambda d: d["panels"][4]["targets"][0].update(expr="sum by (state) (clusterai_job{})"),
    lambda d: d["panels"][5]["datasource"].update(uid="other"),
    lambda d: d["panels"][6]["gridPos"].update(y=4),                  # on top of the panel above it
    lambda d: d["panels"][7].update(id=1),
    lambda d: d["templating"]["list"][1]["query"].update(query="label_values(clusterai_desired_workers, pool)"),
])
def test_the_dashboard_check_refuses_broken_dashboards(dashboard: dict[str, Any], metrics: dict[str, set[str]],
                                                       breakage: Any) -> None:
    broken = copy.deepcopy(dashboard)
    breakage(broken)
    with pytest.raises(CheckFailed):
        check_dashboard(broken, _datasource()["uid"], metrics)
