"""The SSH provider against OpenSSH's own sshd, started by the test on 127.0.0.1 with a config,
host key and authorized key of its own (skipped where sshd is not installed; CI installs it)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from autoscale_support import alive, read_record, wait_for
from test_autoscale_ssh import GPU, template

from clusterai.autoscale import SSHHost, SSHProvider

asyncssh = pytest.importorskip("asyncssh")
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)

pytestmark = [pytest.mark.timeout(30),
              pytest.mark.skipif(SSHD is None, reason="OpenSSH's sshd is not installed (openssh-server)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def sshd(tmp_path: Path) -> Iterator[SSHHost]:
    root = tmp_path / "sshd"
    root.mkdir(mode=0o700)
    host_key, client_key = asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(str(root / "host_key"))
    client_key.write_private_key(str(root / "id_ed25519"))
    for key in ("host_key", "id_ed25519"):
        (root / key).chmod(0o600)  # sshd refuses a host key others can read
    (root / "authorized_keys").write_bytes(client_key.export_public_key())
    port = free_port()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key.export_public_key().decode().strip()}\n")
    (root / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no", f"AllowUsers {getpass.getuser()}",
    ]) + "\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"sshd would not start: {output[-500:]}")
            time.sleep(0.05)
        yield SSHHost(host="127.0.0.1", port=port, user=getpass.getuser(), max_workers=2,
                      key_path=str(root / "id_ed25519"), known_hosts=str(root / "known_hosts"), connect_timeout_s=5)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()


def test_launch_and_terminate_through_openssh(tmp_path: Path, workdir: Path) -> None:
    with sshd(tmp_path) as host:
        async def scenario() -> None:
            provider = SSHProvider([host], template(workdir, "--child"), token="s3cret")
            try:
                names = await provider.launch(GPU, 2)
                records = [await wait_for(lambda n=n: read_record(workdir, n), 10, f"{n} to start") for n in names]
                assert [r["env_name"] for r in records] == names and {r["token"] for r in records} == {"s3cret"}
                pids = [r["pid"] for r in records] + [r["child"] for r in records]
                assert all(alive(pid) for pid in pids)
                await provider.terminate(names)
                await wait_for(lambda: not any(alive(pid) for pid in pids), 10, "workers and children to end")
                assert await provider.list() == []
            finally:
                await provider.close()

        asyncio.run(scenario())
