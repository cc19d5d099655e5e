"""`clusterai models`: the LLM gateway's model servers and what each serves, and the model fleet
across them: `pull`, `rm`, `ps`, `load`, `unload` (an operator's token). The gateway lives in the
API server (of `clusterai up` or `clusterai scheduler`), so this always asks the API: --url, or the
one cluster.yaml describes, with the admin token `up` wrote."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from clusterai.cli.common import err, errors_to_exit_codes, out, remote_client, settings
from clusterai.errors import BadInput
from clusterai.sdk.remote import RemoteClient, read_token_file

models_app = typer.Typer(help="The LLM gateway's models: where each is and is loaded; pull, remove, load, unload.",
                         invoke_without_command=True)
BACKENDS = typer.Option(None, "--backend", "-b", help="a backend by name (repeat for more); default: the gateway "
                        "chooses")


def _local_api() -> RemoteClient:
    api = settings.config().api
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::", "") else api.host
    shown = f"[{host}]" if ":" in host else host
    token = settings.token or read_token_file(api.token_file)
    if not token:
        raise BadInput(f"no token for the API at {shown}:{api.port}: --token, CLUSTERAI_TOKEN, or the admin "
                       f"token file {api.token_file} that `clusterai up` writes")
    scheme = "https" if api.tls_cert else "http"
    return RemoteClient(f"{scheme}://{shown}:{api.port}", token, ca_cert=settings.ca_cert)


def _api() -> RemoteClient:
    return remote_client() or _local_api()


@models_app.callback()
def _default(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    if ctx.invoked_subcommand is None:
        models(as_json)


@models_app.command("list")
@errors_to_exit_codes
def models(as_json: bool = typer.Option(False, "--json")) -> None:
    """The LLM gateway's models: where each is (and is loaded), and each model server's state."""
    remote = _api()
    try:
        data = remote.models()
    finally:
        remote.close()
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(title="models")
    for column in ("model", "backends (* loaded)", "replicas", "requests", "cold loads", "hit rate", "tokens/s"):
        table.add_column(column)
    for m in data["models"]:
        table.add_row(m["model"], ", ".join(b["name"] + ("*" if b["loaded"] else "") for b in m["backends"]),
                      _shown(m.get("replicas")), str(m.get("requests", 0)), str(m.get("cold_loads", 0)),
                      _percent(m.get("cache_hit_rate")), _shown(m.get("tokens_per_second")))
    out.print(table)
    servers = Table(title=f"model servers ({data['queued']} requests waiting)")
    for column in ("backend", "kind", "url", "reachable", "breaker", "in flight", "requests", "errors"):
        servers.add_column(column)
    for b in data["backends"]:
        servers.add_row(b["name"], b["kind"], b["url"], "yes" if b["reachable"] else "no", b["breaker"],
                        f"{b['in_flight']}/{b['max_concurrency']}", str(b["requests"]), str(b["errors"]))
    out.print(servers)
    if not data["backends"]:
        err.print("no model servers: list them under gateway.backends in cluster.yaml, or start workers with "
                  "--serve-model", highlight=False)


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


@models_app.command("pull")
@errors_to_exit_codes
def pull(model: str = typer.Argument(..., help="e.g. llama3.2 or qwen3:8b"),
         backend: list[str] | None = BACKENDS,
         replicas: int | None = typer.Option(None, "--replicas", "-n", min=1,
                                             help="onto this many backends, those with the most free memory")) -> None:
    """Pull a model onto the gateway's Ollama servers: every one by default (or gateway.models' replicas)."""
    remote = _api()
    seen: dict[str, str] = {}
    last: dict[str, Any] = {}
    try:
        for line in remote.pull_model(model, backends=backend, replicas=replicas):
            last = line
            name, status = line.get("backend"), line.get("status")
            if name and status and seen.get(name) != status:  # each step once, not every byte count
                seen[name] = status
                err.print(f"{escape(name)}: {escape(status)}", highlight=False)
    finally:
        remote.close()
    for name, outcome in sorted(last.get("backends", {}).items()):
        out.print(f"{escape(name)}: {escape(outcome)}", highlight=False)
    if "error" in last:
        err.print(f"[red]pull failed:[/] {escape(str(last['error']))}", highlight=False)
        raise typer.Exit(1)


def _report(result: dict[str, Any], done_key: str, verb: str) -> None:
    done = result.get(done_key, [])
    out.print(f"{escape(result.get('model') or result.get('destination') or '')}: {verb} on "
              f"{escape(', '.join(done)) if done else 'no backend'}", highlight=False)
    for name, error in sorted(result.get("failed", {}).items()):
        err.print(f"[red]{escape(name)}:[/] {escape(error)}", highlight=False)
    if result.get("failed"):
        raise typer.Exit(1)


@models_app.command("rm")
@errors_to_exit_codes
def remove(model: str = typer.Argument(...), backend: list[str] | None = BACKENDS) -> None:
    """Delete a model from every Ollama server that has it (or those named)."""
    with _api() as remote:
        _report(remote.delete_model(model, backends=backend), "deleted", "deleted")


@models_app.command("ps")
@errors_to_exit_codes
def ps(as_json: bool = typer.Option(False, "--json")) -> None:
    """The models loaded now: on which backends, until when."""
    with _api() as remote:
        loaded = remote.loaded_models()
    if as_json:
        out.print_json(json.dumps(loaded))
        return
    table = Table(title="loaded models")
    for column in ("model", "backend", "until", "size"):
        table.add_column(column)
    for m in loaded:
        for b in m["backends"]:
            until = "kept" if b["expires_at"].startswith("9999") else b["expires_at"]
            table.add_row(m["model"], b["name"], until + (" (expiring)" if b.get("expiring") else ""),
                          _size(b.get("size", 0)))
    out.print(table)
    if not loaded:
        err.print("no model is loaded on any backend", highlight=False)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


@models_app.command("load")
@errors_to_exit_codes
def load(model: str = typer.Argument(...), backend: list[str] | None = BACKENDS,
         replicas: int | None = typer.Option(None, "--replicas", "-n", min=1,
                                             help="on this many of the backends that have it"),
         keep_alive: str | None = typer.Option(None, "--keep-alive", help="'30m', seconds, -1 for good "
                                               "(default: gateway.models' pin, else the backend's own)")) -> None:
    """Load a model into memory on backends that have it, ahead of its requests."""
    with _api() as remote:
        _report(remote.load_model(model, backends=backend, replicas=replicas, keep_alive=keep_alive), "loaded",
                "loaded")


@models_app.command("unload")
@errors_to_exit_codes
def unload(model: str = typer.Argument(...), backend: list[str] | None = BACKENDS) -> None:
    """Unload a model from the backends holding it (or those named): Ollama's keep_alive 0."""
    with _api() as remote:
        _report(remote.unload_model(model, backends=backend), "unloaded", "unloaded")
