"""What every `clusterai` command shares: consoles, settings from the global options, the client,
and the translation of errors into exit codes (bad input exits 2)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from clusterai.config import ClusterConfig, load_config
from clusterai.core.pairs import parse_pairs  # noqa: F401 - the commands import it from here
from clusterai.core.tasks import import_task_modules
from clusterai.errors import BadInput, ClusterAIError
from clusterai.sdk.local import Client
from clusterai.sdk.remote import RemoteClient, read_token_file
from clusterai.store.open import open_store

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

def errors_to_exit_codes(fn: F) -> F:
    """A command's clusterai errors become a message and the exit code their class carries (errors.py)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClusterAIError as exc:
            err.print(f"[red]{exc.label}:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


class _Settings:
    config_path: Path | None = None
    store: str | None = None
    tasks: list[str] = []
    url: str | None = None
    token: str | None = None
    ca_cert: str | None = None

    def config(self, **overrides: Any) -> ClusterConfig:
        conf = load_config(self.config_path)
        extra: dict[str, Any] = {"store": self.store}
        if self.tasks:
            extra["tasks"] = [*conf.tasks, *self.tasks]
        return conf.with_overrides(**extra, **overrides)


settings = _Settings()


def remote_client() -> RemoteClient | None:
    """The API client when --url (or CLUSTERAI_URL) is given, else None."""
    if not settings.url:
        return None
    token = settings.token or read_token_file(settings.config().api.token_file)
    if not token:
        raise BadInput("--url needs a token: --token, CLUSTERAI_TOKEN, or the admin token file that "
                       "`clusterai up` wrote")
    return RemoteClient(settings.url, token, ca_cert=settings.ca_cert)


def client() -> Client | RemoteClient:
    """Over the REST API when --url (or CLUSTERAI_URL) is given, else straight on the store."""
    remote = remote_client()
    if remote is not None:
        return remote
    conf = settings.config()
    import_task_modules(conf.tasks)
    return Client(open_store(conf.store), conf, runtime=None)


def local_store_only(what: str) -> None:
    if settings.url:
        raise BadInput(f"{what} works on the local store; drop --url")
