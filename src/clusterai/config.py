"""cluster.yaml: a typed schema, and errors that name the key, the bad value and what is allowed."""

from __future__ import annotations

import os
import shutil
import typing
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from clusterai.core.keep_alive import keep_alive_seconds
from clusterai.core.media_policy import SourcePolicy
from clusterai.core.pipelines import Pipeline
from clusterai.errors import BadInput, ConfigError
from clusterai.placement.strategies import BUILT_IN, DEFAULT_HYBRID
from clusterai.sweeps import parse_spec

DEFAULT_CONFIG_FILE = "cluster.yaml"
DEFAULT_STORE = "sqlite:///.clusterai/clusterai.db"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkerProfile(_Section):
    """What one local worker offers, beyond its threads and memory."""

    labels: dict[str, str] = Field(default_factory=dict, description="region, zone, device, arch, any k=v")
    resources: dict[str, float] = Field(default_factory=dict, description="e.g. GPU: 1")
    models: list[str] = Field(default_factory=list, description="models already loaded there")
    datasets: list[str] = Field(default_factory=list)
    accepts: list[str] = Field(default_factory=list, description="queues or tasks it takes; empty = all")
    slots: int | None = Field(None, ge=1, le=1024, description="batches at once; default its threads")


class ClusterSection(_Section):
    scheduler: str | None = Field(
        None, description="tcp://host:port of an existing Dask scheduler; unset = embedded"
    )
    workers: int = Field(2, ge=1, le=512, description="local worker processes (embedded)")
    threads_per_worker: int = Field(1, ge=1, le=256)
    memory_limit: str = Field("auto", description="per local worker, e.g. 2GiB or auto")
    host: str = "127.0.0.1"
    dashboard: bool = Field(True, description="serve Dask's dashboard (embedded)")
    dashboard_address: str = "127.0.0.1:8787"
    death_timeout: float = Field(
        30.0, gt=0, description="a worker that cannot reach its scheduler this long exits"
    )
    worker_profiles: list[WorkerProfile] = Field(
        default_factory=list, description="per local worker, in order: labels, resources, models"
    )

    @pydantic.model_validator(mode="after")
    def _profiles_fit(self) -> ClusterSection:
        if len(self.worker_profiles) > self.workers:
            raise ValueError(
                f"worker_profiles has {len(self.worker_profiles)} entries for {self.workers} workers"
            )
        return self


class QueueSection(_Section):
    retries: int | None = Field(None, ge=0, le=1000)
    backoff: float | None = Field(None, ge=0)
    max_backoff: float | None = Field(None, ge=0)


class CoordinatorSection(_Section):
    lease_seconds: float = Field(
        30.0, gt=0.2, description="a worker that does not answer pings this long loses its jobs"
    )
    poison_threshold: int = Field(
        3, ge=1, description="attempts in a row that lose their worker before a job goes dead"
    )
    poll_interval: float = Field(0.01, gt=0, le=5, description="store poll when idle, seconds")
    batch_target_seconds: float = Field(
        0.02, gt=0, le=10, description="how long one batch of short jobs should take on a worker"
    )
    max_batch: int = Field(500, ge=1, le=10000)
    hard_timeout_grace: float = Field(
        10.0, ge=0, description="past a job's timeout plus this, its worker is restarted"
    )
    events_retention: float = Field(
        3600.0, gt=0, description="seconds of job and worker events kept for live views to resume from"
    )
    events_kept: int = Field(1_000_000, ge=1000, description="at most this many events are kept")

class BreakerSection(_Section):
    failures: int = Field(5, ge=1, description="failures in a row that open a worker's breaker")
    cooldown: float = Field(30.0, gt=0, description="seconds out of rotation before a trial job")


class PlacementSection(_Section):
    strategy: str = Field("least_loaded", description="default for every queue (see placement/strategies.BUILT_IN)")
    queues: dict[str, str] = Field(default_factory=dict, description="strategy per queue")
    hybrid: list[str] = Field(
        default_factory=lambda: list(DEFAULT_HYBRID),
        description="filters then scorers, in order",
    )
    reserve: int | None = Field(
        None, ge=0, description="free rooms held back for high and critical jobs; unset: 1 for the priority "
        "strategy, 0 in hybrid chains (an idle reserve costs a small pool a large share of its capacity)")
    prefetch: bool = Field(True, description="with a deep queue, each worker holds one long job (of a task whose "
                           "duration is known) waiting behind what it runs, so that it starts without a round trip; "
                           "a job of higher priority that arrives later may wait behind that one job. false: "
                           "strict priority order")
    breaker: BreakerSection = BreakerSection()

    @pydantic.field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        return _check_strategy(name)

    @pydantic.field_validator("queues")
    @classmethod
    def _known_strategies(cls, queues: dict[str, str]) -> dict[str, str]:
        return {queue: _check_strategy(name) for queue, name in queues.items()}


def _check_strategy(name: str) -> str:
    if name in BUILT_IN or "." in name or ":" in name:
        return name
    raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(BUILT_IN)}, or package.module:Class")


class ApiSection(_Section):
    enabled: bool = Field(True, description="serve the REST API (and /metrics) from `clusterai up`")
    host: str = Field("127.0.0.1", description="bind address; anything but loopback should use TLS")
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    token_file: str = Field(".clusterai/admin.token", description="where `up` writes the first admin token")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="larger request bodies get 413")
    rate_limit: float = Field(1000.0, ge=0, description="requests per second per token; 0 = no limit")
    rate_burst: int = Field(2000, ge=1, description="requests a token may send at once above the rate")
    max_streams_per_token: int = Field(4, ge=1, le=10_000, description="event streams (/api/v1/events) a token "
                                       "may hold open at once; more get 429")
    stream_recheck: float = Field(2.0, gt=0, le=300, description="seconds between checks of an open event "
                                  "stream's token: a revoked or expired token's stream ends")
    # ten of the largest batches: far above what a person or a pipeline keeps waiting (the HTTP submission
    # benchmark leaves a few hundred thousand queued), and it stops a runaway token at about a GB of store
    max_queued_per_token: int = Field(1_000_000, ge=0, description="unfinished jobs (pending, queued, running) "
                                      "a token's name may own; a submission past it gets 429; 0 = no limit")
    auth_failures: int = Field(10, ge=0, description="failed authentications from one client address within "
                               "auth_failure_window before that address gets 429 for every token; 0 = off")
    auth_failure_window: float = Field(60.0, gt=0, le=86400, description="seconds over which auth_failures "
                                       "count, and how long a throttled address waits")
    tls_cert: str | None = Field(None, description="PEM certificate: serve HTTPS")
    tls_key: str | None = Field(None, description="PEM private key of tls_cert")

    @pydantic.model_validator(mode="after")
    def _tls_pair(self) -> ApiSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self


class BackendSection(_Section):
    """A model server the gateway sends live requests to."""

    name: str = Field(min_length=1, max_length=100)
    url: str = Field(description="http(s)://host:port of the server (no path)")
    kind: typing.Literal["ollama", "openai"] = Field(
        "ollama", description="ollama: speaks Ollama's API (and OpenAI's under /v1, as Ollama and clusterai's "
        "model servers do); openai: an OpenAI-compatible server only (vLLM, llama.cpp, LM Studio)")
    token_env: str | None = Field(None, description="environment variable holding the bearer token to send")
    max_concurrency: int = Field(4, ge=1, le=10_000, description="requests in flight at once on this backend")
    memory: int | None = Field(None, ge=1, description="bytes its models may take (GPU or unified memory); "
                               "with it the gateway knows which models fit beside the loaded ones. A number of "
                               "bytes or a size such as 24GiB")

    @pydantic.field_validator("memory", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @pydantic.field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must start with http:// or https://")
        return value.rstrip("/")


HEAD_BACKEND = "head"  # the backend of the models the head serves itself (gateway.serve)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes from '24GiB', '512MB', '1.5 GB' or a plain number."""
    import re

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = found.group(2).lower() if found else ""
    if found is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size such as 24GiB, 512MB or a number of bytes")
    return int(float(found.group(1)) * _SIZE_UNITS[unit])


def _valid_keep_alive(value: str | float | None) -> str | float | None:
    if value is not None:
        try:
            keep_alive_seconds(value)
        except BadInput as exc:
            raise ValueError(str(exc)) from None
    return value


KeepAlive = typing.Annotated[str | float | None, pydantic.AfterValidator(_valid_keep_alive)]  # Ollama's forms


class ModelPlacementSection(_Section):
    """Where the gateway keeps one model: on how many backends, loaded for how long."""

    replicas: int = Field(1, ge=0, le=1000, description="backends that keep it (pulled there when missing, on "
                          "the backends with the most free memory)")
    keep_alive: KeepAlive = Field(None, description="how long backends keep it loaded, pinned: it "
                                           "overrides what clients send (Ollama's form: '30m', seconds, a negative "
                                           "number for good, 0 to unload after each request)")
    preload: bool = Field(False, description="load it when a backend joins, and keep `replicas` of it loaded")
    pull: bool = Field(True, description="pull it onto backends that lack it until `replicas` have it (backends "
                       "that cannot pull, such as clusterai's model servers, are skipped)")

    @property
    def keep_alive_seconds(self) -> float | None:
        return None if self.keep_alive is None else keep_alive_seconds(self.keep_alive)


class GatewaySection(_Section):
    """Live LLM and embedding requests (Ollama and OpenAI APIs on the API server), balanced across backends."""

    backends: list[BackendSection] = Field(default_factory=list)
    queue_size: int = Field(64, ge=0, le=100_000, description="requests waiting for a free backend; then 503")
    queue_timeout: float = Field(30.0, gt=0, description="seconds a request may wait for a backend")
    request_timeout: float = Field(300.0, gt=0, description="seconds without a byte from the backend")
    health_interval: float = Field(5.0, gt=0, description="seconds between model lists (/api/tags) per backend")
    attempts: int = Field(2, ge=1, le=10, description="backends tried before the first byte reaches the client")
    worker_concurrency: int = Field(2, ge=1, le=10_000, description="requests at once on a worker's model server")
    models: dict[str, ModelPlacementSection] = Field(default_factory=dict, description="per model: replicas, "
                                                     "a pinned keep_alive, preload")
    cold_load_wait: float = Field(5.0, ge=0, le=3600, description="seconds a request waits for a busy backend that "
                                  "has its model loaded before it takes a free one that must load it first")
    open_inference: bool = Field(False, description="inference without a token from loopback and open_networks "
                                 "(a trusted network only); the API must then listen on loopback or one of them")
    open_networks: list[str] = Field(default_factory=list, description="CIDRs whose clients need no token, "
                                     "e.g. 10.0.0.0/24 (with open_inference)")
    serve: list[str] = Field(default_factory=list, description="models the head serves itself, as NAME=PATH or "
                             "NAME=pkg:MODULE (extra clusterai[llm]); a backend named 'head' on loopback")
    serve_device: str = Field("auto", description="where `serve` models run: auto, cpu, cuda, cuda:N, mps")
    serve_keep_alive: KeepAlive = Field(None, description="how long a `serve` model stays loaded after a "
                                                 "request that names no keep_alive (Ollama's form); default: for good")
    serve_max_batch: int = Field(8, ge=1, le=1024, description="concurrent requests one generation round of a "
                                 "`serve` model takes (dynamic batching)")

    @pydantic.field_validator("serve")
    @classmethod
    def _specs(cls, value: list[str]) -> list[str]:
        for spec in value:
            name, sep, where = spec.partition("=")
            if not sep or not name.strip() or not where.strip():
                raise ValueError(f"{spec!r}: expected NAME=PATH or NAME=pkg:MODULE")
        return value

    @pydantic.field_validator("open_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        import ipaddress

        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a network such as 10.0.0.0/24") from None
        return value
    breaker: BreakerSection = BreakerSection(failures=3, cooldown=10.0)

    @pydantic.model_validator(mode="after")
    def _unique_names(self) -> GatewaySection:
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique: {names}")
        if self.serve and HEAD_BACKEND in names:
            raise ValueError(f"the backend name {HEAD_BACKEND!r} is taken by the models of gateway.serve")
        return self


class AlertsSection(_Section):
    """When the dashboard and /api/v1/cluster/status raise an alert (the seed documents' defaults)."""

    cpu_percent: float = Field(80.0, gt=0, le=100, description="a worker's CPU above this")
    memory_percent: float = Field(85.0, gt=0, le=100, description="a worker's memory above this")
    queue_size: int = Field(100, ge=1, description="queued + pending jobs above this")
    latency_ms: float = Field(500.0, gt=0, description="p95 submit-to-finish latency above this")
    worker_down: bool = Field(True, description="a worker that left or stopped answering")


class DefaultsSection(_Section):
    retries: int = Field(3, ge=0, le=1000)
    backoff: float = Field(1.0, ge=0)
    max_backoff: float = Field(300.0, ge=0)
    jitter: float = Field(0.1, ge=0, lt=1)
    timeout: float | None = Field(None, gt=0)


class LoglineSection(_Section):
    """Signed log lines (clusterai.core.logline): where the HMAC key and the logs live."""

    key_file: str = Field(".clusterai/logline.key", description="HMAC-SHA256 key; made (32 random bytes, "
                          "mode 0600) by the first signing, never a default key")
    dir: str = Field(".clusterai/loglines", min_length=1, description="the folder video.logline writes in "
                     "(relative: to each worker's working directory); a task names a log, NAME.log in it")


class MediaSection(_Section):
    """What video.scan and camera.count may open: checked on the worker, where the source is opened."""

    sources: list[str] = Field(default_factory=lambda: [".clusterai/media"], description="local folders "
                               "(relative: to each worker's working directory) and URL patterns "
                               "scheme://HOST-or-IP-or-CIDR[:port] (http, https, rtsp, rtsps, rtmp), e.g. "
                               "rtsp://10.0.0.0/8 or http://cam1.local:8080; default: the cluster's own folder")

    @pydantic.field_validator("sources")
    @classmethod
    def _valid_entries(cls, value: list[str]) -> list[str]:
        SourcePolicy.parse(value)  # ValueError naming the entry
        return value


class ClusterConfig(_Section):
    store: str = DEFAULT_STORE
    tasks: list[str] = Field(default_factory=list, description="task modules by dotted path")
    cluster: ClusterSection = ClusterSection()
    coordinator: CoordinatorSection = CoordinatorSection()
    placement: PlacementSection = PlacementSection()
    api: ApiSection = ApiSection()
    alerts: AlertsSection = AlertsSection()
    defaults: DefaultsSection = DefaultsSection()
    logline: LoglineSection = LoglineSection()
    media: MediaSection = MediaSection()
    gateway: GatewaySection = GatewaySection()
    queues: dict[str, QueueSection] = Field(default_factory=dict)
    pipelines: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named pipelines: stages of tasks (see clusterai.core.pipelines)")
    sweeps: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named sweeps (`clusterai sweep run NAME`): objective, space, trials, ... "
                                          "(see clusterai.sweeps.spec)")
    autoscale: dict[str, Any] | None = Field(
        None, description="the autoscaler: {min, max} or profiles, policies, provider (see clusterai.autoscale.config);"
                          " checked when the cluster starts and by `clusterai config validate`")

    @pydantic.field_validator("pipelines")
    @classmethod
    def _pipelines_are_valid(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, data in value.items():
            try:
                Pipeline.from_dict(name, data)
            except BadInput as exc:
                raise ValueError(str(exc)) from None
        return value

    @pydantic.field_validator("sweeps")
    @classmethod
    def _sweeps_are_valid(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # the objective is resolved (is it a task here?) when the sweep starts
        for name, data in value.items():
            try:
                parse_spec({"name": name, **data} if isinstance(data, dict) else data)
            except BadInput as exc:
                raise ValueError(f"sweep {name}: {exc}") from None
        return value

    @pydantic.model_validator(mode="after")
    def _open_inference_only_on_trusted_networks(self) -> ClusterConfig:
        import ipaddress

        if not self.gateway.open_inference:
            return self
        try:
            host = ipaddress.ip_address("127.0.0.1" if self.api.host == "localhost" else self.api.host)
        except ValueError:
            raise ValueError(f"gateway.open_inference needs api.host as an address, got {self.api.host!r}") from None
        inside = any(host in ipaddress.ip_network(n, strict=False) for n in self.gateway.open_networks)
        if not (host.is_loopback or inside):
            raise ValueError(f"gateway.open_inference is refused with api.host {self.api.host}: listen on loopback "
                             "or on an address inside gateway.open_networks")
        return self

    def with_overrides(self, **changes: Any) -> ClusterConfig:
        """A copy with top-level or dotted (cluster.workers) keys replaced, validated again."""
        data = self.model_dump()
        for key, value in changes.items():
            if value is None:
                continue
            target = data
            *parents, leaf = key.split(".")
            try:
                for part in parents:
                    target = target[part]
                target[leaf] = value
            except (KeyError, TypeError):
                raise ConfigError(f"command line: {key}: no such configuration key") from None
        return parse_config(data, source="command line")


def _explain(exc: pydantic.ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{shown}; allowed keys here: {_allowed(err['loc'])}")
        else:
            lines.append(f"  {key}: {err['msg']}{shown}")
    return "\n".join(lines)


def _allowed(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = ClusterConfig
    parts = list(loc[:-1])
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        annotation = field.annotation if field else None
        if typing.get_origin(annotation) is dict:
            # a named section (queues.NAME.key): skip the name, look inside the value type
            annotation = typing.get_args(annotation)[1]
            if parts:
                parts.pop(0)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return "see the documentation"
    return ", ".join(model.model_fields)


def parse_config(data: Any, *, source: str = "cluster.yaml") -> ClusterConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return ClusterConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None


def load_config(path: str | Path | None = None) -> ClusterConfig:
    """Read cluster.yaml; with no path, ./cluster.yaml if present (or $CLUSTERAI_CONFIG), else defaults."""
    if path is None:
        path = os.environ.get("CLUSTERAI_CONFIG") or (
            DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).exists() else None
        )
        if path is None:
            return ClusterConfig()
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: no such configuration file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot be read as UTF-8 text: {exc}") from None
    return parse_config(data, source=str(file))


def save_config(config: ClusterConfig, path: str | Path) -> Path | None:
    """Write cluster.yaml, keeping the previous file as cluster.yaml.bak; returns the backup."""
    file = Path(path)
    backup = None
    if file.exists():
        backup = file.with_suffix(file.suffix + ".bak")
        shutil.copy2(file, backup)
    tmp = file.with_suffix(file.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    tmp.replace(file)
    return backup
