"""What cluster admins install: manifests/ (rendered by kubectl's own kustomize) and the Dockerfile.

Every built-in object validates against the Kubernetes schemas (strict: no unknown field); cert-manager's
two objects are checked for the fields cert-manager requires. The operator Deployment is checked for what
high availability and a restricted namespace need, and its args are parsed by the real ``etcdlock
operator`` command line, the Dockerfile's entrypoint.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from etcdlock.cli.main import build_parser
from etcdlock.operator.names import LOCK_CHECK_PATH, WEBHOOK_PATH
from etcdlock.operator.webhook import ASKS_FOR_A_LOCK

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
KUBERNETES_VERSIONS = ("1.30", "1.37")
OVERLAYS = ("manifests", "manifests/without-cert-manager")


Docs = list[dict[str, Any]]


def rendered(overlay: str) -> Docs:
    done = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def installed() -> list[dict[str, Any]]:
    return rendered("manifests")


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str, version: str) -> None:
    docs = rendered(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {"Namespace", "CustomResourceDefinition", "ClusterRole", "Deployment", "StatefulSet"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("cert-manager.io/"):
            continue
        assert kubernetes_validate.validate(doc, version, strict=True) == version, doc["metadata"]["name"]
    namespaced = [d for d in docs if d["kind"] not in ("Namespace", "CustomResourceDefinition")]
    cluster_scoped = (
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    )
    for doc in namespaced:
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == "etcdlock-system", doc["metadata"]["name"]


def test_cert_manager_issues_the_webhook_certificate_the_operator_mounts(
    installed: list[dict[str, Any]],
) -> None:
    certificate = one(installed, "Certificate", "etcdlock-webhook")
    issuer = one(installed, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert issuer["spec"] == {"selfSigned": {}}
    assert "etcdlock-webhook.etcdlock-system.svc" in certificate["spec"]["dnsNames"]
    webhook = one(installed, "MutatingWebhookConfiguration", "etcdlock.io")
    assert (
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        == "etcdlock-system/etcdlock-webhook"
    )
    deployment = one(installed, "Deployment", "etcdlock-operator")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["webhook-certificate"]["secret"]["secretName"] == certificate["spec"]["secretName"]
    without = rendered("manifests/without-cert-manager")
    assert not [d for d in without if d["apiVersion"].startswith("cert-manager.io/")]


def test_the_webhook_reaches_the_operator_and_never_blocks_pods(installed: Docs) -> None:
    (hook,) = one(installed, "MutatingWebhookConfiguration", "etcdlock.io")["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    assert hook["rules"][0]["resources"] == ["pods"] and hook["rules"][0]["operations"] == [
        "CREATE",
        "UPDATE",
    ]
    (condition,) = hook["matchConditions"]
    assert condition["expression"] == ASKS_FOR_A_LOCK, "only pods asking for a lock reach the webhook"
    service_ref = hook["clientConfig"]["service"]
    assert service_ref["path"] == WEBHOOK_PATH
    service = one(installed, "Service", service_ref["name"])
    assert service["metadata"]["namespace"] == service_ref["namespace"]
    deployment = one(installed, "Deployment", "etcdlock-operator")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "webhook" and ports["webhook"] == 9443


def test_lock_keys_are_checked_at_admission_without_making_lock_edits_depend_on_it(installed: Docs) -> None:
    (hook,) = one(installed, "ValidatingWebhookConfiguration", "etcdlock.io")["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    (rule,) = hook["rules"]
    assert (rule["resources"], sorted(rule["operations"])) == (["distributedlocks"], ["CREATE", "UPDATE"])
    service_ref = hook["clientConfig"]["service"]
    assert service_ref["path"] == LOCK_CHECK_PATH
    assert one(installed, "Service", service_ref["name"])["metadata"]["namespace"] == service_ref["namespace"]


def test_the_operator_deployment_is_highly_available_and_locked_down(installed: Docs) -> None:
    deployment = one(installed, "Deployment", "etcdlock-operator")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 3
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    pdb = one(installed, "PodDisruptionBudget", "etcdlock-operator")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert (
        pod["serviceAccountName"] == one(installed, "ServiceAccount", "etcdlock-operator")["metadata"]["name"]
    )
    etcd_pdb = one(installed, "PodDisruptionBudget", "etcdlock-etcd")
    assert (
        etcd_pdb["spec"]["minAvailable"]
        == one(installed, "StatefulSet", "etcdlock-etcd")["spec"]["replicas"] // 2 + 1
    )


def test_the_deployment_args_are_what_the_dockerfile_entrypoint_accepts(
    installed: list[dict[str, Any]],
) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\w+))?", dockerfile, flags=re.MULTILINE | re.IGNORECASE)
    assert len(stages) >= 2, "multi-stage"
    user = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert user and not user[-1].startswith(("0", "root")), "runs as a non-root user"
    (entrypoint,) = re.findall(r"^ENTRYPOINT\s+(\[.*\])", dockerfile, flags=re.MULTILINE)
    assert yaml.safe_load(entrypoint) == ["etcdlock", "operator"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["etcdlock"] == "etcdlock.cli:main"
    (container,) = one(installed, "Deployment", "etcdlock-operator")["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(["operator", *container["args"]])
    assert args.webhook == "0.0.0.0:9443" and args.metrics == "0.0.0.0:9090"
    assert {e["name"] for e in container["env"]} == {"ETCDLOCK_ETCD_ENDPOINTS"}


def test_the_operators_etcd_talks_tls_with_certificates_of_its_own_ca(installed: Docs) -> None:
    """Peers and clients over TLS with client certificates; cert-manager issues the members' and the
    operator's from one CA, whose Secrets the StatefulSet and the Deployment mount where their flags say."""
    etcd = one(installed, "StatefulSet", "etcdlock-etcd")["spec"]["template"]["spec"]
    command = etcd["containers"][0]["command"]
    flags = dict(arg[2:].split("=", 1) if "=" in arg else (arg[2:], "") for arg in command[1:])
    for url in (
        "listen-client-urls",
        "advertise-client-urls",
        "listen-peer-urls",
        "initial-advertise-peer-urls",
    ):
        assert flags[url].startswith("https://"), url
    assert all(
        member.split("=", 1)[1].startswith("https://") for member in flags["initial-cluster"].split(",")
    )
    assert "client-cert-auth" in flags and "peer-client-cert-auth" in flags
    assert flags["listen-metrics-urls"].startswith("http://")  # probes and Prometheus
    mounts = {m["name"]: m["mountPath"] for m in etcd["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in etcd["volumes"]}
    member_secret = volumes["tls"]["secret"]["secretName"]
    for flag in ("cert-file", "key-file", "trusted-ca-file", "peer-cert-file", "peer-trusted-ca-file"):
        assert flags[flag].startswith(mounts["tls"] + "/"), flag
    member = one(installed, "Certificate", "etcdlock-etcd")["spec"]
    assert member["secretName"] == member_secret
    assert {"server auth", "client auth"} <= set(member["usages"])
    assert {"*.etcdlock-etcd.etcdlock-system.svc", "etcdlock-etcd-client"} <= set(member["dnsNames"])
    issuer = one(installed, "Issuer", member["issuerRef"]["name"])
    ca = one(installed, "Certificate", "etcdlock-etcd-ca")["spec"]
    assert ca["isCA"] and issuer["spec"]["ca"]["secretName"] == ca["secretName"]
    operator = one(installed, "Deployment", "etcdlock-operator")["spec"]["template"]["spec"]
    container = operator["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    assert env["ETCDLOCK_ETCD_ENDPOINTS"] == "https://etcdlock-etcd-client:2379"
    mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secrets = {v["name"]: (v.get("secret") or {}).get("secretName") for v in operator["volumes"]}
    client = one(installed, "Certificate", "etcdlock-etcd-client")["spec"]
    assert client["issuerRef"] == member["issuerRef"] and client["usages"][0] == "client auth"
    (volume,) = [name for name, secret in secrets.items() if secret == client["secretName"]]
    for flag, file in (("--cacert", "ca.crt"), ("--cert", "tls.crt"), ("--key", "tls.key")):
        assert f"{flag}={mounted[volume]}/{file}" in container["args"]
    # Without cert-manager the same Secrets are expected, made by hand.
    without = rendered("manifests/without-cert-manager")
    assert (
        one(without, "StatefulSet", "etcdlock-etcd")["spec"]["template"]["spec"]["volumes"] == etcd["volumes"]
    )
