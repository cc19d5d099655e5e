"""`clusterai worker ... --install-service`: the worker starts at boot and restarts when it fails.

On Linux: a systemd unit, for the user (`~/.config/systemd/user`, started with the user's session,
or at boot with `loginctl enable-linger`) or the system (`/etc/systemd/system`, with `--service-user`).
Under Termux (Android): a termux-services entry (`$PREFIX/var/service/NAME/run`, runit style),
started by `sv-enable`. The unit runs the same `clusterai worker` command line, minus the install
options; a token on that command line is refused, since unit files are readable: give
`--token-file` (mode 0600) instead.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from clusterai.errors import BadInput

_UNIT_NAME = re.compile(r"[^A-Za-z0-9_.-]")
INSTALL_FLAGS = ("--install-service", "--uninstall-service")
VALUED_FLAGS = ("--service-scope", "--service-dir", "--service-user")


@dataclass(frozen=True)
class ServiceFile:
    kind: str  # "systemd" or "termux"
    path: Path
    text: str
    enable: str  # what to run to start it now and at boot
    disable: str


def on_termux() -> bool:
    return bool(os.environ.get("TERMUX_VERSION")) or "com.termux" in os.environ.get("PREFIX", "")


def unit_name(worker_name: str) -> str:
    return f"clusterai-worker-{_UNIT_NAME.sub('-', worker_name)}"


def worker_argv(argv: list[str]) -> list[str]:
    """The worker's own arguments: `argv` without the service options (and their values)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in INSTALL_FLAGS:
            continue
        if arg in VALUED_FLAGS:
            skip = True
            continue
        if arg.split("=", 1)[0] in VALUED_FLAGS:
            continue
        kept.append(arg)
    if any(a in ("--token", "-t") or a.startswith(("--token=", "-t")) for a in kept):
        raise BadInput("a service file is readable by others: give the token with --token-file FILE (mode 0600), "
                       "not --token")
    return kept


def _absolute(args: list[str]) -> list[str]:
    """Paths given relative to here must still point there when the service starts elsewhere."""
    out, follows_path = [], False
    for arg in args:
        if follows_path:
            arg = str(Path(arg).expanduser().resolve())
        follows_path = arg in ("--token-file", "--tls-dir")
        out.append(arg)
    return out


def make_service(argv: list[str], name: str, *, scope: str = "user", directory: Path | None = None,
                 user: str | None = None, termux: bool | None = None) -> ServiceFile:
    command = [sys.executable, "-m", "clusterai.cli.entry", "worker", *_absolute(worker_argv(argv))]
    unit = unit_name(name)
    if on_termux() if termux is None else termux:
        prefix = Path(os.environ.get("PREFIX", "/data/data/com.termux/files/usr"))
        folder = (directory or prefix / "var" / "service") / unit
        shell = prefix / "bin" / "sh"
        text = (f"#!{shell}\n# clusterai worker {name}: started by termux-services (sv-enable {unit})\n"
                f"exec {shlex.join(command)} 2>&1\n")
        return ServiceFile("termux", folder / "run", text, f"sv-enable {unit} && sv up {unit}",
                           f"sv-disable {unit}")
    if scope not in ("user", "system"):
        raise BadInput(f"--service-scope: user or system, got {scope!r}")
    if scope == "user":
        folder = directory or Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "systemd" / "user"
        ctl, target = "systemctl --user", "default.target"
    else:
        folder = directory or Path("/etc/systemd/system")
        ctl, target = "systemctl", "multi-user.target"
    lines = [
        "[Unit]",
        f"Description=clusterai worker {name}",
        "Wants=network-online.target",
        "After=network-online.target",
        # past 10 failed starts in 10 minutes systemd stops trying, and `systemctl status` says so
        "StartLimitIntervalSec=600",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={shlex.join(command)}",
        "Restart=on-failure",
        "RestartSec=5",
        # SIGTERM lets the worker finish its handshake with the head; its running jobs are retried elsewhere
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
    ]
    if scope == "system":
        if not user:
            raise BadInput("--service-scope system needs --service-user USER: a worker runs other people's code, "
                           "never as root")
        lines.append(f"User={user}")
    lines += ["", "[Install]", f"WantedBy={target}", ""]
    return ServiceFile("systemd", folder / f"{unit}.service", "\n".join(lines),
                       f"{ctl} daemon-reload && {ctl} enable --now {unit}", f"{ctl} disable --now {unit}")


def install(service: ServiceFile) -> None:
    service.path.parent.mkdir(parents=True, exist_ok=True)
    service.path.write_text(service.text)
    mode = 0o755 if service.kind == "termux" else 0o644
    os.chmod(service.path, mode)
    if service.kind == "termux":
        log = service.path.parent / "log"
        log.mkdir(exist_ok=True)
        (log / "run").write_text(f"#!{service.path.read_text().splitlines()[0][2:]}\nexec svlogd -tt .\n")
        os.chmod(log / "run", stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def uninstall(service: ServiceFile) -> bool:
    """Remove the file (and, for termux, its folder); False when there was none."""
    if not service.path.exists():
        return False
    if service.kind == "termux":
        for path in sorted(service.path.parent.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        service.path.parent.rmdir()
    else:
        service.path.unlink()
    return True
