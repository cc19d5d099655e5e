"""`clusterai models`: the LLM gateway's model servers and what each serves. The gateway lives in
the API server (of `clusterai up` or `clusterai scheduler`), so this always asks the API: --url, or
the one cluster.yaml describes, with the admin token `up` wrote."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from clusterai.cli.common import err, errors_to_exit_codes, out, remote_client, settings
from clusterai.errors import BadInput
from clusterai.sdk.remote import RemoteClient, read_token_file


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


@errors_to_exit_codes
def models(as_json: bool = typer.Option(False, "--json")) -> None:
    """The LLM gateway's models: where each is (and is loaded), and each model server's state."""
    remote = remote_client() or _local_api()
    try:
        data = remote.models()
    finally:
        remote.close()
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(title="models")
    for column in ("model", "backends (* loaded)"):
        table.add_column(column)
    for m in data["models"]:
        table.add_row(m["model"], ", ".join(b["name"] + ("*" if b["loaded"] else "") for b in m["backends"]))
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
