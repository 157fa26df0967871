"""Bad input: one line on stderr starting with "etcdlock:", exit status 1, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import Cli, assert_one_line_error, clean_env, pid_alive, queue_keys

from etcdlock_sandbox.etcd import LocalEtcd, LocalTls

EP = "{endpoints}"
NAME = "{name}"
UNREACHABLE = "http://127.0.0.1:1"
# How Python hands over an argument that is not UTF-8 (here the bytes ff fe): a str with surrogate escapes.
NOT_UTF8 = os.fsdecode(b"\xff\xfe")
MAX_TTL = "9000000000"  # etcd's maximum lease TTL
MAX_INT64 = str(2**63 - 1)
TOO_BIG = "99999999999999999999"
NO_SERVERS = ["--metrics", "off", "--webhook", "off"]  # in case the operator starts: no ports taken

# The init container's command with its member flags; each case adds the store and the data directory.
RESTORE = [
    "restore-member",
    "--snapshot=0000000000000001/full/00000000000000000001.db",
    "--sha256=00",
    "--name=m",
    "--initial-cluster=m=http://127.0.0.1:1",
    "--initial-cluster-token=t",
    "--initial-advertise-peer-urls=http://127.0.0.1:1",
]

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
    "status-bad-output": ["--endpoints", EP, "status", NAME, "-o", "xml"],
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
    "restore-member-bad-store": [*RESTORE, "--store=ftp://x", "--data-dir={missing}/data"],
    "restore-member-no-snapshot": [*RESTORE, "--store=file://{missing}-store", "--data-dir={missing}/data"],
    "restore-member-unwritable": [*RESTORE, "--store=file://{missing}-store", "--data-dir=/proc/nope/data"],
    "restore-member-missing-flag": ["restore-member", "--store=file:///tmp"],
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
    "ttl-too-large": ["--endpoints", EP, "lock", NAME, "--ttl", TOO_BIG],
    "ttl-above-etcd-maximum": ["--endpoints", EP, "lock", NAME, "--ttl", "9000000001"],
    "elect-ttl-too-large": ["--endpoints", EP, "elect", NAME, "proposal", "--ttl", TOO_BIG],
    "operator-leader-ttl-too-large": ["--endpoints", EP, "operator", *NO_SERVERS, "--leader-ttl", TOO_BIG],
    "permits-too-large": ["--endpoints", EP, "lock", NAME, "--permits", TOO_BIG],
    "status-permits-too-large": ["--endpoints", EP, "status", NAME, "--permits", TOO_BIG],
    "sandbox-port-too-large": ["sandbox", "up", "--dir", "{missing}", "--port", "65536"],
    "request-timeout-inf": ["--endpoints", EP, "--request-timeout", "inf", "status", NAME],
    "request-timeout-overflows-to-inf": ["--endpoints", EP, "--request-timeout", "1e999", "status", NAME],
    "request-timeout-huge": ["--endpoints", EP, "--request-timeout", "1e300", "status", NAME],
    "endpoint-unbalanced-ipv6-bracket": ["--endpoints", "http://[::1", "lock", NAME],
    "endpoint-port-zero": ["--endpoints", "http://127.0.0.1:0", "lock", NAME],
    "endpoint-with-credentials": ["--endpoints", "http://alice:secret@127.0.0.1:2379", "lock", NAME],
    "cacert-not-pem": ["--endpoints", EP, "--cacert", "{garbage}", "status", NAME],
    "cacert-is-a-key": ["--endpoints", EP, "--cacert", "{client_key}", "status", NAME],
    "cert-not-pem": ["--cert", "{garbage}", "--key", "{client_key}", "status", NAME],
    "key-not-pem": ["--cert", "{client_cert}", "--key", "{garbage}", "status", NAME],
    "cert-and-key-mismatch": ["--cert", "{client_cert}", "--key", "{server_key}", "status", NAME],
    "key-encrypted": ["--cert", "{client_cert}", "--key", "{encrypted_key}", "status", NAME],
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
    "ttl-too-large": "etcdlock: argument --ttl: must be at most 9000000000 (etcd's maximum lease TTL): "
    f"'{TOO_BIG}' (see etcdlock --help)",
    "ttl-above-etcd-maximum": "etcdlock: argument --ttl: must be at most 9000000000 (etcd's maximum lease "
    "TTL): '9000000001' (see etcdlock --help)",
    "elect-ttl-too-large": "etcdlock: argument --ttl: must be at most 9000000000 (etcd's maximum lease TTL): "
    f"'{TOO_BIG}' (see etcdlock --help)",
    "permits-too-large": f"etcdlock: argument --permits: must be at most {MAX_INT64} (etcd's int64 limit): "
    f"'{TOO_BIG}' (see etcdlock --help)",
    "status-permits-too-large": f"etcdlock: argument --permits: must be at most {MAX_INT64} (etcd's int64 "
    f"limit): '{TOO_BIG}' (see etcdlock --help)",
    "sandbox-port-too-large": "etcdlock: argument --port: must be at most 65535 (the largest TCP port): "
    "'65536' (see etcdlock --help)",
    "request-timeout-inf": "etcdlock: argument --request-timeout: must be at most 86400 (one day): 'inf' "
    "(see etcdlock --help)",
    "endpoint-unbalanced-ipv6-bracket": "etcdlock: etcd endpoint 'http://[::1' is not a valid URL: "
    "Invalid IPv6 URL",
    "endpoint-port-zero": "etcdlock: etcd endpoint 'http://127.0.0.1:0': invalid port 0 (use 1-65535, "
    "or no port for 2379)",
    "endpoint-with-credentials": "etcdlock: etcd endpoint 'http://***@127.0.0.1:2379' has credentials in "
    "it; give them with --user NAME:PASSWORD",
    "cacert-not-pem": "etcdlock: CA file {garbage} (--cacert) holds no PEM certificate "
    "(NO_CERTIFICATE_OR_CRL_FOUND)",
    "cacert-is-a-key": "etcdlock: CA file {client_key} (--cacert) holds no PEM certificate "
    "(NO_CERTIFICATE_OR_CRL_FOUND)",
    "cert-not-pem": "etcdlock: client certificate {garbage} (--cert) holds no PEM certificate "
    "(NO_CERTIFICATE_OR_CRL_FOUND)",
    "key-not-pem": "etcdlock: private key {garbage} (--key) holds no PEM private key",
    "cert-and-key-mismatch": "etcdlock: client certificate {client_cert} (--cert) and private key "
    "{server_key} (--key) do not match",
    "key-encrypted": "etcdlock: private key {encrypted_key} (--key) is encrypted, and etcdlock cannot ask "
    "for its passphrase; give an unencrypted copy (openssl pkey -in KEY -out NEW)",
}


@pytest.fixture
def values(cli: Cli, name: str, tmp_path: Path, tls: LocalTls, encrypted_client_key: Path) -> dict[str, str]:
    """What the placeholders of CASES and MESSAGES stand for."""
    garbage = tmp_path / "client.pem"
    garbage.write_text("not really a certificate\n")
    return {
        "endpoints": cli.endpoints,
        "name": name,
        "cert": str(garbage),
        "garbage": str(garbage),
        "missing": str(tmp_path / "nope"),
        "client_cert": str(tls.client_cert_file),
        "client_key": str(tls.client_key_file),
        "server_key": str(tls.server_key_file),
        "encrypted_key": str(encrypted_client_key),
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


# --- the largest values are accepted and mean what they say -------------------------------------------------


def test_the_largest_ttl_and_permits_are_accepted(cli: Cli, name: str) -> None:
    proc = cli.run("lock", name, "--ttl", MAX_TTL, "--permits", MAX_INT64, "--timeout", "0", "--", "true")
    assert proc.popen.returncode == 0, proc.describe()
    status = cli.run("status", name, "--permits", MAX_INT64)
    assert status.popen.returncode == 0, status.describe()
    assert status.stdout.startswith(f"{name}: 0/{MAX_INT64} held")


def test_the_largest_request_timeout_is_accepted(cli: Cli, name: str) -> None:
    proc = cli.run("--request-timeout", "86400", "status", name)
    assert proc.popen.returncode == 0, proc.describe()


@pytest.mark.parametrize("timeout", ["inf", "1e999"])
def test_timeout_inf_waits_for_ever(cli: Cli, name: str, timeout: str) -> None:
    holder = cli.etcdlock("lock", name)
    holder.readlines(2)
    waiter = cli.etcdlock("lock", name, "--timeout", timeout)
    cli.wait_queue(name, holders=1, waiters=1)
    waiter.assert_waiting()

    holder.signal(signal.SIGTERM)
    assert holder.wait() == 0, holder.describe()
    key = waiter.readline()
    assert key.startswith(f"{name}/")
    waiter.signal(signal.SIGTERM)
    assert waiter.wait() == 0, waiter.describe()


def test_kill_grace_inf_never_kills_and_a_cmd_that_stops_on_sigterm_ends_with_exit_3(
    cli: Cli, etcd: LocalEtcd, name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    script = f"trap 'echo term >> {marker}; exit 0' TERM; echo ready $$; while :; do sleep 0.05; done"
    runner = cli.etcdlock("lock", name, "--kill-grace", "inf", "--", "sh", "-c", script)
    _, pid = runner.readline().split()
    (held,) = cli.status(name)["holders"]

    assert etcd.etcdctl("lease", "revoke", held["lease"]).returncode == 0

    assert runner.wait(10) == 3, runner.describe()
    assert not pid_alive(int(pid))
    assert marker.read_text() == "term\n"
    lines = runner.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("etcdlock: lock lost"), runner.stderr


# A Ctrl-C that lands while the command is still loading (gRPC and the engine: a moment, longer on a busy
# machine): the signal is sent, for real, at the moment the command's modules are imported.
CTRL_C_WHILE_LOADING = """
import builtins, os, signal, sys
load = builtins.__import__
def interrupted_while_loading(name, *args, **kwargs):
    if name == "etcdlock.cli.main":
        os.kill(os.getpid(), signal.SIGINT)
    return load(name, *args, **kwargs)
builtins.__import__ = interrupted_while_loading
sys.argv = ["etcdlock", "--endpoints", "http://127.0.0.1:1", "status", "x"]
from etcdlock.cli import main
main()
"""


def test_ctrl_c_while_the_command_loads_is_one_line_not_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_LOADING],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "etcdlock: interrupted\n")
