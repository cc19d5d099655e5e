"""HTTPS: the API served with a certificate, as `api.tls_cert`/`api.tls_key` do."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_support import Api, running_api
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for `host` (an IP address in subjectAltName) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clusterai test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def tls_api(tmp_path: Path) -> Iterator[tuple[Api, Path]]:
    cert, key = self_signed(tmp_path)
    with running_api(tmp_path / "store", {"api": {"tls_cert": str(cert), "tls_key": str(key)}},
                     ssl_certfile=str(cert), ssl_keyfile=str(key)) as api:
        yield api, cert


def test_https_with_the_certificate(tls_api: tuple[Api, Path]) -> None:
    api, cert = tls_api
    assert api.url.startswith("https://127.0.0.1:")
    trust = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(base_url=api.url, verify=trust, timeout=10) as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert r.extensions["network_stream"].get_extra_info("ssl_object").version().startswith("TLS")
        r = c.post("/api/v1/jobs", json={"task": "bench.noop"}, headers=api.headers("submitter"))
        assert r.status_code == 201, r.text
        r = c.get(f"/api/v1/jobs/{r.json()['id']}", headers=api.headers("submitter"))
        assert r.json()["state"] == "queued"
        assert c.get("/api/v1/whoami").status_code == 401  # TLS is no substitute for a token


def test_a_client_that_does_not_trust_the_certificate_is_refused(tls_api: tuple[Api, Path]) -> None:
    api, _ = tls_api
    with httpx.Client(base_url=api.url, timeout=10) as c, pytest.raises(httpx.ConnectError, match="CERTIFICATE"):
        c.get("/healthz")


def test_plain_http_to_the_tls_port_fails(tls_api: tuple[Api, Path]) -> None:
    api, _ = tls_api
    plain = api.url.replace("https://", "http://")
    with httpx.Client(base_url=plain, timeout=5) as c, pytest.raises(httpx.RemoteProtocolError):
        c.get("/healthz", headers=api.headers("viewer"))  # the server hangs up: no answer in clear


def test_the_remote_client_trusts_the_given_ca_certificate(tls_api: tuple[Api, Path], tmp_path: Path) -> None:
    from clusterai.errors import BadInput, Unreachable
    from clusterai.sdk.remote import RemoteClient

    api, cert = tls_api
    with RemoteClient(api.url, api.tokens["submitter"], ca_cert=str(cert)) as c:
        assert c.submit("bench.noop").owner == "submitter"
    with RemoteClient(api.url, api.tokens["submitter"]) as untrusted, pytest.raises(Unreachable):
        untrusted.submit("bench.noop")  # the system CAs do not know this certificate
    with pytest.raises(BadInput, match="cannot be used"):
        RemoteClient(api.url, "t", ca_cert=str(tmp_path / "missing.pem"))
