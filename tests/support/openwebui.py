"""The real Open WebUI (`open-webui` from PyPI) in a virtualenv of its own, `.venv-openwebui` at the
repository's root, and run as its own process on loopback with a clusterai gateway as its Ollama
connection: offline, headless, its data in a folder of the caller's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-openwebui"
# torch pinned: a plain `torch` pulls several GB of CUDA packages; 2.13.0 resolves to a CPU build here
REQUIREMENTS = ("open-webui>=0.12,<0.13", "torch==2.13.0")
INSTALL_TIMEOUT = 900.0  # about 140 s and 2.9 GB from a nearby index; far more from a slow one


class Unavailable(Exception):
    """Open WebUI cannot be installed or started here; the message says why."""


def installed(venv: Path = VENV) -> str | None:
    """The open-webui version in `venv` when it imports there, else None."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    probe = subprocess.run([str(python), "-c", "import importlib.metadata as m, open_webui; "
                            "print(m.version('open-webui'))"], capture_output=True, text=True, timeout=120)
    return probe.stdout.strip() if probe.returncode == 0 else None


def _base_python() -> str:
    if (3, 11) <= sys.version_info[:2] <= (3, 12):
        return sys.executable
    for name in ("python3.12", "python3.11"):
        if found := shutil.which(name):
            return found
    raise Unavailable(f"open-webui needs Python 3.11 or 3.12; this is {sys.version.split()[0]} and neither is on PATH")


def ensure(venv: Path = VENV, timeout: float = INSTALL_TIMEOUT) -> str:
    """Reuse `venv` when open_webui imports there, else make it and pip install Open WebUI into it
    (at most `timeout` seconds); returns the installed version."""
    if version := installed(venv):
        return version
    deadline = time.monotonic() + timeout
    pip = f"pip install {' '.join(REQUIREMENTS)}"
    steps = {f"python -m venv {venv}": [_base_python(), "-m", "venv", str(venv)],
             pip: [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *REQUIREMENTS]}
    for what, step in steps.items():
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{pip} took over {timeout:.0f} s") from None
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip()[-1500:]
            raise Unavailable(f"{what} failed (exit {done.returncode}):\n{tail}")
    if not (version := installed(venv)):
        raise Unavailable(f"open-webui was installed in {venv} but does not import there")
    return version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connection_env(gateway: str, token: str) -> dict[str, str]:
    """What connects Open WebUI to the gateway: its one Ollama connection, the token as that
    connection's bearer key (read at first start; later the admin settings keep them)."""
    return {"OLLAMA_BASE_URL": gateway, "OLLAMA_API_CONFIGS": json.dumps({"0": {"key": token}})}


# headless and offline: nothing downloaded at start (no embedding model, no update check, no telemetry)
OFFLINE = {
    "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1", "ENABLE_VERSION_UPDATE_CHECK": "false",
    "ENABLE_OLLAMA_API": "true", "ENABLE_OPENAI_API": "false",
    "RAG_EMBEDDING_ENGINE": "ollama", "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false",
    "RAG_RERANKING_MODEL_AUTO_UPDATE": "false", "WHISPER_MODEL_AUTO_UPDATE": "false",
    "ANONYMIZED_TELEMETRY": "false", "DO_NOT_TRACK": "true", "SCARF_NO_ANALYTICS": "true",
    "GLOBAL_LOG_LEVEL": "INFO",
}


class OpenWebUI:
    """`open-webui serve` on 127.0.0.1 in its own session, its data (SQLite, uploads) and log in
    `folder`; started with the first admin signed up, stopped by `stop`."""

    def __init__(self, folder: Path, env: dict[str, str], *, venv: Path = VENV, port: int | None = None):
        self.folder = folder
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "open-webui.log"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        full = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(folder),
                "DATA_DIR": str(folder / "data"), "WEBUI_SECRET_KEY": os.urandom(24).hex(), **OFFLINE, **env}
        self.proc = subprocess.Popen([str(venv / "bin" / "open-webui"), "serve", "--host", "127.0.0.1",
                                      "--port", str(self.port)], cwd=folder, env=full, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_up(self, timeout: float) -> OpenWebUI:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"open-webui exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"open-webui did not answer /health within {timeout:.0f} s:\n{self.tail()}")

    def sign_up_admin(self) -> httpx.Client:
        """The first account is the admin: a client with its session token."""
        made = httpx.post(f"{self.url}/api/v1/auths/signup", timeout=30, json={
            "name": "Admin", "email": "admin@example.com", "password": os.urandom(12).hex() + "aA1!"})
        assert made.status_code == 200, made.text
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {made.json()['token']}"},
                            timeout=120)

    def stop(self, grace: float = 20.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
