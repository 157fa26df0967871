"""Helpers of the operator tests (no fixtures here): bounded polling, lock and pod reads and writes, and
the operator run in a thread of its own, as ``etcdlock operator`` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiClient

from etcdlock.etcd import EtcdConfig
from etcdlock.operator.config import ElectionSettings, OperatorConfig, WebhookSettings
from etcdlock.operator.names import WEBHOOK_CONFIGURATION
from etcdlock.operator.run import run_operator
from etcdlock.operator.webhook import configuration, validation
from etcdlock_sandbox.cluster import SandboxThread
from etcdlock_sandbox.etcd import LocalEtcd, free_port
from etcdlock_sandbox.replicas import OperatorProcess

GROUP, VERSION, PLURAL = "etcdlock.io", "v1alpha1", "distributedlocks"
BOUND = 15.0


def eventually(read: Callable[[], Any], ok: Callable[[Any], bool], what: str, bound: float = BOUND) -> Any:
    """Poll ``read`` until ``ok`` holds, for at most ``bound`` seconds."""
    deadline = time.monotonic() + bound
    value = read()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen: {value!r}")
        time.sleep(0.05)
        value = read()
    return value


@contextlib.contextmanager
def tolerating(status: int) -> Iterator[None]:
    """An API call whose failure with ``status`` (409 exists, 404 gone) is the outcome wanted anyway."""
    try:
        yield
    except kubernetes.client.ApiException as exc:
        if exc.status != status:
            raise


@contextlib.contextmanager
def webhooks_registered(api: ApiClient, settings: WebhookSettings, namespace: str) -> Iterator[None]:
    """Pods created in ``namespace`` gated, and its DistributedLocks checked, by the webhook server of
    ``settings``, as the shipped configurations send them to the operator's Service (by URL here: there is
    no Service network in the sandbox)."""
    registrations = kubernetes.client.AdmissionregistrationV1Api(api)
    name = f"etcdlock-{namespace}"
    registrations.create_mutating_webhook_configuration(configuration(settings, name, namespace))
    registrations.create_validating_webhook_configuration(validation(settings, name, namespace))
    try:
        yield
    finally:
        registrations.delete_validating_webhook_configuration(name)
        registrations.delete_mutating_webhook_configuration(name)


def forget_self_registered_webhooks(api: ApiClient) -> None:
    """Delete the webhook configurations replicas started with --webhook-configure wrote."""
    registrations = kubernetes.client.AdmissionregistrationV1Api(api)
    with tolerating(404):
        registrations.delete_mutating_webhook_configuration(WEBHOOK_CONFIGURATION)
    with tolerating(404):
        registrations.delete_validating_webhook_configuration(WEBHOOK_CONFIGURATION)


def wait_listening(host: str, port: int) -> None:
    """Wait until something accepts connections at host:port (the webhook starts after kopf is ready)."""

    def accepts() -> bool:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return False
        return True

    eventually(accepts, bool, f"a listener at {host}:{port}")


def create_lock(api: ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DistributedLock", "metadata": {"name": name}}
    objects = kubernetes.client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {**body, "spec": spec})


def delete_lock(api: ApiClient, namespace: str, name: str) -> None:
    kubernetes.client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )


def status_of(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    objects = kubernetes.client.CustomObjectsApi(api)
    obj = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return dict(obj.get("status") or {})


def events_of(api: ApiClient, namespace: str, name: str) -> list[tuple[str, str]]:
    found = kubernetes.client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return [(event.reason, event.message) for event in found.items]


def event_reasons(api: ApiClient, namespace: str, name: str, *reasons: str) -> list[str]:
    """Wait until Events with every one of ``reasons`` were recorded on ``name`` (kopf posts them in the
    background, after the change they describe may already be visible); all its reasons."""
    found = eventually(
        lambda: [reason for reason, _ in events_of(api, namespace, name)],
        lambda seen: all(reason in seen for reason in reasons),
        f"events {reasons} on {name}",
    )
    return list(found)


def phase(expected: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("phase") == expected


class OperatorThread:
    """``run_operator`` on its own event loop in a thread; ``stop()`` is the graceful SIGTERM path."""

    def __init__(
        self,
        etcd_endpoints: str,
        namespace: str | None,
        kubeconfig: Path,
        metrics: tuple[str, int] | None = None,
        webhook: WebhookSettings | None = None,
        election: ElectionSettings | None = None,
        pod_sweep_interval: int = 600,
    ) -> None:
        """``namespace`` None: the whole cluster, as the shipped Deployment runs it."""
        self._args = (etcd_endpoints, namespace, kubeconfig, metrics, webhook)
        self._election = election
        self._pod_sweep_interval = pod_sweep_interval
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failures: list[BaseException] = []
        self._thread = threading.Thread(target=self._main, name="operator")

    def _main(self) -> None:
        endpoints, namespace, kubeconfig, metrics, webhook = self._args
        try:
            config = OperatorConfig(
                EtcdConfig.parse(endpoints),
                (namespace,) if namespace else (),
                kubeconfig=str(kubeconfig),
                metrics=metrics,
                webhook=webhook,
                election=self._election,
                pod_sweep_interval=self._pod_sweep_interval,
            )
            running = run_operator(config, stop_flag=self._stop, ready_flag=self._ready)
            asyncio.run(running)
        except BaseException as exc:  # reported by stop(), not lost in the thread
            self._failures.append(exc)

    def start(self) -> OperatorThread:
        self._thread.start()
        assert self._ready.wait(BOUND) or self._failures, "the operator did not start"
        assert not self._failures, self._failures
        webhook = self._args[4]
        if webhook is not None:
            wait_listening(webhook.host, webhook.port)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(BOUND)
        assert not self._thread.is_alive(), "the operator did not stop"
        assert not self._failures, self._failures


@dataclass(frozen=True)
class Operated:
    """A test module's namespace and the operator serving it as a process with the sandbox's cluster DNS
    (the ``operated`` fixture)."""

    api: ApiClient
    namespace: str
    operator: OperatorProcess
    hosts: Path  # the cluster DNS hosts file, for processes that resolve names as pods do


@contextlib.contextmanager
def operator_in(
    namespace: str,
    sandbox: SandboxThread,
    api: ApiClient,
    etcd: LocalEtcd,
    kubeconfig: Path,
    webhook_certs: Path,
    logs: Path,
    extra_args: Sequence[str] = (),
) -> Iterator[OperatorProcess]:
    """The namespace (created, then deleted), the webhook registered for it, and the operator serving it
    as a process that resolves cluster names as a pod does (``extra_args``: more of its flags), stopped by
    PID at the end."""
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    settings = WebhookSettings("127.0.0.1", free_port(), webhook_certs)
    with webhooks_registered(api, settings, namespace):
        operator = OperatorProcess(
            etcd.endpoint_list,
            kubeconfig,
            webhook_certs,
            logs / "operator.log",
            namespaces=(namespace,),
            configure_webhook=False,
            webhook_port=settings.port,
            cluster_dns=sandbox.hosts,
            extra_args=extra_args,
        ).start()
        try:
            operator.wait("ready", 30)
            yield operator
        finally:
            operator.stop()
    core.delete_namespace(namespace)
