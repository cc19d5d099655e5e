from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import pytest
from autoscale_support import alive

from clusterai.autoscale import CommandProvider, LaunchedWorker, Profile, ProviderError

pytestmark = pytest.mark.timeout(10)

GPU = Profile("gpu", labels=frozenset({"gpu", "region=eu"}), resources={"GPU": 1, "CPU": 8}, models=("llama",),
              concurrency=2, max=4)


def script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\nset -e\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def scripts(tmp_path: Path) -> dict[str, str]:
    state = tmp_path / "state"
    state.mkdir()
    return {
        # launch: COUNT names, recorded in state/, with what it was told
        "launch": script(tmp_path, "launch.sh", f"""
env | grep '^CLUSTERAI_' | sort > {state}/launch.env
i=0
while [ "$i" -lt "$CLUSTERAI_COUNT" ]; do
  i=$((i + 1))
  echo "$CLUSTERAI_PROFILE-vm$i" | tee -a {state}/workers > /dev/null
  echo "$CLUSTERAI_PROFILE-vm$i"
done
echo "launched $CLUSTERAI_COUNT" >&2
"""),
        "terminate": script(tmp_path, "terminate.sh", f"""
echo "$@" > {state}/terminate.args
echo "$CLUSTERAI_WORKERS" > {state}/terminate.env
for name in "$@"; do grep -v -x "$name" {state}/workers > {state}/left || true; mv {state}/left {state}/workers; done
"""),
        "list": script(tmp_path, "list.sh", f"""
touch {state}/workers
while read -r name; do echo "$name gpu"; done < {state}/workers
echo "handmade"
"""),
        "state": str(state),
    }


def test_launch_list_terminate_through_the_operators_scripts(scripts: dict[str, str]) -> None:
    async def scenario() -> None:
        provider = CommandProvider(scripts["launch"], scripts["terminate"], [scripts["list"]],
                                   env={"CLOUD": "test"}, token="tok")
        names = await provider.launch(GPU, 3)
        assert names == ["gpu-vm1", "gpu-vm2", "gpu-vm3"]
        seen = dict(line.split("=", 1) for line in Path(scripts["state"], "launch.env").read_text().splitlines())
        told = {"CLUSTERAI_PROFILE": "gpu", "CLUSTERAI_COUNT": "3", "CLUSTERAI_CONCURRENCY": "2",
                "CLUSTERAI_LABELS": "gpu,region=eu", "CLUSTERAI_RESOURCES": "CPU=8,GPU=1",
                "CLUSTERAI_MODELS": "llama", "CLUSTERAI_ENROLLMENT_TOKEN": "tok"}
        # the script also inherits the caller's environment (CI's own CLUSTERAI_* among it)
        assert {k: seen.get(k) for k in told} == told
        assert await provider.list() == [LaunchedWorker("gpu-vm1", "gpu", "command"),
                                         LaunchedWorker("gpu-vm2", "gpu", "command"),
                                         LaunchedWorker("gpu-vm3", "gpu", "command"),
                                         LaunchedWorker("handmade", None, "command")]
        await provider.terminate(["gpu-vm1", "gpu-vm3"])
        assert Path(scripts["state"], "terminate.args").read_text().split() == ["gpu-vm1", "gpu-vm3"]
        assert Path(scripts["state"], "terminate.env").read_text().split() == ["gpu-vm1", "gpu-vm3"]
        assert [w.name for w in await provider.list()] == ["gpu-vm2", "handmade"]
        assert await provider.launch(GPU, 0) == []

    asyncio.run(scenario())


def test_names_with_spaces_reach_a_shell_command_as_one_argument(tmp_path: Path) -> None:
    record = tmp_path / "args"
    terminate = script(tmp_path, "t.sh", f'for a in "$@"; do echo "[$a]" >> {record}; done\n')

    async def scenario() -> None:
        provider = CommandProvider("true", f"{terminate} --force", "true")
        await provider.terminate(["odd name", "x;rm -rf /"])

    asyncio.run(scenario())
    assert record.read_text().splitlines() == ["[--force]", "[odd name]", "[x;rm -rf /]"]


def test_a_failing_script_is_a_clear_error_with_its_stderr(tmp_path: Path) -> None:
    fail = script(tmp_path, "fail.sh", 'echo "partial" ; echo "quota exceeded for $CLUSTERAI_PROFILE" >&2; exit 3\n')

    async def scenario() -> None:
        provider = CommandProvider(fail, fail, fail)
        with pytest.raises(ProviderError) as info:
            await provider.launch(GPU, 1)
        assert str(info.value) == f"launch command {fail!r} exited with status 3: quota exceeded for gpu"
        with pytest.raises(ProviderError, match="^list command .* exited with status 3"):
            await provider.list()
        missing = CommandProvider([str(tmp_path / "absent")], "true", "true")
        with pytest.raises(ProviderError, match="^launch command .*absent.* could not start"):
            await missing.launch(GPU, 1)

    asyncio.run(scenario())


def test_a_hanging_script_is_stopped_after_its_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    hang = script(tmp_path, "hang.sh", f"sleep 30 & echo $! > {marker}; wait\n")

    async def scenario() -> None:
        provider = CommandProvider(hang, hang, hang, timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(ProviderError, match=r"^list command .* did not finish within 0.5s"):
            await provider.list()
        assert time.monotonic() - started < 3

    asyncio.run(scenario())
    child = int(marker.read_text())
    deadline = time.monotonic() + 3
    while alive(child):
        assert time.monotonic() < deadline, "the script's child outlived the timeout"
        time.sleep(0.05)
