from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from autoscale_support import FAKE_WORKER, alive, read_record, wait_for

from clusterai.autoscale import LocalProcessProvider, Profile, ProviderError

pytestmark = pytest.mark.timeout(10)

GPU = Profile("gpu", resources={"GPU": 1}, concurrency=2, max=4)


def provider(workdir: Path, *extra: str, **kw) -> LocalProcessProvider:
    command = [sys.executable, str(FAKE_WORKER), "--dir", "{dir}", "--name", "{name}", *extra]
    return LocalProcessProvider(command, env={"EXTRA": "1"}, cwd=workdir, variables={"dir": str(workdir)}, **kw)


def test_launch_list_terminate_leaves_nothing_running(workdir: Path) -> None:
    async def scenario() -> None:
        local = provider(workdir, "--child", token="s3cret", grace_s=5, log_dir=workdir / "logs")
        names = await local.launch(GPU, 2)
        assert len(set(names)) == 2 and all(n.startswith("as-gpu-") for n in names)
        records = [await wait_for(lambda n=n: read_record(workdir, n), 5, f"{n} to start") for n in names]
        listed = await local.list()
        assert sorted(w.name for w in listed) == sorted(names)
        assert all(w.profile == "gpu" and w.where.startswith("local pid ") for w in listed)
        pids = [r["pid"] for r in records] + [r["child"] for r in records]
        assert all(alive(pid) for pid in pids)
        for name, record in zip(names, records):
            assert record["env_name"] == name and record["profile"] == "gpu"
            assert record["token"] == "s3cret" and "s3cret" not in " ".join(record["argv"])
        await wait_for(lambda: "hello from" in (workdir / "logs" / f"{names[0]}.log").read_text(), 5, "output")

        started = time.monotonic()
        await local.terminate(names)
        assert time.monotonic() - started < 4  # SIGTERM was enough: no grace period spent
        await wait_for(lambda: not any(alive(pid) for pid in pids), 3, "workers and their children to end")
        assert await local.list() == []
        await local.terminate(names)  # already gone: nothing to do, no error

    asyncio.run(scenario())


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(workdir: Path) -> None:
    async def scenario() -> None:
        local = provider(workdir, "--ignore-term", grace_s=0.5)
        [name] = await local.launch(GPU, 1)
        record = await wait_for(lambda: read_record(workdir, name), 5, "the worker to start")
        started = time.monotonic()
        await local.terminate([name])
        assert 0.4 < time.monotonic() - started < 3
        assert not alive(record["pid"])

    asyncio.run(scenario())


def test_list_forgets_workers_that_exited(workdir: Path) -> None:
    async def scenario() -> None:
        local = provider(workdir, "--exit-after", "0")
        keep = provider(workdir)
        await local.launch(GPU, 2)
        [staying] = await keep.launch(GPU, 1)
        await wait_for(lambda: len(list(workdir.glob("*.json"))) == 3, 5, "three workers to start")
        deadline = time.monotonic() + 5
        while await local.list() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await local.list() == []
        assert [w.name for w in await keep.list()] == [staying]
        await keep.terminate([staying])

    asyncio.run(scenario())


def test_launch_errors_are_clear(workdir: Path) -> None:
    async def scenario() -> None:
        missing = LocalProcessProvider([str(workdir / "no-such-program")])
        with pytest.raises(ProviderError, match="local provider: cannot start '.*no-such-program'"):
            await missing.launch(GPU, 1)
        unfilled = LocalProcessProvider(["clusterai", "worker", "{head}"])
        with pytest.raises(ProviderError, match=r"local provider command names \{head\} but no value was given"):
            await unfilled.launch(GPU, 1)
        assert await unfilled.launch(GPU, 0) == []
        with pytest.raises(ProviderError, match="empty"):
            LocalProcessProvider([])

    asyncio.run(scenario())
