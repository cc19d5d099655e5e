"""`clusterai worker --token T`: the token is visible to every user of the machine in `ps`; the
command says so and names the ways that are not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nodes import node_env

from clusterai.service.access import new_token

pytestmark = pytest.mark.timeout(60)


def worker(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clusterai.cli.main", "worker", "tcp://127.0.0.1:9", *args,
                           "--death-timeout", "1"], cwd=cwd, env={**node_env(), **env}, capture_output=True,
                          text=True, timeout=45)


def test_a_token_on_the_command_line_is_warned_about(tmp_path: Path):
    token = new_token("w", "worker", created_by=None)[0]
    warned = worker(["--token", token], {}, tmp_path)
    assert "a token on the command line can be read by every user of this machine" in warned.stderr
    assert "--token-file" in warned.stderr and "CLUSTERAI_ENROLLMENT_TOKEN" in warned.stderr
    (tmp_path / "token").write_text(token)
    os.chmod(tmp_path / "token", 0o600)
    for args, env in ((["--token-file", str(tmp_path / "token")], {}), ([], {"CLUSTERAI_ENROLLMENT_TOKEN": token})):
        quiet = worker(args, env, tmp_path)
        assert quiet.returncode == 3, quiet.stderr  # no head there: it got as far as looking for one
        assert "command line" not in quiet.stderr
