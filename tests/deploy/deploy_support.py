"""What the deploy/ checks share: the Helm chart rendered by Helm's own template engine, manifests
checked against the Kubernetes JSON schemas and KEDA's CRD, the compose file against the Compose
Specification's schema, and `clusterai` command lines against the real CLI.

The tools, all offline at test time (see schemas/README.md):
- helm-python-sdk binds Helm's Go SDK (libhelm_c, Helm v4) with ctypes: `Chart.render` is what
  `helm template` runs, `values.schema.json` included; `lint` is `helm lint`.
- kubernetes-validate carries the JSON schemas of every Kubernetes release it supports; its strict
  variant refuses unknown fields, as `kubectl apply` does by default since 1.27.
- the ScaledObject schema is KEDA's own CRD (schemas/keda.sh_scaledobjects.yaml), made strict the
  same way, and the Compose schema is the Compose Specification's (schemas/compose-spec.json).
- command lines go through the parsers `clusterai` itself uses (argparse for `worker`, Click under
  Typer for the rest), so a flag or subcommand the CLI does not have fails here as it would there.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import typer.main
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "clusterai"
COMPOSE = DEPLOY / "compose.yaml"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# the chart's kubeVersion floor (Chart.yaml) and the newest release kubernetes-validate knows
OLDEST_KUBERNETES = "1.25"
NEWEST_KUBERNETES = kubernetes_validate.utils.latest_version()

# a store Secret is the one thing the chart cannot do without
BASE_VALUES: dict[str, Any] = {"store": {"existingSecret": "clusterai-store"}}

# Value sets the chart is rendered with: the defaults, each scaler, and the other branches.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "keda": {"autoscaling": {"keda": {"enabled": True}, "minReplicas": 0, "maxReplicas": 6}},
    "hpa": {"autoscaling": {"hpa": {"enabled": True, "behavior": {"scaleDown": {
        "stabilizationWindowSeconds": 300, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}}}},
    "plain": {
        "store": {"existingSecret": "", "url": "postgresql://clusterai:pw@db.example:5432/clusterai"},
        "tls": {"api": False},
        "worker": {"drain": {"enabled": False}, "labels": {"region": "eu", "zone": "eu-1"},
                   "daskResources": {"GPU": 1}, "extraArgs": ["--max-restarts", "3"], "profile": "gpu",
                   "nthreads": 4, "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}}},
        "head": {"extraArgs": ["--standby-poll", "2"], "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
        "autoscaling": {"enabled": False},
        "config": {"tasks": ["myproject.tasks"], "placement": {"strategy": "capability"},
                   "api": {"rate_limit": 500}},
        "imagePullSecrets": [{"name": "registry"}],
        "fullnameOverride": "ai",
    },
}


class CheckFailed(AssertionError):
    """A deployment file that Kubernetes, Compose or the clusterai CLI would refuse."""


# -- Helm ------------------------------------------------------------------------------------------

def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge dicts of values, later layers winning (as repeated `helm -f` files do)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = value
    return out


def render_chart(values: dict[str, Any] | None = None, *, chart: Path = CHART, release: str = "rel",
                 namespace: str = "clusterai") -> dict[str, list[dict[str, Any]]]:
    """`helm template`: every template's manifests (NOTES.txt left out), by template path."""
    rendered = helm.Chart.load(chart).render(merged(BASE_VALUES, values or {}), name=release,
                                             namespace=namespace, is_install=True)
    out: dict[str, list[dict[str, Any]]] = {}
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        out[path] = [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def chart_manifests(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return [doc for docs in render_chart(values, **kwargs).values() for doc in docs]


@cache
def _renders() -> dict[str, list[dict[str, Any]]]:
    return {name: chart_manifests(values) for name, values in VALUE_SETS.items()}


def renders() -> dict[str, list[dict[str, Any]]]:
    """Every value set's manifests, rendered once per test session (do not change them: copy first).
    A function, not a fixture in a conftest.py: the suite's modules import `conftest` by name, and a
    second conftest module would take that name from tests/conftest.py."""
    return _renders()


def find(docs: Iterable[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    if len(found) != 1:
        raise CheckFailed(f"expected one {kind} named *{name_suffix}, found {[d['metadata']['name'] for d in found]}")
    return found[0]


# -- Kubernetes ------------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # RFC 1035 (Service names)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")  # IANA_SVC_NAME, 15 at most


def _crd_to_json_schema(node: Any) -> Any:
    """A CRD's openAPIV3Schema as JSON Schema, strict like the API server's field validation:
    objects with declared properties refuse others unless marked preserve-unknown-fields."""
    if isinstance(node, list):
        return [_crd_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _crd_to_json_schema(sub) for name, sub in value.items()}
        elif key in ("anyOf", "allOf", "oneOf") or (key in ("items", "additionalProperties", "not")
                                                   and isinstance(value, dict)):
            out[key] = _crd_to_json_schema(value)
        elif key == "nullable" or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in out and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def _crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> a validator, for the CRDs the chart's optional templates use."""
    validators = {}
    for path in SCHEMAS.glob("*.sh_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _crd_to_json_schema(version["schema"]["openAPIV3Schema"])
            schema.setdefault("required", [])
            schema["required"] = sorted({*schema["required"], "apiVersion", "kind", "metadata", "spec"})
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def validate_manifest(doc: dict[str, Any], version: str) -> None:
    """Raise CheckFailed unless `doc` is valid for Kubernetes `version` (strict: no unknown fields)."""
    what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    crd = _crd_validators().get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if crd is not None:
        errors = sorted(crd.iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            raise CheckFailed(f"{what}: " + "; ".join(f"{e.json_path}: {e.message}" for e in errors))
    else:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise CheckFailed(f"{what} (Kubernetes {e.version}): {path}: {e.message}") from None
        except kubernetes_validate.SchemaNotFoundError as e:
            raise CheckFailed(f"{what}: {e.message}") from None
    _check_names_and_labels(doc, what)
    pod = pod_spec(doc)
    if pod is not None:
        _check_workload(doc, pod, what)


def _check_names_and_labels(doc: dict[str, Any], what: str) -> None:
    name = doc["metadata"]["name"]
    pattern = _DNS_LABEL if doc["kind"] == "Service" else _DNS_SUBDOMAIN
    if not pattern.match(name) or len(name) > (63 if doc["kind"] == "Service" else 253):
        raise CheckFailed(f"{what}: {name!r} is not a valid {doc['kind']} name")
    for labels in _all_labels(doc):
        for key, value in labels.items():
            prefix, _, label = str(key).rpartition("/")
            if (prefix and not _DNS_SUBDOMAIN.match(prefix)) or not _LABEL_NAME.match(label):
                raise CheckFailed(f"{what}: label key {key!r} is not valid")
            if not isinstance(value, str) or not _LABEL_VALUE.match(value):
                raise CheckFailed(f"{what}: label {key}={value!r}: a label value is a string of 63 characters "
                                  "at most, alphanumeric at both ends")


def _all_labels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield doc["metadata"].get("labels") or {}
    spec = doc.get("spec") or {}
    if isinstance(spec.get("selector"), dict):
        yield spec["selector"].get("matchLabels", spec["selector"]) or {}
    template = spec.get("template") or {}
    yield (template.get("metadata") or {}).get("labels") or {}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _check_workload(doc: dict[str, Any], pod: dict[str, Any], what: str) -> None:
    selector = doc["spec"].get("selector", {}).get("matchLabels", {})
    labels = doc["spec"]["template"]["metadata"].get("labels", {})
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        raise CheckFailed(f"{what}: selector {selector} does not select the pod template's labels {labels}")
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for c in containers(pod):
        ports = set()
        for port in c.get("ports", []):
            if "name" in port:
                if not _PORT_NAME.match(port["name"]):
                    raise CheckFailed(f"{what}: port name {port['name']!r} is not an IANA service name (15 at most)")
                ports.add(port["name"])
        for mount in c.get("volumeMounts", []):
            if mount["name"] not in volumes:
                raise CheckFailed(f"{what}: container {c['name']} mounts volume {mount['name']!r}, which the pod "
                                  f"does not have (volumes: {sorted(volumes)})")
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(probe_name) or {}
            for handler in ("httpGet", "tcpSocket", "grpc"):
                port = (probe.get(handler) or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    raise CheckFailed(f"{what}: {c['name']}.{probe_name} probes port {port!r}, not one of {ports}")


def check_references(docs: list[dict[str, Any]]) -> None:
    """Across one render: Services select a pod template and reach named ports it has; HPAs and
    ScaledObjects scale a Deployment of the render; ConfigMaps the pods mount are in it."""
    pods = [(d, pod_spec(d)) for d in docs if pod_spec(d) is not None]
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        matching = [p for d, p in pods if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                                              for k, v in selector.items())]
        if not matching:
            raise CheckFailed(f"Service/{svc['metadata']['name']}: its selector {selector} matches no pod template")
        names = {p["name"] for pod in matching for c in containers(pod) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            if isinstance(port.get("targetPort"), str) and port["targetPort"] not in names:
                raise CheckFailed(f"Service/{svc['metadata']['name']}: targetPort {port['targetPort']!r} is not a "
                                  f"container port of the pods it selects ({sorted(names)})")
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    for scaler in (d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")):
        target = scaler["spec"]["scaleTargetRef"]
        if target.get("kind", "Deployment") != "Deployment" or target["name"] not in deployments:
            raise CheckFailed(f"{scaler['kind']}/{scaler['metadata']['name']} scales {target}, not a Deployment of "
                              f"this release ({sorted(deployments)})")
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for doc, pod in pods:
        for volume in pod.get("volumes", []):
            cm = volume.get("configMap")
            if cm is not None and cm["name"] not in config_maps:
                raise CheckFailed(f"{doc['kind']}/{doc['metadata']['name']} mounts ConfigMap {cm['name']!r}, which "
                                  "this release does not make")


def mounted_files(pod: dict[str, Any], container: dict[str, Any]) -> set[str]:
    """The files a container sees from its Secret and ConfigMap volumes that list their items."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = set()
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        source = volume.get("secret") or volume.get("configMap") or {}
        for item in source.get("items", []):
            files.add(str(PurePosixPath(mount["mountPath"]) / item["path"]))
    return files


# -- Compose ---------------------------------------------------------------------------------------

@cache
def _compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def interpolate(node: Any, where: str = "") -> Any:
    """Compose's interpolation for a file that uses no variables: `$$` is a literal `$`; any other `$`
    is `$NAME` or `${NAME}`, filled in from the shell that runs `docker compose` (empty if unset),
    or an invalid template that Compose refuses, e.g. `$(`: in a command meant for the container's
    shell, either is a bug."""
    if isinstance(node, dict):
        return {k: interpolate(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        if "$" in node.replace("$$", ""):
            raise CheckFailed(f"{where}: {node!r} names a variable that Compose would interpolate; write $$ for a "
                              "$ the container's shell should see")
        return node.replace("$$", "$")
    return node


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    """The compose file as Compose reads it: YAML merge keys resolved, then interpolated."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return interpolate(data)  # type: ignore[no-any-return]


def validate_compose(data: dict[str, Any]) -> None:
    """Raise CheckFailed unless `data` (a parsed compose file) follows the Compose Specification."""
    errors = sorted(_compose_validator().iter_errors(data), key=lambda e: list(e.path))
    if errors:
        raise CheckFailed("; ".join(f"{e.json_path}: {e.message}" for e in errors))


# -- the clusterai command line --------------------------------------------------------------------

_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SHELL_WORDS = {"exec", "if", "then", "else", "elif", "do", "while", "until", "!", "time", "command", "{"}
_OPERATOR = re.compile(r"^[;&|()<>]+$")
_INVOCATION = re.compile(r"(?<![\w/.=-])clusterai(?=\s)")
# options of `docker compose exec|run` that take a value
_COMPOSE_VALUE_OPTIONS = {"-e", "--env", "-u", "--user", "-w", "--workdir", "--entrypoint", "--name", "-v",
                          "--volume", "-p", "--publish", "-l", "--label", "--index"}


def _wrapped(words: list[str]) -> list[str]:
    """The command a wrapper runs: `docker compose exec|run [options] SERVICE CMD...`, `kubectl
    exec ... -- CMD...`, `sudo|env [options] CMD...`; the words themselves otherwise."""
    tool = PurePosixPath(words[0]).name
    if tool in ("docker", "podman") and words[1:2] == ["compose"]:
        verbs = [i for i, w in enumerate(words) if w in ("exec", "run")]
        if not verbs:
            return []
        i = verbs[0] + 1
        while i < len(words) and words[i].startswith("-"):
            i += 2 if words[i] in _COMPOSE_VALUE_OPTIONS else 1
        return words[i + 1:]  # after the service
    if tool == "kubectl":
        return words[words.index("--") + 1:] if "--" in words else []
    if tool in ("sudo", "env"):
        i = 1
        while i < len(words) and (words[i].startswith("-") or _ASSIGNMENT.match(words[i])):
            i += 1
        return words[i:]
    return words


def shell_commands(script: str) -> list[list[str]]:
    """The `clusterai` command lines in a POSIX shell script, one line of script at a time: the words
    after assignments, `exec`, `if`, `do`..., those a wrapper runs (`docker compose exec head ...`,
    `kubectl exec ... -- ...`), and those of an `sh -c SCRIPT` inside. Variables stay as written
    ("$POD_NAME"). Raises CheckFailed when the script names clusterai more often than that finds."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if not _OPERATOR.match(token):
                segment.append(token)
                continue
            words, segment = segment, []
            while words and (_ASSIGNMENT.match(words[0]) or words[0] in _SHELL_WORDS):
                words.pop(0)
            words = _wrapped(words) if words else words
            if not words:
                continue
            if PurePosixPath(words[0]).name == "clusterai":
                found.append(words)
            elif PurePosixPath(words[0]).name in ("sh", "bash", "dash") and words[1:2] == ["-c"] and len(words) > 2:
                found += shell_commands(words[2])
    expected = len(_INVOCATION.findall(re.sub(r"(^|\s)#.*", "", script)))
    if len(found) != expected:
        raise CheckFailed(f"found {len(found)} clusterai command lines in a script that names clusterai "
                          f"{expected} times; write them so that they can be checked:\n{script}")
    return found


def argv_commands(argv: list[str]) -> list[list[str]]:
    """The clusterai command lines of one argv: itself, or those of an `sh -c SCRIPT`."""
    if not argv:
        return []
    if PurePosixPath(argv[0]).name in ("sh", "bash", "dash") and len(argv) >= 3 and argv[1] == "-c":
        return shell_commands(argv[2])
    if PurePosixPath(argv[0]).name == "clusterai":
        return [list(argv)]
    # "clusterai" as a word of its own that is not an option's value (pg_isready --username clusterai)
    if any(PurePosixPath(a).name == "clusterai" and (not before.startswith("-") or before == "--")
           for before, a in zip(argv, argv[1:])):
        raise CheckFailed(f"a clusterai command line this check cannot read: {argv}")
    return []


def container_commands(container: dict[str, Any]) -> list[list[str]]:
    """Every clusterai command line a Kubernetes container runs: its command + args, its lifecycle
    hooks and its exec probes."""
    found = argv_commands([*container.get("command", []), *container.get("args", [])])
    for hook in ("postStart", "preStop"):
        found += argv_commands(((container.get("lifecycle") or {}).get(hook) or {}).get("exec", {}).get("command", []))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        found += argv_commands(((container.get(probe) or {}).get("exec") or {}).get("command", []))
    return found


# Typer 0.29 carries its own copy of Click (typer._click); older ones use Click. Either way these
# are the classes the CLI raises for bad usage.
_CLICK_EXCEPTION: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


@cache
def _typer_command() -> Any:
    from clusterai.cli.main import app

    return typer.main.get_command(app)


class ParsedCommand:
    """A command line as the CLI parsed it: the subcommand path and its parameters."""

    def __init__(self, path: tuple[str, ...], params: dict[str, Any]):
        self.path, self.params = path, params

    def __repr__(self) -> str:
        return f"ParsedCommand({' '.join(self.path)}, {self.params})"


def _argparse(parser: Any, args: list[str], path: tuple[str, ...]) -> ParsedCommand:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            namespace = parser.parse_args(args)
    except SystemExit:
        message = errors.getvalue().strip().splitlines()[-1:]  # argparse's "prog: error: ..." after the usage
        raise CheckFailed(f"`clusterai {' '.join(path)}` refuses {args}: {' '.join(message)}") from None
    return ParsedCommand(path, vars(namespace))


def parse_command(argv: list[str]) -> ParsedCommand:
    """Parse a `clusterai ...` command line the way the CLI would, running nothing; raise
    CheckFailed with the CLI's own message when it would refuse it (exit 2)."""
    from clusterai.worker.cli import serve_model_parser, worker_parser

    if not argv or PurePosixPath(argv[0]).name != "clusterai":
        raise CheckFailed(f"not a clusterai command line: {argv}")
    args = list(argv[1:])
    # entry.py: `worker` and `serve-model` first are parsed by argparse before the full CLI loads
    if args[:1] == ["worker"]:
        return _argparse(worker_parser(), args[1:], ("worker",))
    if args[:1] == ["serve-model"]:
        return _argparse(serve_model_parser(), args[1:], ("serve-model",))
    command = _typer_command()
    name, path, parent = "clusterai", (), None
    params: dict[str, Any] = {}
    try:
        while True:
            ctx = command.make_context(name, args, parent=parent)
            params.update(ctx.params)
            if not hasattr(command, "resolve_command"):  # a command, not a group of them
                break
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                after = " ".join(path) or "clusterai"
                raise CheckFailed(f"`{shlex.join(argv)}`: a subcommand is missing after {after}")
            name, sub, args = command.resolve_command(ctx, rest)
            assert name is not None and sub is not None
            command, path, parent = sub, (*path, name), ctx
            if path[-1] in ("worker", "serve-model") and len(path) == 1:
                # reached after global options: Typer hands the rest to the same argparse parser
                parser = worker_parser() if name == "worker" else serve_model_parser()
                return _argparse(parser, list(args), path)
    except _CLICK_EXCEPTION as exc:
        raise CheckFailed(f"`{shlex.join(argv)}`: {exc.format_message()}") from None  # type: ignore[attr-defined]
    return ParsedCommand(path, params)


def public_api_paths() -> set[str]:
    """The REST API's routes that answer without a token (what a probe or a healthcheck may call)."""
    from clusterai.api.routes.system import PUBLIC_PATHS, router

    return {route.path for route in router.routes} & set(PUBLIC_PATHS)  # type: ignore[attr-defined]


def markdown_shell_blocks(text: str) -> list[str]:
    """The bodies of the ```bash / ```sh / ```console blocks of a Markdown file."""
    return re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, flags=re.M | re.S)
