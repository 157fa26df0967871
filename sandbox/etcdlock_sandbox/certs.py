"""Certificates for webhooks served on loopback in the sandbox (cert-manager's Secret layout)."""

from __future__ import annotations

from pathlib import Path

import trustme


def write_webhook_certs(directory: Path) -> Path:
    """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` valid for 127.0.0.1 and localhost; returns the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="etcdlock sandbox")
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(directory / "ca.crt"))
    server.cert_chain_pems[0].write_to_path(str(directory / "tls.crt"))
    server.private_key_pem.write_to_path(str(directory / "tls.key"))
    return directory
