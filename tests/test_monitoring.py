"""The monitoring component (manifests/components/monitoring/): monitors, alerting rules and dashboard.

The rules are checked by Prometheus' own parser (``promtool check rules``) and their alerts by promtool's
unit tests (tests/monitoring/alerts.test.yaml: input series, expected alerts). Every metric the rules and
the dashboard read must be one the operator exports (read from its registry) or one a real etcd exports
(scraped from a three-member etcd of the sandbox), so a renamed metric fails here. promtool comes from
Debian's prometheus package, unpacked by the Makefile: ``ETCDLOCK_SANDBOX_PROMTOOL`` names it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from etcdlock.operator.etcdcluster.rendering import METRICS_PORT, described, statefulset
from etcdlock.operator.etcdcluster.spec import ClusterSpec
from etcdlock.operator.leadership import ReplicaStatus
from etcdlock.operator.metrics import Metrics
from etcdlock_sandbox.etcd import LocalEtcd, etcd_binary

ROOT = Path(__file__).resolve().parents[1]
COMPONENT = ROOT / "manifests" / "components" / "monitoring"
ALERT_TESTS = ROOT / "tests" / "monitoring" / "alerts.test.yaml"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
# Metrics etcd creates on first use (a failed send to a peer; the round-trip prober's first report): absent
# from a healthy cluster's scrape, so looked for in the etcd binary itself (their name in etcd's source).
CREATED_ON_FIRST_USE = {
    "etcd_network_peer_sent_failures_total": "peer_sent_failures_total",
    "etcd_network_peer_round_trip_time_seconds_bucket": "peer_round_trip_time_seconds",
}
PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}

Docs = list[dict[str, Any]]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = os.environ.get("ETCDLOCK_SANDBOX_PROMTOOL", "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            "ETCDLOCK_SANDBOX_PROMTOOL must name promtool (it is "
            f"{path or 'unset'}): run the tests through `make test`, or `make .tools/.installed` and "
            "ETCDLOCK_SANDBOX_PROMTOOL=$PWD/.tools/root/usr/bin/promtool"
        )
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Docs:
    """manifests/ with the component, as an admin's overlay outside manifests/ renders it."""
    overlay = tmp_path_factory.mktemp("overlay")
    base = os.path.relpath(ROOT / "manifests", overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [base],
                "components": [f"{base}/components/monitoring"],
            }
        )
    )
    done = subprocess.run(
        [KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def rules(docs: Docs) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "PrometheusRule", "etcdlock")["spec"]
    return spec


def write_rules(spec: dict[str, Any], path: Path, annotations: bool = True) -> Path:
    groups = [
        {
            **group,
            "rules": [
                {k: v for k, v in rule.items() if annotations or k != "annotations"}
                for rule in group["rules"]
            ],
        }
        for group in spec["groups"]
    ]
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=False)


# -- the monitors ------------------------------------------------------------------------------------------


def test_the_pod_monitor_scrapes_every_etcdcluster_members_metrics_port(installed: Docs) -> None:
    monitor = one(installed, "PodMonitor", "etcdlock-etcdclusters")["spec"]
    member = statefulset(ClusterSpec.parse("apps", "main", {"replicas": 3}))["spec"]["template"]
    labels = member["metadata"]["labels"]
    assert labels == described(ClusterSpec.parse("apps", "main", {"replicas": 3}))
    selector = monitor["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), "the members' pods are selected"
    assert selector["app.kubernetes.io/managed-by"] == "etcdlock", "only the operator's etcd pods"
    assert monitor["namespaceSelector"] == {"any": True}, "EtcdClusters live in any namespace"
    (endpoint,) = monitor["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in member["spec"]["containers"][0]["ports"]}
    assert ports[endpoint["port"]] == METRICS_PORT
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert relabel["cluster"]["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"]
    assert labels["app.kubernetes.io/instance"] == "main", "the cluster label is the EtcdCluster's name"
    assert relabel["job"]["replacement"] == "etcdlock-etcdclusters"


def test_the_etcdclusters_and_the_operators_own_etcd_are_told_apart(installed: Docs) -> None:
    """An EtcdCluster may be called etcdlock-etcd in the operator's namespace: its members' series and the
    operator's own etcd's must differ in a label the rules group by (the job)."""
    jobs = {}
    for name in ("etcdlock-etcdclusters", "etcdlock-etcd"):
        (endpoint,) = one(installed, "PodMonitor", name)["spec"]["podMetricsEndpoints"]
        jobs[name] = {r["targetLabel"]: r for r in endpoint["relabelings"]}["job"]["replacement"]
    assert len(set(jobs.values())) == 2, jobs
    etcd_rules = [r for g in rules(installed)["groups"] if g["name"] == "etcd" for r in g["rules"]]
    selector = 'job=~"' + "|".join(sorted(jobs.values())) + '"'
    for rule in etcd_rules:
        assert selector in rule["expr"], rule["alert"]
        for grouping in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
            assert grouping.startswith("job, namespace, cluster"), (rule["alert"], grouping)


def test_no_leader_reads_the_job_the_service_monitor_gives(installed: Docs) -> None:
    """absent() of the operator's job is what catches every replica down: the job must be the one the
    ServiceMonitor names (its jobLabel's value on the metrics Service)."""
    monitor = one(installed, "ServiceMonitor", "etcdlock-operator")["spec"]
    service = one(installed, "Service", "etcdlock-operator-metrics")
    job = service["metadata"]["labels"][monitor["jobLabel"]]
    (rule,) = [
        r
        for g in rules(installed)["groups"]
        for r in g["rules"]
        if r.get("alert") == "EtcdlockOperatorNoLeader"
    ]
    assert f'absent(etcdlock_operator_leader{{job="{job}"}})' in rule["expr"]


def test_the_operators_own_etcd_and_the_operator_are_scraped(installed: Docs) -> None:
    own = one(installed, "PodMonitor", "etcdlock-etcd")["spec"]
    etcd = one(installed, "StatefulSet", "etcdlock-etcd")["spec"]["template"]
    assert own["selector"]["matchLabels"].items() <= etcd["metadata"]["labels"].items()
    (endpoint,) = own["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in etcd["spec"]["containers"][0]["ports"]}

    monitor = one(installed, "ServiceMonitor", "etcdlock-operator")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s for s in installed if s["kind"] == "Service" and selector.items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in services] == ["etcdlock-operator-metrics"], "not the webhook's"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True, "the lock's and the cluster's namespace label is kept"
    (port,) = [p for p in services[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    deployment = one(installed, "Deployment", "etcdlock-operator")["spec"]["template"]
    (container,) = deployment["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    assert any(
        a == f"--metrics=0.0.0.0:{p['containerPort']}"
        for a in container["args"]
        for p in container["ports"]
        if p["name"] == port["targetPort"]
    )
    for doc in installed:
        if doc["kind"] in ("Service", "ConfigMap"):
            assert kubernetes_validate.validate(doc, "1.30", strict=True) == "1.30", doc["metadata"]["name"]
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert doc["metadata"]["namespace"] == "etcdlock-system"


def test_the_dashboard_is_a_configmap_grafana_loads(installed: Docs) -> None:
    config = one(installed, "ConfigMap", "etcdlock-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["etcdlock.json"])
    assert dashboard["uid"] == "etcdlock" and len(dashboard["panels"]) > 10
    titles = {p["title"] for p in dashboard["panels"] if p["type"] == "row"}
    assert titles == {"Locks", "EtcdClusters", "etcd members"}


# -- the rules ---------------------------------------------------------------------------------------------


def test_promtool_accepts_the_rules(installed: Docs, promtool: str, tmp_path: Path) -> None:
    path = write_rules(rules(installed), tmp_path / "rules.yaml")
    done = run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    count = sum(len(g["rules"]) for g in rules(installed)["groups"])
    assert f"SUCCESS: {count} rules found" in done.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text(path.read_text().replace("max by (namespace, lock) (", "max by (namespace, lock (", 1))
    assert run(promtool, "check", "rules", str(broken)).returncode != 0, "promtool does parse the PromQL"


def test_the_alerts_fire_on_the_series_they_watch(installed: Docs, promtool: str, tmp_path: Path) -> None:
    write_rules(rules(installed), tmp_path / "rules.yaml", annotations=False)
    cases = tmp_path / "alerts.test.yaml"
    shutil.copy(ALERT_TESTS, cases)
    done = run(promtool, "test", "rules", str(cases))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    # The same tests with one expectation turned round fail: promtool does compare.
    cases.write_text(ALERT_TESTS.read_text().replace("lock: quick,", "lock: slow,", 1))
    assert run(promtool, "test", "rules", str(cases)).returncode != 0


def test_every_operator_alert_has_a_promtool_test(installed: Docs) -> None:
    tested = {
        case["alertname"]
        for group in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in group["alert_rule_test"]
    }
    for group in rules(installed)["groups"]:
        alerts = {r["alert"] for r in group["rules"] if "alert" in r}
        if group["name"].startswith("etcdlock."):
            assert alerts <= tested, f"untested: {sorted(alerts - tested)}"
    assert {"etcdNoLeader", "etcdInsufficientMembers", "etcdMembersDown"} <= tested


# -- the metric names --------------------------------------------------------------------------------------


def metric_names(expression: str) -> set[str]:
    """The metric (and recorded rule) names a PromQL expression reads: what is left once strings, label
    matchers, ranges, grouping label lists, functions and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expression)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for found in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        word, call = found.group(1), found.group(2)
        if not call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def test_the_name_reader_finds_the_names() -> None:
    expression = (
        'sum by (namespace, lock) (rate(a_total{x="y", z=~"$v"}[5m])) > on (namespace) group_left '
        "clamp_min(10 * b:c, 900) and d offset 5m unless time() - e"
    )
    assert metric_names(expression) == {"a_total", "b:c", "d", "e"}


def used_names(docs: Docs) -> dict[str, set[str]]:
    """Every metric name the rules and the dashboard read, with where (for the failure message)."""
    used: dict[str, set[str]] = {}
    for group in rules(docs)["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                used.setdefault(name, set()).add(rule.get("alert") or rule["record"])
    dashboard = json.loads(one(docs, "ConfigMap", "etcdlock-dashboard")["data"]["etcdlock.json"])
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for query in queries:
        query = re.sub(r"^label_values\((.*), \w+\)$", r"\1", query)
        for name in metric_names(query):
            used.setdefault(name, set()).add("dashboard")
    return used


def operator_names() -> set[str]:
    """Every sample name the operator's registry can expose (the leadership metrics included)."""
    metrics = Metrics()
    ReplicaStatus(metrics)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name + suffix for family in metrics.registry.collect() for suffix in suffixes[family.type]}


@pytest.fixture(scope="module")
def etcd_names() -> Iterator[set[str]]:
    """The sample names a real three-member etcd exposes on its metrics endpoint, after a write."""
    with LocalEtcd(size=3) as cluster:
        cluster.etcdctl("put", "/monitoring", "x")
        with urllib.request.urlopen(f"{cluster.members[0].client_url}/metrics", timeout=10) as response:
            text = response.read().decode()
    yield {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}


def test_every_metric_the_rules_and_dashboard_read_is_exported(installed: Docs, etcd_names: set[str]) -> None:
    recorded = {r["record"] for g in rules(installed)["groups"] for r in g["rules"] if "record" in r}
    binary = Path(etcd_binary()).read_bytes()
    exported = operator_names() | etcd_names | recorded | {"up"}
    used = used_names(installed)
    assert {"etcdlock_etcdcluster_quorum", "etcd_server_has_leader", "etcdlock_lock_waiters"} <= set(used)
    for name, source in CREATED_ON_FIRST_USE.items():
        assert name in used, f"{name} is no longer used: drop it from CREATED_ON_FIRST_USE"
        assert source.encode() in binary, f"etcd no longer knows {name}"
        exported.add(name)
    unknown = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not unknown, f"neither the operator nor etcd exports: {unknown}"
    assert operator_names() & etcd_names == set()
