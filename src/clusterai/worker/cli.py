"""`clusterai worker`: light (Dask, psutil and the standard library only), so it parses its options
with argparse. The head's `clusterai scheduler` is in cli/head.py."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clusterai.core.net import is_loopback
from clusterai.core.pairs import parse_pairs
from clusterai.errors import (
    EXIT_AUTH,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    BadInput,
    ClusterAIError,
    ConfigError,
)
from clusterai.worker.enroll import TOKEN_ENV


def _fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def _security(tls_dir: Path | None, node: str) -> object | None:
    if tls_dir is None:
        return None
    from clusterai.worker.tls import node_security

    return node_security(tls_dir, node)


def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clusterai worker",
        description="Join a head node as a worker (a Dask worker under a nanny, restarted when it dies).")
    p.add_argument("address", help="the head's Dask address, e.g. tls://head:8786; several, comma-separated, "
                   "for a head and its standbys")
    p.add_argument("--token", "-t", default=os.environ.get(TOKEN_ENV),
                   help=f"enrollment token (clusterai token create NAME --role worker); or ${TOKEN_ENV}")
    p.add_argument("--token-file", type=Path, help="read the enrollment token from a file")
    p.add_argument("--name", help="worker name (default: host name and pid)")
    p.add_argument("--label", "-l", action="append", default=[], help="k=v label for placement (repeatable)")
    p.add_argument("--resources", "-r", action="append", default=[], help="NAME=amount, e.g. GPU=1 (repeatable)")
    p.add_argument("--nthreads", type=_bounded_int(1, 1024), default=1, help="jobs run at once")
    p.add_argument("--memory-limit", default="auto", help="e.g. 4GiB, or auto")
    p.add_argument("--death-timeout", type=_bounded_float(1.0), default=60.0,
                   help="seconds to look for a head before giving up (at start and after losing one)")
    p.add_argument("--max-restarts", type=_bounded_int(0, 10_000), default=5,
                   help="worker process restarts allowed in 10 minutes before the command gives up")
    p.add_argument("--host", help="address to listen on (default: the one that routes to the head)")
    p.add_argument("--tls-dir", type=Path, help="folder with ca.pem and this node's certificate "
                   "(clusterai certs create)")
    p.add_argument("--serve-model", action="append", default=[], metavar="NAME=SPEC",
                   help="serve a model to the cluster's gateway (Ollama and OpenAI APIs; extra clusterai[llm]): "
                        "NAME=PATH of a model folder, or NAME=pkg:MODULE (repeatable)")
    p.add_argument("--serve-host", help="address the model server listens on (default: the worker's)")
    p.add_argument("--serve-port", type=_bounded_int(0, 65535), default=0, help="its port (default: any free one)")
    p.add_argument("--serve-device", default="auto", metavar="DEVICE",
                   help="where served models run: auto (the GPU when torch sees one), cpu, cuda, cuda:N, mps")
    p.add_argument("--serve-keep-alive", type=_keep_alive, default=None, metavar="DURATION",
                   help=f"how long a served model stays loaded after a request that gives no keep_alive: "
                        f"{KEEP_ALIVE_FORMS} (default: forever)")
    p.add_argument("--serve-max-batch", type=_bounded_int(1, 256), default=8, metavar="N",
                   help="concurrent generation requests run together as one batch, at most (default: 8)")
    p.add_argument("--tls-node", default="worker", help="which certificate in --tls-dir: NAME.pem/NAME.key")
    p.add_argument("--install-service", action="store_true", help="write a systemd unit (termux-services entry "
                   "under Termux) that runs this worker command at boot and restarts it on failure, then exit")
    p.add_argument("--uninstall-service", action="store_true", help="remove that service file, then exit")
    p.add_argument("--service-scope", choices=("user", "system"), default="user",
                   help="a user unit (default) or a system one (needs --service-user)")
    p.add_argument("--service-user", help="the account a system unit runs the worker as")
    p.add_argument("--service-dir", type=Path, help="write the service file here instead")
    return p


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


KEEP_ALIVE_FORMS = "a duration like 5m, 30s or 1h30m, seconds, 0 to unload after each request, or forever"


def _keep_alive(text: str) -> float | None:
    """A keep-alive option: seconds, or None for forever."""
    from clusterai.core.keep_alive import FOREVER, keep_alive_seconds  # the standard library only

    if text.strip().lower() == "forever":
        return None
    try:
        seconds = keep_alive_seconds(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return None if seconds == FOREVER else seconds


def _bounded_float(low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not value >= low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value

    return parse


def worker_main(argv: list[str]) -> int:
    """`clusterai worker`: argparse rather than Typer, which needs pydantic (not on a light worker)."""
    from clusterai.worker.node import (
        EnrollmentRefused,
        HeadUnreachable,
        WorkerCrashing,
        WorkerOptions,
        default_name,
        run_worker,
    )

    args = worker_parser().parse_args(argv)  # bad usage: argparse exits 2 with the message
    if args.install_service or args.uninstall_service:
        return _service(args, argv)
    if any(a in ("--token", "-t") or a.startswith(("--token=", "-t")) for a in argv):
        print(f"warning: a token on the command line can be read by every user of this machine (ps, "
              f"/proc/PID/cmdline); use --token-file FILE (mode 0600) or the ${TOKEN_ENV} environment variable",
              file=sys.stderr, flush=True)
    try:
        token = args.token
        if args.token_file is not None:
            try:
                token = args.token_file.read_text().strip()
            except OSError as exc:
                raise BadInput(f"--token-file: cannot read {args.token_file}: {exc.strerror}") from None
        if not token:
            raise BadInput(f"an enrollment token is required: --token, --token-file or ${TOKEN_ENV} "
                           "(make one on the head: clusterai token create NAME --role worker)")
        heads = [a.strip() for a in args.address.split(",") if a.strip()]
        if not heads:
            raise BadInput("give the head's address, e.g. tcp://head:8786")
        if args.tls_dir is None and any(_plain_beyond_loopback(a) for a in heads):
            print("warning: joining over plain TCP beyond loopback: whoever answers at that address can run "
                  "code here (Dask's protocol carries pickled functions). Use tls:// and --tls-dir.",
                  file=sys.stderr, flush=True)
        opts = WorkerOptions(
            heads=heads, token=token, name=args.name or default_name(),
            labels=parse_pairs("--label", args.label),
            resources=parse_pairs("--resources", args.resources, numbers=True),
            nthreads=args.nthreads, memory_limit=args.memory_limit, death_timeout=args.death_timeout,
            max_restarts=args.max_restarts, host=args.host, security=_security(args.tls_dir, args.tls_node),
            serve_models=list(args.serve_model), serve_host=args.serve_host, serve_port=args.serve_port,
            serve_device=args.serve_device, serve_keep_alive=args.serve_keep_alive,
            serve_max_batch=args.serve_max_batch,
        )
        asyncio.run(_until_signal(lambda stop: run_worker(opts, stop)))
        return 0
    except (BadInput, ConfigError) as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))
    except HeadUnreachable as exc:
        return _fail(EXIT_UNAVAILABLE, str(exc))
    except EnrollmentRefused as exc:
        return _fail(EXIT_AUTH, str(exc))
    except (WorkerCrashing, ClusterAIError) as exc:
        return _fail(EXIT_FAILED, str(exc))


def _service(args: argparse.Namespace, argv: list[str]) -> int:
    from clusterai.worker.service_files import install, make_service, uninstall

    name = args.name or socket.gethostname().split(".")[0]
    try:
        service = make_service(argv if args.name else [*argv, "--name", name], name, scope=args.service_scope,
                               directory=args.service_dir, user=args.service_user)
    except BadInput as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))
    if args.uninstall_service:
        print(f"removed {service.path}" if uninstall(service) else f"no service file at {service.path}")
        print(f"stop it with: {service.disable}")
        return 0
    try:
        install(service)
    except OSError as exc:
        return _fail(EXIT_BAD_INPUT, f"cannot write {service.path}: {exc.strerror or exc}")
    print(f"wrote {service.path} ({service.kind})")
    print(f"start it now and at every boot with: {service.enable}")
    return 0


async def _until_signal(main: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await main(stop)


def _plain_beyond_loopback(address: str) -> bool:
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return False
    return not is_loopback(rest.rsplit(":", 1)[0])  # a host name: another machine


SERVE_TOKEN_ENV = "CLUSTERAI_MODEL_TOKEN"


def serve_model_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clusterai serve-model",
        description="Serve models over the Ollama and OpenAI APIs on their own (extra clusterai[llm]), for a "
                    "machine that answers live requests without running jobs; list it under gateway.backends "
                    "in the head's cluster.yaml. Stops on Ctrl-C or SIGTERM.")
    p.add_argument("models", nargs="+", metavar="NAME=SPEC",
                   help="NAME=PATH of a model folder (transformers causal LM or sentence-transformers), "
                        "or NAME=pkg:MODULE for a model a Python package carries")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=_bounded_int(0, 65535), default=11434, help="port (default: 11434, Ollama's)")
    p.add_argument("--device", default="auto",
                   help="where the models run: auto (the GPU when torch sees one), cpu, cuda, cuda:N, mps")
    p.add_argument("--keep-alive", type=_keep_alive, default=None, metavar="DURATION",
                   help=f"how long a model stays loaded after a request that gives no keep_alive (Ollama's "
                        f"OLLAMA_KEEP_ALIVE): {KEEP_ALIVE_FORMS} (default: forever). All load at start.")
    p.add_argument("--max-batch", type=_bounded_int(1, 256), default=8, metavar="N",
                   help="concurrent generation requests run together as one batch, at most (default: 8; 1 runs "
                        "them one at a time)")
    p.add_argument("--token-env", default=SERVE_TOKEN_ENV, metavar="VAR",
                   help=f"environment variable holding the bearer token clients must send (default: "
                        f"{SERVE_TOKEN_ENV}); required off loopback. Never on the command line: others "
                        "can read it there.")
    return p


def serve_model_main(argv: list[str]) -> int:
    """`clusterai serve-model`: argparse like `clusterai worker`, so that a machine with only the llm
    extra can run it."""
    args = serve_model_parser().parse_args(argv)
    try:
        from clusterai.llm.serving import load_models, require_token, serve
    except ImportError as exc:
        return _fail(EXIT_BAD_INPUT, f"serving models needs the llm extra ({exc}): pip install 'clusterai[llm]'")
    try:
        token = os.environ.get(args.token_env) or None
        try:
            require_token(args.host, token)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; put one in ${args.token_env}") from None
        # after the cheap checks: loading takes a while
        models = load_models(args.models, args.device, keep_alive=args.keep_alive, max_batch=args.max_batch)
        running = serve(models, host=args.host, port=args.port, token=token)
        guarded = f"token from ${args.token_env}" if token else "no token: loopback only"
        devices = ", ".join(sorted({m.device for m in models.values()}))
        print(f"serving {', '.join(sorted(models))} at {running.url} (on {devices}; {guarded})", flush=True)

        async def until_stopped(stop: asyncio.Event) -> None:
            await stop.wait()

        try:
            asyncio.run(_until_signal(until_stopped))
        finally:
            running.stop()
        return 0
    except (BadInput, ConfigError) as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))
    except OSError as exc:  # the port is taken, the address is not this machine's
        return _fail(EXIT_BAD_INPUT, f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    except ClusterAIError as exc:
        return _fail(EXIT_FAILED, str(exc))
