"""The SSH provider against a real SSH server (asyncssh's) on 127.0.0.1, running commands for real."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from autoscale_support import FAKE_WORKER, alive, read_record, wait_for

from clusterai.autoscale import Profile, ProviderError, SSHHost, SSHProvider

asyncssh = pytest.importorskip("asyncssh")

pytestmark = pytest.mark.timeout(10)

GPU = Profile("gpu", resources={"GPU": 1}, max=4)


@dataclass
class Server:
    port: int
    key_path: str
    known_hosts: str
    commands: list[str] = field(default_factory=list)

    def host(self, max_workers: int, host: str = "127.0.0.1") -> SSHHost:
        return SSHHost(host=host, port=self.port, user=getpass.getuser(), max_workers=max_workers,
                       key_path=self.key_path, known_hosts=self.known_hosts, connect_timeout_s=5)


@contextlib.asynccontextmanager
async def ssh_server(tmp_path: Path) -> AsyncIterator[Server]:
    """An SSH server that accepts one generated client key and runs each command in a shell, in a
    session of its own as sshd does."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = tmp_path / "id_ed25519"
    client_key.write_private_key(str(key_path))
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
    commands: list[str] = []

    async def run(process: asyncssh.SSHServerProcess) -> None:
        commands.append(process.command)
        child = await asyncio.create_subprocess_shell(
            process.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            await process.redirect(stdin=child.stdin, stdout=child.stdout, stderr=child.stderr)
            process.exit(await child.wait())
            await process.wait_closed()  # it runs the redirections' clean-ups
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()

    server = await asyncssh.create_server(asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[host_key],
                                          authorized_client_keys=authorized, process_factory=run)
    port = server.get_port()
    known_hosts = tmp_path / "known_hosts"
    public = host_key.export_public_key().decode().strip()
    known_hosts.write_text(f"[127.0.0.1]:{port} {public}\n[localhost]:{port} {public}\n")
    try:
        yield Server(port, str(key_path), str(known_hosts), commands)
    finally:
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once it is closed


def template(workdir: Path, *extra: str) -> str:
    return " ".join([sys.executable, str(FAKE_WORKER), "--dir", str(workdir), "--name", "{name}", *extra])


def test_launch_on_a_real_ssh_server_and_terminate(tmp_path: Path, workdir: Path) -> None:
    async def scenario() -> None:
        async with ssh_server(tmp_path) as server:
            provider = SSHProvider([server.host(max_workers=2)], template(workdir, "--child"), token="s3cret")
            try:
                names = await provider.launch(GPU, 2)
                records = [await wait_for(lambda n=n: read_record(workdir, n), 5, f"{n} to start") for n in names]
                for name, record in zip(names, records):
                    assert record["env_name"] == name and record["profile"] == "gpu"
                    assert record["token"] == "s3cret"  # it arrived, through stdin
                assert server.commands and not any("s3cret" in c for c in server.commands)
                listed = await provider.list()
                assert sorted(w.name for w in listed) == sorted(names)
                assert all(w.where.startswith(f"127.0.0.1:{server.port} pid ") for w in listed)
                await wait_for(lambda: provider.output(names[0]) == [f"hello from {names[0]}"], 5, "its output")
                pids = [r["pid"] for r in records] + [r["child"] for r in records]
                assert all(alive(pid) for pid in pids)

                await provider.terminate(names)
                await wait_for(lambda: not any(alive(pid) for pid in pids), 3, "workers and children to end")
                assert await provider.list() == []
            finally:
                await provider.close()

    asyncio.run(scenario())


def test_fills_the_least_loaded_host_and_respects_max_workers(tmp_path: Path, workdir: Path) -> None:
    async def scenario() -> None:
        async with ssh_server(tmp_path) as server:
            a, b = server.host(max_workers=2), server.host(max_workers=1, host="localhost")
            provider = SSHProvider([a, b], template(workdir))
            try:
                names = await provider.launch(GPU, 3)
                where = [w.where.split(" pid")[0] for w in await provider.list()]
                assert sorted(where) == sorted([a.address, a.address, b.address])
                first_two = {w.name: w.where.split(" pid")[0] for w in await provider.list()}
                assert first_two[names[0]] == a.address and first_two[names[1]] == b.address  # least loaded
                with pytest.raises(ProviderError, match="every host is at its max_workers"):
                    await provider.launch(GPU, 1)
                await provider.terminate(names[:1])
                [again] = await provider.launch(GPU, 1)  # room on the first host again
                assert {w.name: w.where.split(" pid")[0] for w in await provider.list()}[again] == a.address
                await provider.terminate([*names[1:], again])
            finally:
                await provider.close()

    asyncio.run(scenario())


def test_an_unreachable_host_is_reported_and_the_next_one_used(tmp_path: Path, workdir: Path) -> None:
    async def scenario() -> None:
        async with ssh_server(tmp_path) as server:
            dead = SSHHost(host="127.0.0.1", port=closed_port(), max_workers=5, key_path=server.key_path,
                           known_hosts=server.known_hosts, connect_timeout_s=2)
            alone = SSHProvider([dead], template(workdir))
            started = time.monotonic()
            with pytest.raises(ProviderError) as info:
                await alone.launch(GPU, 1)
            assert time.monotonic() - started < 3
            assert str(info.value).startswith(
                f"ssh provider: could not launch a gpu worker: ssh host {dead.address} is unreachable: ")

            provider = SSHProvider([dead, server.host(max_workers=1)], template(workdir))
            try:
                [name] = await provider.launch(GPU, 1)  # the first host is tried, fails, the second takes it
                [worker] = await provider.list()
                assert worker.name == name and worker.where.startswith(f"127.0.0.1:{server.port} ")
                await wait_for(lambda: read_record(workdir, name), 5, "the worker to start")
                await provider.terminate([name])
            finally:
                await provider.close()

    asyncio.run(scenario())


def test_a_host_with_an_unknown_host_key_is_refused(tmp_path: Path, workdir: Path) -> None:
    async def scenario() -> None:
        async with ssh_server(tmp_path) as server:
            stranger = tmp_path / "other_known_hosts"
            other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
            stranger.write_text(f"[127.0.0.1]:{server.port} {other}")
            host = SSHHost(host="127.0.0.1", port=server.port, max_workers=1, key_path=server.key_path,
                           known_hosts=str(stranger), connect_timeout_s=5)
            with pytest.raises(ProviderError) as info:
                await SSHProvider([host], template(workdir)).launch(GPU, 1)
            assert f"could not log in to ssh host 127.0.0.1:{server.port}: Host key is not trusted" in str(info.value)
            assert server.commands == []

    asyncio.run(scenario())


def test_a_remote_worker_that_ignores_sigterm_is_killed_and_one_that_exits_is_forgotten(
        tmp_path: Path, workdir: Path) -> None:
    async def scenario() -> None:
        async with ssh_server(tmp_path) as server:
            stubborn = SSHProvider([server.host(max_workers=2)], template(workdir, "--ignore-term"), grace_s=0.5)
            brief = SSHProvider([server.host(max_workers=2)], template(workdir, "--exit-after", "0"))
            try:
                [name] = await stubborn.launch(GPU, 1)
                record = await wait_for(lambda: read_record(workdir, name), 5, "the worker to start")
                started = time.monotonic()
                await stubborn.terminate([name])
                assert 0.4 < time.monotonic() - started < 5
                await wait_for(lambda: not alive(record["pid"]), 3, "the worker to be killed")

                [gone] = await brief.launch(GPU, 1)
                await wait_for(lambda: read_record(workdir, gone), 5, "the brief worker to start")
                deadline = time.monotonic() + 5
                while await brief.list() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert await brief.list() == []
            finally:
                await stubborn.close()
                await brief.close()

    asyncio.run(scenario())
