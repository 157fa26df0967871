"""An EtcdCluster's TLS without a cluster: what ``spec.tls`` means, the certificates the operator's CA
issues (checked by Python's ssl and by real etcd 3.5 and 3.4 serving them), when they are issued again,
the Certificates asked of cert-manager, and the members' flags, volume and restart rule."""

from __future__ import annotations

import datetime
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from cryptography import x509

from etcdlock.operator.credentials import CA, CERT, KEY, ClientCredentials
from etcdlock.operator.errors import InvalidSpec
from etcdlock.operator.etcdcluster import ClusterSpec, statefulset
from etcdlock.operator.etcdcluster import certificates as pki
from etcdlock.operator.etcdcluster.issuer import certificate_requests, reissue_reason
from etcdlock.operator.etcdcluster.rendering import TEMPLATE_HASH
from etcdlock.operator.etcdcluster.spec import seconds
from etcdlock.operator.etcdcluster.tls import IssuerRef, TlsSpec, member_names, parse_tls
from etcdlock_sandbox.etcd import LocalEtcd, LocalTls, etcd_binary
from etcdlock_sandbox.podspec import ETCD_3_4

NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
BODY = {
    "apiVersion": "etcdlock.io/v1alpha1",
    "kind": "EtcdCluster",
    "metadata": {"name": "e", "namespace": "ns", "uid": "u-1"},
}


def test_spec_tls_defaults_and_refusals() -> None:
    assert parse_tls(None, seconds) is None
    own = parse_tls({}, seconds)
    assert own == TlsSpec(None, 2160 * 3600.0) and own.describe() == "etcdlock"
    assert own.renew_before == 720 * 3600.0
    managed = parse_tls({"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}, "duration": "24h"}, seconds)
    assert managed == TlsSpec(IssuerRef("ca", "ClusterIssuer"), 86400.0)
    assert managed.describe() == "ClusterIssuer/ca"
    for bad, message in (
        ("yes", "spec.tls must be an object"),
        ({"duration": "1d"}, "spec.tls.duration must look like 2160h"),
        ({"duration": "30s"}, "at least 1m"),
        ({"issuerRef": {}}, "spec.tls.issuerRef.name"),
        ({"issuerRef": {"name": "ca", "kind": "Vault"}}, "Issuer or ClusterIssuer"),
        ({"issuerRef": {"name": "ca"}, "duration": "30m"}, "at least 1h with an issuerRef"),
    ):
        with pytest.raises(InvalidSpec, match=message):
            parse_tls(bad, seconds)
    spec = ClusterSpec.parse("ns", "e", {"tls": {}})
    assert spec.client_url == "https://e-client.ns.svc:2379"
    assert spec.peer_url(1) == "https://e-1.e.ns.svc:2380" and spec.client_url_of(2).startswith("https://")


def test_the_operator_ca_issues_member_and_client_certificates_python_verifies(tmp_path: Path) -> None:
    ca = pki.new_ca("test CA", NOW)
    member = pki.issue(ca, "e member", 90 * DAY, NOW, names=member_names("ns", "e"), server=True)
    client = pki.issue(ca, "e-client", 90 * DAY, NOW)
    assert pki.signed_by(member.cert, ca.cert) and pki.signed_by(client.cert, ca.cert)
    assert not pki.signed_by(member.cert, pki.new_ca("other", NOW).cert)
    assert {"*.e.ns.svc", "e-client.ns.svc", "127.0.0.1"} <= pki.names_of(member.cert)
    assert pki.not_after(member.cert) == NOW + 90 * DAY
    usages = x509.load_pem_x509_certificate(client.cert).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    )
    assert [u.dotted_string for u in usages.value] == ["1.3.6.1.5.5.7.3.2"]  # client auth only
    basic = x509.load_pem_x509_certificate(ca.cert).extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.value.ca and basic.value.path_length == 0
    for name, issued in (("member", member), ("client", client)):
        (tmp_path / f"{name}.crt").write_bytes(issued.cert)
        (tmp_path / f"{name}.key").write_bytes(issued.key)
        ssl.create_default_context().load_cert_chain(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")


@pytest.mark.parametrize("build", ["3.5", "3.4"])
def test_real_etcd_serves_the_member_certificate_and_takes_the_client_one(tmp_path: Path, build: str) -> None:
    """The certificates as etcd itself checks them: the member's for its server (127.0.0.1 among its
    names), the client's for client-certificate authentication."""
    ca = pki.new_ca("test CA", datetime.datetime.now(datetime.UTC))
    now = datetime.datetime.now(datetime.UTC)
    member = pki.issue(ca, "member", DAY, now, names=member_names("ns", "e"), server=True)
    client = pki.issue(ca, "client", DAY, now)
    files = {"ca.crt": ca.cert, "member.crt": member.cert, "member.key": member.key}
    files |= {"client.crt": client.cert, "client.key": client.key}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    tls = LocalTls(
        tmp_path / "ca.crt",
        tmp_path / "member.crt",
        tmp_path / "member.key",
        tmp_path / "client.crt",
        tmp_path / "client.key",
    )
    binary = None
    if build == "3.4":
        binary = os.environ.get(ETCD_3_4)
        assert binary, f"{ETCD_3_4} is not set: run through make, or export it"
    with LocalEtcd(tls=tls, binary=binary) as etcd:
        put = subprocess.run(
            [
                etcd_binary("etcdctl"),
                f"--endpoints={etcd.endpoints[0]}",
                *tls.etcdctl_args(),
                "put",
                "k",
                "v",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert put.returncode == 0, put.stderr
        anonymous = subprocess.run(
            [
                etcd_binary("etcdctl"),
                f"--endpoints={etcd.endpoints[0]}",
                f"--cacert={tls.ca_file}",
                "get",
                "k",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert anonymous.returncode != 0


def pems(issued: pki.Issued, ca: pki.Issued) -> dict[str, bytes]:
    return {CA: ca.cert, CERT: issued.cert, KEY: issued.key}


def test_a_certificate_is_issued_again_only_when_it_must() -> None:
    tls = TlsSpec(duration=(90 * DAY).total_seconds())
    ca = pki.new_ca("ca", NOW)
    names = set(member_names("ns", "e"))
    good = pki.issue(ca, "m", 90 * DAY, NOW, names=tuple(names), server=True)
    assert reissue_reason(pems(good, ca), ca.cert, names, tls, NOW + DAY) == ""
    assert reissue_reason(None, ca.cert, names, tls, NOW) == "missing"
    assert "lacks" in reissue_reason({CA: ca.cert, CERT: good.cert}, ca.cert, names, tls, NOW)
    other = pki.new_ca("other", NOW)
    assert "not signed" in reissue_reason(pems(good, ca), other.cert, names, tls, NOW)
    assert "every name" in reissue_reason(pems(good, ca), ca.cert, names | {"new.name"}, tls, NOW)
    assert "duration changed" in reissue_reason(pems(good, ca), ca.cert, names, TlsSpec(duration=3600.0), NOW)
    # Renewed once two thirds of the lifetime have passed.
    assert reissue_reason(pems(good, ca), ca.cert, names, tls, NOW + 59 * DAY) == ""
    assert "expires" in reissue_reason(pems(good, ca), ca.cert, names, tls, NOW + 61 * DAY)


def test_cert_manager_is_asked_for_a_member_and_a_client_certificate() -> None:
    tls = TlsSpec(IssuerRef("corp-ca", "ClusterIssuer"), 3600.0)
    member, client = certificate_requests(BODY, tls)
    assert member["metadata"]["name"] == "e-member" and client["metadata"]["name"] == "e-client"
    assert member["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    spec = member["spec"]
    assert spec["secretName"] == "e-member-tls"
    assert spec["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert (spec["duration"], spec["renewBefore"]) == ("3600s", "1200s")
    assert "*.e.ns.svc" in spec["dnsNames"] and spec["ipAddresses"] == ["127.0.0.1"]
    assert {"server auth", "client auth"} <= set(spec["usages"])
    assert client["spec"]["secretName"] == "e-client-tls" and "server auth" not in client["spec"]["usages"]


def container(sts: dict[str, Any]) -> dict[str, Any]:
    return dict(sts["spec"]["template"]["spec"]["containers"][0])


def test_tls_members_serve_https_with_client_certificates_from_their_secret() -> None:
    spec = ClusterSpec.parse("ns", "e", {"replicas": 3, "tls": {}})
    sts = statefulset(spec, ca_digest="abc")
    command = container(sts)["command"]
    given = dict(arg[2:].split("=", 1) if "=" in arg else (arg[2:], "") for arg in command[1:])
    assert given["listen-client-urls"] == "https://0.0.0.0:2379"
    assert given["advertise-client-urls"] == "https://$(POD_NAME).e.ns.svc:2379"
    assert given["listen-peer-urls"] == "https://0.0.0.0:2380"
    assert given["initial-cluster"].startswith("e-0=https://e-0.e.ns.svc:2380")
    assert given["cert-file"] == given["peer-cert-file"] == "/etc/etcd/tls/tls.crt"
    assert given["trusted-ca-file"] == given["peer-trusted-ca-file"] == "/etc/etcd/tls/ca.crt"
    assert "client-cert-auth" in given and "peer-client-cert-auth" in given
    assert given["listen-metrics-urls"] == "http://0.0.0.0:2381"  # probes and Prometheus stay plain
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "e-member-tls"
    assert {"name": "tls", "mountPath": "/etc/etcd/tls", "readOnly": True} in container(sts)["volumeMounts"]
    for version in ("1.30", "1.37"):
        assert kubernetes_validate.validate(sts, version, strict=True) == version


def test_a_new_ca_restarts_the_members_and_plain_clusters_keep_their_template() -> None:
    spec = ClusterSpec.parse("ns", "e", {"tls": {}})

    def hashed(sts: dict[str, Any]) -> str:
        return str(sts["spec"]["template"]["metadata"]["annotations"][TEMPLATE_HASH])

    assert hashed(statefulset(spec, ca_digest="one")) != hashed(statefulset(spec, ca_digest="two"))
    # The template hash a cluster without TLS had before TLS existed (its emptyDir or claim volume is left
    # out, as before): an operator of this version restarts none of its members.
    for raw in ({}, {"storage": {"size": "1Gi"}}):
        assert hashed(statefulset(ClusterSpec.parse("ns", "e", raw))) == "e18d3988a775"


def test_client_credentials_are_files_named_by_their_content(tmp_path: Path) -> None:
    credentials = ClientCredentials()
    try:
        ca = pki.new_ca("ca", NOW)
        first = pki.issue(ca, "c", DAY, NOW)
        files = credentials.files("ns", "e", pems(first, ca))
        assert Path(files.cert_file).read_bytes() == first.cert
        assert oct(Path(files.key_file).stat().st_mode)[-3:] == "600"
        assert credentials.files("ns", "e", pems(first, ca)) == files
        renewed = credentials.files("ns", "e", pems(pki.issue(ca, "c", DAY, NOW), ca))
        assert renewed != files and Path(files.cert_file).exists()
        assert files.config("https://e-client.ns.svc:2379").uses_tls
    finally:
        credentials.close()
    assert not Path(files.cert_file).exists()
