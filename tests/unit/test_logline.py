"""Signed log lines: every kind of tampering is found at the right line, keys are made safely, and
`clusterai logline verify|sign` exit 0 / 1 / 2."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clusterai.cli.main import app
from clusterai.config import ClusterConfig
from clusterai.core.logline import GENESIS, append, canonical, load_key, load_or_create_key, sign, verify
from clusterai.errors import BadInput, ConfigError

KEY = b"k" * 32
OTHER = b"o" * 32


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "video.log"
    for i in range(5):
        append(path, {"video": f"cam{i}.mp4", "frames": 100 + i, "people": [i, i + 1], "note": "café"}, KEY)
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def flat(output: str) -> str:
    return " ".join(output.split())  # Rich wraps error messages at the terminal width


def bad_lines(path: Path, key: bytes = KEY) -> list[int]:
    return [n for n, _ in verify(path, key).problems]


# -- signing -------------------------------------------------------------------------------------

def test_sign_is_canonical_and_chained():
    line = sign({"b": 1, "a": "x"}, KEY)
    obj = json.loads(line)
    assert line == canonical(obj) and "\n" not in line and " " not in line
    assert list(obj) == ["a", "b", "prev", "sig"] and obj["prev"] == GENESIS
    assert len(obj["sig"]) == 64
    assert sign({"a": "x", "b": 1}, KEY) == line  # key order does not matter
    assert json.loads(sign({"a": 1}, KEY, prev=obj["sig"]))["prev"] == obj["sig"]
    assert sign({"a": 1}, OTHER) != sign({"a": 1}, KEY)


@pytest.mark.parametrize("record", [{"sig": "x"}, {"prev": ""}, {"x": float("nan")}, {"x": object()}, [1], {1: 2}])
def test_sign_refuses_what_it_cannot_sign(record: object):
    with pytest.raises(BadInput):
        sign(record, KEY)  # type: ignore[arg-type]


def test_short_keys_are_refused():
    with pytest.raises(ConfigError):
        sign({}, b"short")


# -- verifying -----------------------------------------------------------------------------------

def test_five_records_verify(log: Path):
    report = verify(log, KEY)
    assert report.valid and report.ok == report.lines == 5 and report.problems == []
    assert report.last_sig == json.loads(lines_of(log)[-1])["sig"]
    assert [json.loads(line)["video"] for line in lines_of(log)] == [f"cam{i}.mp4" for i in range(5)]


def test_every_single_character_edit_is_found(log: Path):
    original = lines_of(log)
    for index, line in enumerate(original):
        for pos in range(len(line) - 1):  # every character but the newline
            edited = bytearray(line)
            edited[pos] = ord("x") if line[pos] != ord("x") else ord("y")
            log.write_bytes(b"".join([*original[:index], bytes(edited), *original[index + 1:]]))
            problems = bad_lines(log)
            assert problems and problems[0] == index + 1, (index, pos, bytes(edited))


def test_escape_case_edit_keeps_values_but_is_found(tmp_path: Path):
    path = tmp_path / "l.log"
    append(path, {"note": "café"}, KEY)
    text = path.read_text()
    assert "\\u00e9" in text
    path.write_text(text.replace("\\u00e9", "\\u00E9"))  # same JSON value, other bytes
    assert verify(path, KEY).problems == [(1, "not in canonical form (edited)")]


@pytest.mark.parametrize("victim", range(4))  # the last line: see test_cut_off_end_shows_in_last_sig
def test_deleted_line_is_found(log: Path, victim: int):
    lines = lines_of(log)
    del lines[victim]
    log.write_bytes(b"".join(lines))
    problems = verify(log, KEY).problems
    assert problems == [(victim + 1, problems[0][1])] and "broken chain" in problems[0][1]


def test_cut_off_end_shows_in_last_sig(log: Path):
    # whole lines cut off the end leave a valid chain: only an anchored last_sig tells
    anchored = verify(log, KEY).last_sig
    log.write_bytes(b"".join(lines_of(log)[:-1]))
    report = verify(log, KEY)
    assert report.valid and report.last_sig != anchored


def test_swapped_lines_are_found(log: Path):
    lines = lines_of(log)
    lines[1], lines[2] = lines[2], lines[1]
    log.write_bytes(b"".join(lines))
    problems = verify(log, KEY).problems
    assert [n for n, _ in problems] == [2, 3, 4]
    assert all("broken chain" in reason for _, reason in problems)


def test_forged_line_is_found(log: Path):
    lines = lines_of(log)
    prev = json.loads(lines[1])["sig"]  # a forger can chain it: the signature still gives it away
    forged = (sign({"video": "fake.mp4", "frames": 1}, OTHER, prev=prev) + "\n").encode()
    log.write_bytes(b"".join([*lines[:2], forged, *lines[2:]]))
    problems = verify(log, KEY).problems
    assert problems[0] == (3, "bad signature (edited, or signed with another key)")
    assert [n for n, _ in problems] == [3, 4]


def test_truncated_last_line_is_found(log: Path):
    data = log.read_bytes()
    log.write_bytes(data[:-10])
    problems = verify(log, KEY).problems
    assert len(problems) == 1 and problems[0][0] == 5 and "truncated JSON" in problems[0][1]
    log.write_bytes(data[:-1])  # only the newline gone
    assert verify(log, KEY).problems == [(5, "no newline at the end (truncated?)")]


def test_wrong_key_makes_every_line_bad(log: Path):
    report = verify(log, OTHER)
    assert report.ok == 0 and bad_lines(log, OTHER) == [1, 2, 3, 4, 5]
    assert all(reason.startswith("bad signature") for _, reason in report.problems)


def test_other_damage_is_named(log: Path):
    lines = lines_of(log)
    obj = json.loads(lines[2])
    del obj["sig"]
    lines[2] = (canonical(obj) + "\n").encode()
    lines.insert(1, b"\n")
    lines.append(b"[1,2]\n")
    lines.append(b"{not json\n")
    log.write_bytes(b"".join(lines))
    problems = dict(verify(log, KEY).problems)
    assert problems[2] == "empty line"
    assert problems[4] == "missing sig"
    assert problems[7] == "not a JSON object"
    assert problems[8].startswith("bad JSON")


def test_append_refuses_a_broken_end(log: Path):
    log.write_bytes(log.read_bytes()[:-1])
    with pytest.raises(BadInput, match="incomplete"):
        append(log, {"a": 1}, KEY)
    log.write_bytes(log.read_bytes() + b"\n{}\n")
    with pytest.raises(BadInput, match="no valid sig"):
        append(log, {"a": 1}, KEY)


def test_append_reads_long_last_lines(tmp_path: Path):
    path = tmp_path / "long.log"
    append(path, {"blob": "x" * 20_000}, KEY)
    append(path, {"blob": "y" * 10_000}, KEY)
    append(path, {"n": 3}, KEY)
    assert verify(path, KEY).ok == 3


def test_missing_log_is_bad_input(tmp_path: Path):
    with pytest.raises(BadInput, match="no such file"):
        verify(tmp_path / "absent.log", KEY)


# -- keys ----------------------------------------------------------------------------------------

def test_key_is_made_once_with_mode_0600(tmp_path: Path):
    path = tmp_path / "deep" / "logline.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key and load_key(path) == key
    assert sorted(p.name for p in path.parent.iterdir()) == ["logline.key"]  # no temporary file left
    assert load_or_create_key(tmp_path / "other.key") != key  # random, never a default


def test_load_key_never_makes_one(tmp_path: Path):
    with pytest.raises(ConfigError, match="no logline key file"):
        load_key(tmp_path / "absent.key")
    assert not (tmp_path / "absent.key").exists()
    (tmp_path / "weak.key").write_bytes(b"1234")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_key(tmp_path / "weak.key")


def test_config_names_the_key_file():
    assert ClusterConfig().logline.key_file == ".clusterai/logline.key"
    assert ClusterConfig().with_overrides(**{"logline.key_file": "/k"}).logline.key_file == "/k"


# -- the command ---------------------------------------------------------------------------------

def test_cli_sign_then_verify(tmp_path: Path):
    key_file, log = tmp_path / "k.key", tmp_path / "v.log"
    runner = CliRunner()
    for i in range(3):
        result = runner.invoke(app, ["logline", "sign", str(log), "--json", json.dumps({"i": i}),
                                     "--key-file", str(key_file)])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["i"] == i
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    result = runner.invoke(app, ["logline", "verify", str(log), "--key-file", str(key_file)])
    assert result.exit_code == 0, result.output
    assert "3 lines verified" in result.output


def test_cli_verify_lists_every_bad_line(log: Path, tmp_path: Path):
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    lines = lines_of(log)
    lines[1] = lines[1].replace(b"cam1", b"camX")
    lines[3] = lines[3].replace(b"101", b"999").replace(b"103", b"999")
    log.write_bytes(b"".join(lines))
    result = CliRunner().invoke(app, ["logline", "verify", str(log), "--key-file", str(key_file)])
    assert result.exit_code == 1, result.output
    assert f"{log}:2: bad signature" in result.output
    assert f"{log}:4: bad signature" in result.output
    assert "2 of 5 lines bad" in result.output


def test_cli_missing_key_file_exits_2(log: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["logline", "verify", str(log), "--key-file", str(tmp_path / "absent.key")])
    assert result.exit_code == 2, result.output
    assert "no logline key file" in flat(result.output)
    assert not (tmp_path / "absent.key").exists()


def test_cli_key_file_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLUSTERAI_CONFIG", raising=False)
    (tmp_path / "cluster.yaml").write_text("logline:\n  key_file: keys/log.key\n")
    runner = CliRunner()
    assert runner.invoke(app, ["logline", "sign", "v.log", "--json", "{}"]).exit_code == 0
    assert (tmp_path / "keys/log.key").exists()
    result = runner.invoke(app, ["logline", "verify", "v.log"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("payload, message", [("[1]", "a JSON object is needed"), ("{oops", "not valid JSON"),
                                              ('{"sig": 1}', "may not have"), ("@absent.json", "cannot read")])
def test_cli_sign_bad_input_exits_2(tmp_path: Path, payload: str, message: str):
    result = CliRunner().invoke(app, ["logline", "sign", str(tmp_path / "v.log"), "--json", payload,
                                      "--key-file", str(tmp_path / "k.key")])
    assert result.exit_code == 2, result.output
    assert message in flat(result.output)


def test_cli_verify_takes_a_log_name_and_shows_what_each_line_stands_for(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLUSTERAI_CONFIG", raising=False)
    (tmp_path / "cluster.yaml").write_text("logline:\n  dir: logs\n  key_file: k.key\n")
    (tmp_path / "k.key").write_bytes(KEY)
    record = {"job": 7, "owner": "alice", "run": 3, "source": "/media/gate\x1b[2J.avi", "source_digest": "ab" * 32,
              "summary": "cd" * 32, "text": "t"}
    append(tmp_path / "logs" / "gate.log", record, KEY)
    append(tmp_path / "logs" / "gate.log", {"note": "an operator's own record"}, KEY)
    result = CliRunner().invoke(app, ["logline", "verify", "gate"])
    assert result.exit_code == 0, result.output
    assert (f"logs/gate.log:1: ok: job 7, owner alice, run 3, source {json.dumps(record['source'])}, "
            f"source sha256 {'ab' * 32}, summary sha256 {'cd' * 32}") in result.output  # no raw escape shown
    assert '''logs/gate.log:2: ok: {"note":"an operator's own record"}''' in result.output
    assert "2 lines verified in logs/gate.log" in result.output
    assert CliRunner().invoke(app, ["logline", "verify", "gate.log"]).exit_code == 0  # the same log
    missing = CliRunner().invoke(app, ["logline", "verify", "other"])
    assert missing.exit_code == 2 and "logs/other.log: no such file" in flat(missing.output)
