"""`etcdlock operator`: its flags become one frozen OperatorConfig; each falls back to ETCDLOCK_<FLAG>."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from etcdlock.cli.main import build_parser, run
from etcdlock.cli.operator import operator_config
from etcdlock.etcd import EtcdConfig
from etcdlock.operator.config import OperatorConfig

ENVIRONMENT = {
    "ETCDLOCK_ETCD_ENDPOINTS": "http://127.0.0.1:23790",
    "ETCDLOCK_NAMESPACES": "team-a, team-b",
    "ETCDLOCK_KUBECONFIG": "/tmp/kubeconfig-from-env",
    "ETCDLOCK_METRICS": "127.0.0.1:19090",
    "ETCDLOCK_ELECTION": "/etcdlock/operator/other-leader",
    "ETCDLOCK_LEADER_TTL": "7",
    "ETCDLOCK_SHARED_KEY_PREFIXES": "/shared/a/,/shared/b/",
    "ETCDLOCK_WEBHOOK": "127.0.0.1:19443",
    "ETCDLOCK_WEBHOOK_CERT_DIR": "/tmp/certs-from-env",
    "ETCDLOCK_WEBHOOK_CONFIGURE": "true",
    "ETCDLOCK_POD_SWEEP_INTERVAL": "60",
    "ETCDLOCK_IMAGE": "registry.example.com/etcdlock:mirror",
    "ETCDLOCK_ALLOW_OUTSIDE_ETCD": "false",
    "ETCDLOCK_SECRET_RECHECK_INTERVAL": "5",
}


def _config(*flags: str) -> OperatorConfig:
    args = build_parser().parse_args(["operator", *flags])
    return operator_config(args, EtcdConfig.parse(args.endpoints))


def _operator_options() -> list[argparse.Action]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    own = commands.choices["operator"]._actions
    shared = {
        "--endpoints",
        "--user",
        "--cacert",
        "--cert",
        "--key",
        "--tls-server-name",
        "--request-timeout",
        "--verbose",
        "--help",
    }
    return [a for a in own if a.option_strings and not set(a.option_strings) & shared]


def test_every_operator_flag_names_its_environment_fallback() -> None:
    options = _operator_options()
    assert len(options) == len(ENVIRONMENT)
    for action in options:
        assert "ETCDLOCK_" in (action.help or ""), action.option_strings


def test_every_flag_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    config = _config()
    assert [(e.host, e.port) for e in config.etcd.endpoints] == [("127.0.0.1", 23790)]
    assert config.namespaces == ("team-a", "team-b")
    assert config.kubeconfig == "/tmp/kubeconfig-from-env"
    assert config.metrics == ("127.0.0.1", 19090)
    assert config.election is not None
    assert (config.election.name, config.election.ttl) == ("/etcdlock/operator/other-leader", 7)
    assert config.shared_key_prefixes == ("/shared/a/", "/shared/b/")
    assert config.webhook is not None
    assert (config.webhook.host, config.webhook.port) == ("127.0.0.1", 19443)
    assert (config.webhook.cert_dir, config.webhook.configure) == (Path("/tmp/certs-from-env"), True)
    assert config.pod_sweep_interval == 60
    assert config.image == "registry.example.com/etcdlock:mirror"
    assert (config.allow_outside_etcd, config.secret_recheck_interval) == (False, 5)


def test_a_flag_given_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    config = _config("--metrics", "off", "--election", "off", "--webhook", "off")
    assert (config.metrics, config.election, config.webhook) == (None, None, None)
    config = _config(
        "-n", "team-c", "--shared-key-prefix", "/only/", "--leader-ttl", "9", "--kubeconfig", "k"
    )
    assert (config.namespaces, config.shared_key_prefixes) == (("team-c",), ("/only/",))
    assert config.election is not None and config.election.ttl == 9 and config.kubeconfig == "k"
    config = _config("--allow-outside-etcd=true", "--secret-recheck-interval", "120")
    assert (config.allow_outside_etcd, config.secret_recheck_interval) == (True, 120)


def test_without_flags_or_environment_the_defaults_are_the_shipped_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    config = _config()
    assert config.namespaces == () and config.kubeconfig is None
    assert config.metrics == ("0.0.0.0", 9090)
    assert config.election is not None and (config.election.name, config.election.ttl) == (
        "/etcdlock/operator/leader",
        5,
    )
    assert config.webhook is not None and config.webhook.cert_dir == Path("/etc/etcdlock/webhook")
    assert config.exit_if_stuck
    assert (config.allow_outside_etcd, config.secret_recheck_interval) == (True, 30)


def test_the_configuration_cannot_be_changed_once_parsed() -> None:
    config = _config("--election", "off")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.namespaces = ("elsewhere",)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ETCDLOCK_LEADER_TTL", "soon", "argument --leader-ttl: not an integer: 'soon'"),
        ("ETCDLOCK_METRICS", "nowhere", "--metrics must be HOST:PORT or off, not 'nowhere'"),
        ("ETCDLOCK_WEBHOOK", "1.2.3.4:99999", "--webhook must be HOST:PORT or off, not '1.2.3.4:99999'"),
        (
            "ETCDLOCK_ALLOW_OUTSIDE_ETCD",
            "maybe",
            "argument --allow-outside-etcd: must be true or false, not 'maybe'",
        ),
        (
            "ETCDLOCK_SECRET_RECHECK_INTERVAL",
            "0",
            "argument --secret-recheck-interval: must be a whole number of seconds from 1, not '0'",
        ),
    ],
)
def test_a_bad_environment_value_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    assert run(["--endpoints", "http://127.0.0.1:9", "operator"]) == 1
    assert message in capsys.readouterr().err.strip().splitlines()[0]
