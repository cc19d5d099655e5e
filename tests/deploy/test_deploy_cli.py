"""Every `clusterai` command line in deploy/ (the compose file, the chart's manifests under every
value set, deploy/README.md) is one the real CLI accepts: parsed by its own argparse and Typer
parsers, so a flag or subcommand it does not have fails here."""

from __future__ import annotations

import pytest
from deploy_support import (
    DEPLOY,
    CheckFailed,
    argv_commands,
    chart_manifests,
    container_commands,
    containers,
    load_compose,
    markdown_shell_blocks,
    parse_command,
    pod_spec,
    renders,
    shell_commands,
)


def compose_commands() -> list[list[str]]:
    found = []
    for service in load_compose()["services"].values():
        for key in ("entrypoint", "command"):
            value = service.get(key)
            if value is not None:
                found += argv_commands(value if isinstance(value, list) else ["sh", "-c", value])
        test = (service.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test[:1] == ["CMD-SHELL"]:
            found += shell_commands(test[1])
        elif isinstance(test, list) and test[:1] == ["CMD"]:
            found += argv_commands(test[1:])
    return found


def chart_commands() -> list[list[str]]:
    return [line for docs in renders().values() for doc in docs if pod_spec(doc)
            for c in containers(pod_spec(doc) or {}) for line in container_commands(c)]


def readme_commands() -> list[list[str]]:
    return [line for block in markdown_shell_blocks((DEPLOY / "README.md").read_text())
            for line in shell_commands(block)]


def test_compose_command_lines_are_accepted() -> None:
    parsed = [parse_command(line) for line in compose_commands()]
    assert sorted(p.path for p in parsed) == [("scheduler",), ("worker",), ("worker",)]


def test_chart_command_lines_are_accepted() -> None:
    parsed = [parse_command(line) for line in chart_commands()]
    paths = {p.path for p in parsed}
    assert paths == {("scheduler",), ("worker",), ("workers", "drain"), ("workers", "show")}
    # every value set's head and workers; the drain hook where it is on (all but "plain")
    assert sum(p.path == ("worker",) for p in parsed) == len(renders())
    assert sum(p.path == ("workers", "drain") for p in parsed) == len(renders()) - 1


def test_readme_command_lines_are_accepted() -> None:
    parsed = [parse_command(line) for line in readme_commands()]
    paths = {p.path for p in parsed}
    assert {("certs", "create"), ("token", "create"), ("workers", "drain"), ("workers", "show"), ("status",),
            ("submit",)} <= paths


def test_the_extra_arguments_of_the_chart_reach_the_cli() -> None:
    docs = chart_manifests({"worker": {"extraArgs": ["--max-restarts", "3"], "labels": {"zone": "a"},
                                       "daskResources": {"GPU": 1}},
                            "head": {"extraArgs": ["--standby-poll", "2"]}})
    lines = [line for doc in docs if pod_spec(doc) for c in containers(pod_spec(doc) or {})
             for line in container_commands(c)]
    by_path = {parse_command(line).path: parse_command(line).params for line in lines}
    assert by_path[("worker",)]["max_restarts"] == 3
    assert by_path[("worker",)]["label"] == ["profile=cpu", "zone=a"]
    assert by_path[("worker",)]["resources"] == ["GPU=1"]
    assert by_path[("scheduler",)]["standby_poll"] == 2.0


# -- the checks fail on what is broken ---------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    "clusterai scheduler --tls-cert head.pem --tls-key head.key",  # only `clusterai up` has them
    "clusterai scheduler --api-hots 0.0.0.0",
    "clusterai scheduler --port eighty",
    "clusterai worker tls://head:8786 --tokenfile /t",
    "clusterai worker tls://head:8786 --nthreads 0",
    "clusterai worker",                                             # the head's address is required
    "clusterai --url https://h:8000 worker tls://head:8786 --bogus",
    "clusterai workers rm w1",
    "clusterai workers drain",
    "clusterai workers drain w1 --wait soon",
    "clusterai --urll https://h:8000 status",
    "clusterai --token-file /t status",                            # the global options have no token file
    "clusterai workers",
    "clusterai tokens create x --role viewer",
    "clusterai token create x --role",
])
def test_the_cli_check_refuses_what_the_cli_refuses(argv: str) -> None:
    with pytest.raises(CheckFailed):
        parse_command(argv.split())


def test_a_bad_flag_in_the_chart_fails_the_check() -> None:
    docs = chart_manifests({"head": {"extraArgs": ["--no-such-flag"]}})
    head = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-head"))
    (line,) = container_commands(head["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(CheckFailed, match="no-such-flag"):
        parse_command(line)


def test_scripts_are_read_as_a_shell_reads_them() -> None:
    script = ('TOKEN="$(cat /t)"\nexport TOKEN\nexec clusterai --url https://h:8000 workers drain "$POD" --wait 30 '
              '|| exit\nif clusterai workers show "$POD" > /tmp/w.json; then echo ok; fi\n'
              "docker compose exec head clusterai status && kubectl -n ml exec deploy/x -- clusterai workers list\n"
              "docker compose run --rm --no-deps head sh -c 'clusterai token create a --role viewer' > a.token\n")
    lines = shell_commands(script)
    assert [parse_command(line).path for line in lines] == [
        ("workers", "drain"), ("workers", "show"), ("status",), ("workers", "list"), ("token", "create")]
    assert lines[0][-3:] == ["$POD", "--wait", "30"]
    # a clusterai the reader cannot find is reported, not skipped
    with pytest.raises(CheckFailed, match="names clusterai 1 times"):
        shell_commands("python -m something | xargs clusterai status\n")
    with pytest.raises(CheckFailed, match="cannot read"):
        argv_commands(["nice", "clusterai", "status"])
