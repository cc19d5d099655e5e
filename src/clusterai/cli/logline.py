"""`clusterai logline verify|sign`: signed, chained one-line JSON records (tamper-evident logs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from clusterai.cli.common import errors_to_exit_codes, settings
from clusterai.core.logline import append, canonical, check_lines, check_name, load_key, load_or_create_key, log_path
from clusterai.errors import EXIT_FAILED, BadInput

logline_app = typer.Typer(help="Signed one-line JSON records: logs where any edited line shows.",
                          no_args_is_help=True)

KEY_FILE_HELP = "HMAC key file (default: logline.key_file in cluster.yaml, .clusterai/logline.key)"


def _key_path(key_file: Path | None) -> Path:
    # cluster.yaml is read only when no key file is named: a broken config does not stop a verify
    return key_file if key_file is not None else Path(settings.config().logline.key_file)


def _log_file(log: str) -> Path:
    """A path as given when it exists; else a log name (what video.logline writes to) in logline.dir."""
    path = Path(log)
    if path.exists():
        return path
    try:
        name = check_name(log)
    except BadInput:
        return path  # neither: verify says there is no such file
    return log_path(name, settings.config().logline.dir)


def _stands_for(record: dict[str, Any]) -> str:
    """Who asked for a line and what it is about (video.logline's fields); other records as they are."""
    if "job" not in record:
        return "ok: " + canonical(record)
    fields = [("job", record.get("job")), ("owner", record.get("owner")), ("run", record.get("run")),
              ("source", record.get("source")), ("source sha256", record.get("source_digest")),
              ("summary sha256", record.get("summary"))]
    return "ok: " + ", ".join(f"{k} {_shown(v)}" for k, v in fields)


def _shown(value: Any) -> str:
    # a source is whatever its submitter wrote: no control character reaches the terminal
    if value is None:
        return "-"
    return value if isinstance(value, str) and value.isprintable() else canonical(value)


@logline_app.command("verify")
@errors_to_exit_codes
def logline_verify(
    log: str = typer.Argument(..., help="the log: a file, or a log name (NAME.log in logline.dir)"),
    key_file: Path | None = typer.Option(None, "--key-file", help=KEY_FILE_HELP),
) -> None:
    """Check every line, and show what each good one stands for (job, owner, pipeline run, source and
    its SHA-256); exit 1 listing each bad one (number and reason), 0 when all verify."""
    file = _log_file(log)
    key = load_key(_key_path(key_file))  # never made here: a fresh key would fail every line
    lines = bad = 0
    last_sig = None
    # Plain echo, not Rich: a file name, a reason or a record must not be read as markup.
    for line in check_lines(file, key):
        lines, last_sig = line.number, line.sig
        if line.problem is not None:
            bad += 1
            typer.echo(f"{file}:{line.number}: {line.problem}")
        else:
            assert line.record is not None
            typer.echo(f"{file}:{line.number}: {_stands_for(line.record)}")
    if bad:
        typer.echo(f"{bad} of {lines} lines bad in {file}")
        raise typer.Exit(EXIT_FAILED)
    typer.echo(f"{lines} lines verified in {file}" + (f"; last sig {last_sig}" if last_sig else ""))


@logline_app.command("sign")
@errors_to_exit_codes
def logline_sign(
    file: Path = typer.Argument(..., help="the log to append to (made if missing)"),
    record: str = typer.Option(..., "--json", help="the record: a JSON object, or @file.json"),
    key_file: Path | None = typer.Option(None, "--key-file", help=KEY_FILE_HELP + "; made if missing"),
) -> None:
    """Append one signed record, chained to the file's last line; prints the line written."""
    try:
        text = Path(record[1:]).read_text(encoding="utf-8") if record.startswith("@") else record
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"--json {record}: cannot read it: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"--json: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput(f"--json: a JSON object is needed, got {type(data).__name__}")
    typer.echo(append(file, data, load_or_create_key(_key_path(key_file))))
