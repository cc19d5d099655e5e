"""`clusterai worker ... --install-service`: the unit or termux entry it writes runs the same worker
command, is checked by systemd-analyze where it is installed, refuses a token on the command line,
and --uninstall-service removes it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from clusterai.worker.cli import worker_main
from clusterai.worker.service_files import make_service, worker_argv

BASE = ["tls://head.lan:8786", "--token-file", "token", "--tls-dir", "certs", "--name", "desk-1", "--nthreads", "2"]


def test_a_user_unit_runs_the_same_worker_command(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert worker_main([*BASE, "--install-service", "--service-dir", str(tmp_path / "units")]) == 0
    unit = tmp_path / "units" / "clusterai-worker-desk-1.service"
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start == (f"ExecStart={sys.executable} -m clusterai.cli.entry worker tls://head.lan:8786 "
                          f"--token-file {tmp_path / 'token'} --tls-dir {tmp_path / 'certs'} --name desk-1 "
                          "--nthreads 2")
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text
    assert "--install-service" not in text and "--service-dir" not in text
    assert "systemctl --user daemon-reload && systemctl --user enable --now clusterai-worker-desk-1" in \
        capsys.readouterr().out
    if shutil.which("systemd-analyze"):
        checked = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                                 timeout=60)
        problems = [line for line in checked.stderr.splitlines() if "clusterai-worker-desk-1" in line]
        assert not problems, checked.stderr
    assert worker_main([*BASE, "--uninstall-service", "--service-dir", str(tmp_path / "units")]) == 0
    assert not unit.exists()


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path):
    """The check above can fail: a unit whose ExecStart is not absolute is reported."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "clusterai-worker-broken.service"
    unit.write_text("[Service]\nExecStart=clusterai worker\nRestart=sometimes\n")
    checked = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "clusterai-worker-broken" in checked.stderr


def test_a_token_on_the_command_line_is_refused_and_nothing_written(tmp_path: Path, capsys):
    code = worker_main(["tcp://127.0.0.1:8786", "--token", "cai_x_y", "--install-service",
                        "--service-dir", str(tmp_path)])
    assert code == 2 and "--token-file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_system_unit_needs_an_account_that_is_not_root(tmp_path: Path):
    with pytest.raises(Exception, match="--service-user"):
        make_service(BASE, "desk-1", scope="system", directory=tmp_path)
    unit = make_service(BASE, "desk-1", scope="system", directory=tmp_path, user="clusterai")
    assert "User=clusterai" in unit.text and "WantedBy=multi-user.target" in unit.text
    assert unit.enable == "systemctl daemon-reload && systemctl enable --now clusterai-worker-desk-1"


def test_termux_gets_a_runit_service(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PREFIX", "/data/data/com.termux/files/usr")
    assert worker_main([*BASE, "--install-service", "--service-dir", str(tmp_path)]) == 0
    run = tmp_path / "clusterai-worker-desk-1" / "run"
    assert run.read_text().startswith("#!/data/data/com.termux/files/usr/bin/sh\n")
    assert "exec " in run.read_text() and "worker tls://head.lan:8786" in run.read_text()
    assert os.stat(run).st_mode & stat.S_IXUSR
    assert (tmp_path / "clusterai-worker-desk-1" / "log" / "run").exists()
    assert worker_main([*BASE, "--uninstall-service", "--service-dir", str(tmp_path)]) == 0
    assert not (tmp_path / "clusterai-worker-desk-1").exists()


def test_service_options_and_their_values_are_left_out():
    argv = [*BASE, "--install-service", "--service-scope", "user", "--service-dir=/x", "--service-user", "u"]
    assert worker_argv(argv) == BASE
