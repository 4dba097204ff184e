"""Throw-away TLS material for the endpoint-security tests, made with ``cryptography``.

A CA, a server certificate for 127.0.0.1/localhost signed by it, a second server
certificate it signed whose only name is ``broker.test`` (for the host name checks), a
client certificate signed by it, and a key that matches neither (for the mismatch case).
Written as PEM files into a test's directory; nothing is cached between tests.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_key: Path
    #: A second CA and a client certificate it signed (not trusted by the server).
    stranger_cert: Path
    stranger_key: Path
    #: Signed by ``ca`` for the name ``broker.test`` only: a chain that verifies, with a
    #: host name that matches neither localhost nor 127.0.0.1.
    misnamed_server_cert: Path
    misnamed_server_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False, server: bool = False,
    names: tuple[x509.GeneralName, ...] = (
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None,
           key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        assert key is not None
        path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        path.chmod(0o600)
    return path


def make_tls_files(directory: Path) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, client_key, other_key = _key(), _key(), _key(), _key()
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    stranger_ca_key, stranger_key, misnamed_key = _key(), _key(), _key()
    stranger = _cert("stranger", stranger_key, "stranger-ca", stranger_ca_key)
    return TLSFiles(
        ca=_write(directory / "ca.pem", ca),
        server_cert=_write(directory / "server.pem",
                           _cert("server", server_key, "test-ca", ca_key, server=True)),
        server_key=_write(directory / "server-key.pem", key=server_key),
        client_cert=_write(directory / "client.pem",
                           _cert("prometheus", client_key, "test-ca", ca_key)),
        client_key=_write(directory / "client-key.pem", key=client_key),
        other_key=_write(directory / "other-key.pem", key=other_key),
        stranger_cert=_write(directory / "stranger.pem", stranger),
        stranger_key=_write(directory / "stranger-key.pem", key=stranger_key),
        misnamed_server_cert=_write(
            directory / "broker-test.pem",
            _cert("broker.test", misnamed_key, "test-ca", ca_key, server=True,
                  names=(x509.DNSName("broker.test"),))),
        misnamed_server_key=_write(directory / "broker-test-key.pem", key=misnamed_key),
    )


def bcrypt_hash(password: str, rounds: int = 4) -> str:
    """A bcrypt hash as htpasswd -B writes it (low cost: tests only)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def get(
    port: int, path: str = "/metrics", *, ca: Path | None = None,
    auth: tuple[str, str] | None = None, client: tuple[Path, Path] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], str]:
    """One real request (HTTPS when ``ca`` is given): status, headers, body."""
    import base64
    import http.client
    import ssl

    conn: http.client.HTTPConnection
    if ca is not None:
        context = ssl.create_default_context(cafile=str(ca))
        if client is not None:
            context.load_cert_chain(str(client[0]), str(client[1]))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=timeout)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()
