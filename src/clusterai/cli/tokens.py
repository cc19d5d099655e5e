"""`clusterai token create|list|revoke` and `clusterai audit`: on the local store, or over the API
with --url and an admin token."""

from __future__ import annotations

import json
import time

import typer
from rich.table import Table

from clusterai.cli.common import errors_to_exit_codes, out, remote_client, settings
from clusterai.errors import BadInput
from clusterai.service.access import ROLES, new_token
from clusterai.store.open import open_store
from clusterai.store.protocol import JobStore

token_app = typer.Typer(help="API tokens: create (shown once), list, revoke.", no_args_is_help=True)


def _store() -> JobStore:
    return open_store(settings.config().store)


def _when(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(value)) if value else "-"


def parse_duration(text: str, what: str) -> float:
    """"90", "90s", "30m", "1h", "7d" -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise BadInput(f"{what}: expected seconds or a duration such as 30m, 1h, 7d; got {text!r}") from None
    if not seconds > 0:
        raise BadInput(f"{what} must be greater than 0, got {text!r}")
    return seconds


@token_app.command("create")
@errors_to_exit_codes
def token_create(
    name: str = typer.Argument(..., help="who or what uses it, e.g. ci-pipeline"),
    role: str = typer.Option(..., "--role", help=f"one of: {', '.join(ROLES)}"),
    expires_in: str | None = typer.Option(None, "--expires-in", help="until it expires: seconds, or 30m, 1h, 7d"),
    uses: int | None = typer.Option(None, "--uses", min=1, max=10_000,
                                    help="a join token (role worker) good for this many `clusterai join`s"),
) -> None:
    """Create a token and print it: this is the only time it is shown."""
    seconds = parse_duration(expires_in, "--expires-in") if expires_in is not None else None
    remote = remote_client()
    if remote is not None:
        made = remote.create_token(name, role, seconds, uses=uses)
        text, token_id = made["token"], made["id"]
    else:
        text, record = new_token(name, role, created_by="cli", expires_in=seconds, uses=uses)
        _store().add_token(record)
        token_id = record.id
    typer.echo(text)
    typer.echo(f"token {token_id} ({name}, {role}) created; store it now, it cannot be shown again", err=True)


@token_app.command("list")
@errors_to_exit_codes
def token_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every token: id, name, role, created, expires, revoked (never the secret)."""
    remote = remote_client()
    tokens = remote.list_tokens() if remote else [t.to_dict() for t in _store().list_tokens()]
    if as_json:
        out.print_json(json.dumps(tokens))
        return
    table = Table(title=f"{len(tokens)} tokens")
    for column in ("id", "name", "role", "created", "by", "expires", "revoked"):
        table.add_column(column)
    for t in tokens:
        table.add_row(t["id"], t["name"], t["role"], _when(t["created_at"]), t["created_by"] or "-",
                      _when(t["expires_at"]), _when(t["revoked_at"]))
    out.print(table)


@token_app.command("revoke")
@errors_to_exit_codes
def token_revoke(token_id: str = typer.Argument(..., help="the token's id (see token list)")) -> None:
    """Revoke a token: the API refuses it from now on."""
    remote = remote_client()
    if remote is not None:
        remote.revoke_token(token_id)
    else:
        _store().revoke_token(token_id, time.time())
    out.print(f"token {token_id} revoked")


@errors_to_exit_codes
def audit(limit: int = typer.Option(50, "--limit", min=1, max=1000), actor: str | None = typer.Option(None, "--actor"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """The audit log: every mutating API call, newest first."""
    remote = remote_client()
    entries = remote.audit(limit, actor) if remote else _store().list_audit(actor=actor, limit=limit)
    if as_json:
        out.print_json(json.dumps(entries))
        return
    table = Table(title="audit log")
    for column in ("when", "who", "role", "what", "target", "status", "detail"):
        table.add_column(column)
    for e in entries:
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])), e["actor"], e["role"],
                      e["action"], e["target"] or "", str(e["status"]), e["detail"] or "")
    out.print(table)
