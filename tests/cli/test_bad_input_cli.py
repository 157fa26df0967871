"""Bad input: one line on stderr starting with "etcdlock:", exit status 1, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_support import Cli, assert_one_line_error, clean_env, queue_keys

EP = "{endpoints}"
NAME = "{name}"
UNREACHABLE = "http://127.0.0.1:1"
# How Python hands over an argument that is not UTF-8 (here the bytes ff fe): a str with surrogate escapes.
NOT_UTF8 = os.fsdecode(b"\xff\xfe")

CASES: dict[str, list[str]] = {
    "unknown-flag": ["--endpoints", EP, "lock", NAME, "--bogus"],
    "unknown-global-flag": ["--bogus", "--endpoints", EP, "lock", NAME],
    "unknown-command": ["--endpoints", EP, "frobnicate", NAME],
    "no-command": ["--endpoints", EP],
    "lock-missing-name": ["--endpoints", EP, "lock"],
    "status-missing-name": ["--endpoints", EP, "status"],
    "elect-missing-name": ["--endpoints", EP, "elect"],
    "lock-empty-name": ["--endpoints", EP, "lock", ""],
    "status-empty-name": ["--endpoints", EP, "status", ""],
    "elect-empty-name": ["--endpoints", EP, "elect", "", "proposal"],
    "ttl-zero": ["--endpoints", EP, "lock", NAME, "--ttl", "0"],
    "ttl-not-a-number": ["--endpoints", EP, "lock", NAME, "--ttl", "ten"],
    "timeout-negative": ["--endpoints", EP, "lock", NAME, "--timeout", "-1"],
    "timeout-not-a-number": ["--endpoints", EP, "lock", NAME, "--timeout", "soon"],
    "timeout-nan": ["--endpoints", EP, "lock", NAME, "--timeout", "nan"],
    "permits-zero": ["--endpoints", EP, "lock", NAME, "--permits", "0"],
    "status-permits-negative": ["--endpoints", EP, "status", NAME, "--permits", "-1"],
    "kill-grace-negative": ["--endpoints", EP, "lock", NAME, "--kill-grace", "-1", "--", "true"],
    "request-timeout-zero": ["--endpoints", EP, "--request-timeout", "0", "status", NAME],
    "status-bad-output": ["--endpoints", EP, "status", NAME, "-o", "yaml"],
    "command-after-dashes-on-status": ["--endpoints", EP, "status", NAME, "--", "true"],
    "lock-unreachable": ["--endpoints", UNREACHABLE, "lock", NAME],
    "lock-cmd-unreachable": ["--endpoints", UNREACHABLE, "lock", NAME, "--", "true"],
    "status-unreachable": ["--endpoints", UNREACHABLE, "status", NAME],
    "elect-unreachable": ["--endpoints", UNREACHABLE, "elect", NAME, "proposal"],
    "listen-unreachable": ["--endpoints", UNREACHABLE, "elect", NAME, "--listen"],
    "endpoint-bad-scheme": ["--endpoints", "ftp://x", "lock", NAME],
    "endpoint-bad-port": ["--endpoints", "http://host:notaport", "lock", NAME],
    "endpoint-port-out-of-range": ["--endpoints", "http://127.0.0.1:99999", "lock", NAME],
    "endpoint-with-path": ["--endpoints", "http://127.0.0.1:2379/v3", "lock", NAME],
    "endpoint-empty": ["--endpoints", "", "lock", NAME],
    "endpoints-mixed-schemes": ["--endpoints", f"{EP},https://127.0.0.1:2", "lock", NAME],
    "cert-without-key": ["--endpoints", EP, "--cert", "{cert}", "lock", NAME],
    "key-without-cert": ["--endpoints", EP, "--key", "{cert}", "lock", NAME],
    "cacert-missing-file": ["--endpoints", EP, "--cacert", "{missing}", "lock", NAME],
    "user-without-password": ["--endpoints", EP, "--user", "alice", "lock", NAME],
    "nonexistent-cmd": ["--endpoints", EP, "lock", NAME, "--", "{missing}"],
    "elect-proposal-and-listen": ["--endpoints", EP, "elect", NAME, "proposal", "--listen"],
    "elect-neither-proposal-nor-listen": ["--endpoints", EP, "elect", NAME],
    "lock-name-not-utf8": ["--endpoints", EP, "lock", NOT_UTF8],
    "lock-cmd-name-not-utf8": ["--endpoints", EP, "lock", NOT_UTF8, "--", "true"],
    "status-name-not-utf8": ["--endpoints", EP, "status", NOT_UTF8],
    "elect-name-not-utf8": ["--endpoints", EP, "elect", NOT_UTF8, "proposal"],
    "listen-name-not-utf8": ["--endpoints", EP, "elect", NOT_UTF8, "--listen"],
    "proposal-not-utf8": ["--endpoints", EP, "elect", NAME, NOT_UTF8],
    "holder-not-utf8": ["--endpoints", EP, "lock", NAME, "--holder", NOT_UTF8, "--", "true"],
    "user-not-utf8": ["--endpoints", EP, "--user", f"alice:{NOT_UTF8}", "status", NAME],
    "endpoint-not-utf8": ["--endpoints", f"http://{NOT_UTF8}:2379", "status", NAME],
}

# The exact line for the cases whose message is fixed, so that each names what is wrong.
MESSAGES: dict[str, str] = {
    "lock-name-not-utf8": r"etcdlock: argument NAME: not valid UTF-8: b'\xff\xfe' (see etcdlock --help)",
    "status-name-not-utf8": r"etcdlock: argument NAME: not valid UTF-8: b'\xff\xfe' (see etcdlock --help)",
    "elect-name-not-utf8": r"etcdlock: argument NAME: not valid UTF-8: b'\xff\xfe' (see etcdlock --help)",
    "proposal-not-utf8": r"etcdlock: argument PROPOSAL: not valid UTF-8: b'\xff\xfe' (see etcdlock --help)",
    "holder-not-utf8": r"etcdlock: argument --holder: not valid UTF-8: b'\xff\xfe' (see etcdlock --help)",
    "user-not-utf8": "etcdlock: --user NAME:PASSWORD is not valid UTF-8",
    "endpoint-not-utf8": r"etcdlock: etcd endpoint b'http://\xff\xfe:2379' is not valid UTF-8",
}


@pytest.fixture
def values(cli: Cli, name: str, tmp_path: Path) -> dict[str, str]:
    """What the placeholders of CASES and MESSAGES stand for."""
    garbage = tmp_path / "client.pem"
    garbage.write_text("not really a certificate\n")
    return {
        "endpoints": cli.endpoints,
        "name": name,
        "cert": str(garbage),
        "missing": str(tmp_path / "nope"),
    }


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_1(cli: Cli, values: dict[str, str], case: str) -> None:
    argv = [arg.format(**values) for arg in CASES[case]]

    assert_one_line_error(cli.etcdlock_raw(*argv))


@pytest.mark.parametrize("case", list(MESSAGES))
def test_bad_input_message_names_what_is_wrong(cli: Cli, values: dict[str, str], case: str) -> None:
    argv = [arg.format(**values) for arg in CASES[case]]

    line = assert_one_line_error(cli.etcdlock_raw(*argv))

    assert line == MESSAGES[case].format(**values)


def test_unreachable_endpoint_message_names_the_endpoint(cli: Cli, name: str) -> None:
    proc = cli.etcdlock_raw("--endpoints", UNREACHABLE, "lock", name)
    line = assert_one_line_error(proc)
    assert line.startswith(f"etcdlock: cannot reach etcd at {UNREACHABLE}")


def test_bad_endpoint_from_the_environment(cli: Cli, name: str) -> None:
    proc = cli.etcdlock_raw("lock", name, env=clean_env(ETCDLOCK_ENDPOINTS="ftp://x"))
    line = assert_one_line_error(proc)
    assert "ftp://x" in line


def test_usage_errors_point_to_help(cli: Cli, name: str) -> None:
    proc = cli.etcdlock_raw("--endpoints", cli.endpoints, "lock", name, "--bogus")
    line = assert_one_line_error(proc)
    assert "--bogus" in line and "etcdlock --help" in line


def test_nonexistent_cmd_leaves_no_key(cli: Cli, name: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-command")
    line = assert_one_line_error(cli.etcdlock("lock", name, "--", missing, "arg"))
    assert line.startswith(f"etcdlock: cannot run {missing}")
    assert queue_keys(cli.status(name)) == []


@pytest.mark.parametrize("command", [[], ["lock"], ["status"], ["elect"]])
def test_help_prints_usage_and_exits_0(cli: Cli, command: list[str]) -> None:
    proc = cli.etcdlock_raw(*command, "--help")
    assert proc.wait() == 0
    assert "usage: etcdlock" in proc.stdout and "--endpoints" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_connection_options_are_accepted_after_the_command(cli: Cli, name: str) -> None:
    proc = cli.etcdlock_raw("lock", name, "--endpoints", cli.endpoints, "--timeout", "0", "--", "true")
    assert proc.wait() == 0, proc.stderr
    proc = cli.etcdlock_raw("--endpoints", cli.endpoints, "status", name, "--endpoints", UNREACHABLE)
    line = assert_one_line_error(proc)
    assert UNREACHABLE in line
