"""The certificates of an EtcdCluster's TLS when no cert-manager issues them: a CA of the cluster's own, and
the certificates it signs (pure functions of PEM bytes, with ``cryptography``).

Every certificate carries what etcd checks: the member certificate is for servers and clients both (a member
is the client of its peers), valid for every name a member or the client Service answers to; the client
certificate only authenticates a client. Keys are ECDSA P-256: small, fast to sign, and what etcd and gRPC
take everywhere.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import exceptions, x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
# A certificate is issued this much before it is needed: clocks of the machines that check it may lag.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert: bytes
    key: bytes


def new_ca(common_name: str, now: datetime.datetime) -> Issued:
    """A self-signed CA that signs certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _base(name, name, key.public_key(), now, CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(_pem(builder.sign(key, hashes.SHA256())), _key_pem(key))


def issue(
    ca: Issued,
    common_name: str,
    validity: datetime.timedelta,
    now: datetime.datetime,
    *,
    names: tuple[str, ...] = (),
    server: bool = False,
) -> Issued:
    """A certificate signed by ``ca`` for ``names`` (DNS names or IP addresses): for clients, and for
    servers too if ``server``."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH, *([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])]
    builder = (
        _base(subject, ca_cert.subject, key.public_key(), now, validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_agreement=True,
                content_commitment=False,
                data_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general(n) for n in names]), critical=False
        )
    return Issued(_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key))


def not_after(cert: bytes) -> datetime.datetime:
    """When the (first) certificate of ``cert`` expires."""
    return x509.load_pem_x509_certificate(cert).not_valid_after_utc


def not_before(cert: bytes) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert).not_valid_before_utc


def signed_by(cert: bytes, ca: bytes) -> bool:
    """Whether ``cert`` was signed by (the first certificate of) ``ca``."""
    try:
        x509.load_pem_x509_certificate(cert).verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    except (ValueError, TypeError, exceptions.InvalidSignature):
        return False
    return True


def names_of(cert: bytes) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        alt = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return set()
    dns = alt.value.get_values_for_type(x509.DNSName)
    ips = alt.value.get_values_for_type(x509.IPAddress)
    return {*dns, *(str(ip) for ip in ips)}


def fingerprint(pem: bytes) -> str:
    """A short digest of PEM text (a CA bundle whose certificates change gets another)."""
    return hashlib.sha256(pem).hexdigest()[:12]


def _base(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    validity: datetime.timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
    )


def _general(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
