"""`clusterai logline verify|sign`: signed, chained one-line JSON records (tamper-evident logs)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from clusterai.cli_common import EXIT_FAILED, errors_to_exit_codes, settings
from clusterai.errors import BadInput
from clusterai.logline import append, load_key, load_or_create_key, verify

logline_app = typer.Typer(help="Signed one-line JSON records: logs where any edited line shows.",
                          no_args_is_help=True)

KEY_FILE_HELP = "HMAC key file (default: logline.key_file in cluster.yaml, .clusterai/logline.key)"


def _key_path(key_file: Path | None) -> Path:
    # cluster.yaml is read only when no key file is named: a broken config does not stop a verify
    return key_file if key_file is not None else Path(settings.config().logline.key_file)


@logline_app.command("verify")
@errors_to_exit_codes
def logline_verify(
    file: Path = typer.Argument(..., help="the log to check"),
    key_file: Path | None = typer.Option(None, "--key-file", help=KEY_FILE_HELP),
) -> None:
    """Check every line; exit 1 listing each bad one (number and reason), 0 when all verify."""
    key = load_key(_key_path(key_file))  # never made here: a fresh key would fail every line
    report = verify(file, key)
    # Plain echo, not Rich: a file name or reason must not be read as markup.
    for number, reason in report.problems:
        typer.echo(f"{file}:{number}: {reason}")
    if report.problems:
        typer.echo(f"{len(report.problems)} of {report.lines} lines bad in {file}")
        raise typer.Exit(EXIT_FAILED)
    typer.echo(f"{report.ok} lines verified in {file}" + (f"; last sig {report.last_sig}" if report.last_sig else ""))


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
