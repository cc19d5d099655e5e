"""Certificates for the Dask comms: what create_certs writes, what dask_security accepts, and the
`clusterai certs create` command. No cluster: the Dask side is in tests/integration/test_dask_tls.py."""

from __future__ import annotations

import ipaddress
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from distributed.security import Security
from typer.testing import CliRunner

from clusterai.cli.main import app
from clusterai.errors import ConfigError
from clusterai.worker.tls import create_certs, dask_security, node_security, require_tls_address


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    create_certs(directory, hosts=["head.example.org", "10.1.2.3", "[fd00::7]"])
    return directory


def test_files_and_modes(tmp_path: Path):
    directory = tmp_path / "a" / "certs"
    files = create_certs(directory, nodes=["head", "gpu-1"])

    assert set(files) == {"ca.pem", "ca.key", "head.pem", "head.key", "gpu-1.pem", "gpu-1.key"}
    assert all(path.parent == directory and path.name == name for name, path in files.items())
    assert mode(directory) == 0o700
    for name, path in files.items():
        assert mode(path) == (0o600 if name.endswith(".key") else 0o644), name
    assert sorted(p.name for p in directory.iterdir()) == sorted(files), "no temporary file is left behind"


def test_node_certificate_contents(certs: Path):
    ca, head = load(certs / "ca.pem"), load(certs / "head.pem")
    head.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not head.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    sans = head.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"head.example.org", "localhost"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("fd00::7"), ipaddress.ip_address("127.0.0.1")}
    usages = head.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}

    key = serialization.load_pem_private_key((certs / "head.key").read_bytes(), password=None)
    assert key.public_key() == head.public_key()
    assert head.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    lifetime = head.not_valid_after_utc - head.not_valid_before_utc
    assert 825 <= lifetime.days <= 826


def test_an_existing_ca_is_reused_and_earlier_certificates_stay_valid(certs: Path):
    ca_before = (certs / "ca.pem").read_bytes(), (certs / "ca.key").read_bytes()
    head_before = (certs / "head.pem").read_bytes()

    files = create_certs(certs, nodes=["gpu-2"], days=30)

    assert ((certs / "ca.pem").read_bytes(), (certs / "ca.key").read_bytes()) == ca_before
    assert (certs / "head.pem").read_bytes() == head_before
    assert set(files) == {"ca.pem", "ca.key", "gpu-2.pem", "gpu-2.key"}
    load(certs / "gpu-2.pem").verify_directly_issued_by(load(certs / "ca.pem"))
    for node in ("head", "worker", "gpu-2"):
        node_security(certs, node)


def test_a_node_certificate_may_not_outlive_a_reused_ca(certs: Path):
    with pytest.raises(ConfigError, match=r"ca\.pem expires on .* before certificates valid for 4000 days"):
        create_certs(certs, nodes=["gpu-3"], days=4000)
    assert not (certs / "gpu-3.pem").exists()


def test_a_new_ca_outlives_long_node_certificates(tmp_path: Path):
    directory = tmp_path / "certs"
    create_certs(directory, nodes=["head"], days=5000)
    assert load(directory / "ca.pem").not_valid_after_utc > load(directory / "head.pem").not_valid_after_utc


def test_a_ca_without_its_key_cannot_sign(certs: Path):
    (certs / "ca.key").unlink()
    with pytest.raises(ConfigError, match=r"ca\.key is missing"):
        create_certs(certs, nodes=["gpu-3"])
    assert not (certs / "gpu-3.pem").exists()


def test_existing_node_certificates_are_not_overwritten_by_default(certs: Path):
    before = (certs / "worker.pem").read_bytes(), (certs / "worker.key").read_bytes()
    with pytest.raises(ConfigError, match=r"refusing to overwrite .*worker\.pem.*overwrite=True"):
        create_certs(certs, nodes=["gpu-1", "worker"])
    assert ((certs / "worker.pem").read_bytes(), (certs / "worker.key").read_bytes()) == before
    assert not (certs / "gpu-1.pem").exists(), "nothing is written when any node is refused"

    create_certs(certs, nodes=["worker"], overwrite=True)
    assert (certs / "worker.pem").read_bytes() != before[0]
    assert mode(certs / "worker.key") == 0o600
    node_security(certs, "worker")


@pytest.mark.parametrize("name", ["", ".hidden", "../evil", "a/b", "white space", "ca", "ünï"])
def test_node_names_must_be_plain_file_names(tmp_path: Path, name: str):
    with pytest.raises(ConfigError, match="node name"):
        create_certs(tmp_path / "certs", nodes=[name])
    assert not (tmp_path / "certs").exists()


@pytest.mark.parametrize("host", ["tls://head:8786", "head:8786", "a b", ""])
def test_hosts_must_be_names_or_addresses(tmp_path: Path, host: str):
    with pytest.raises(ConfigError, match="neither a DNS name nor an IP address"):
        create_certs(tmp_path / "certs", hosts=[host])


def test_days_must_be_positive(tmp_path: Path):
    with pytest.raises(ConfigError, match="days"):
        create_certs(tmp_path / "certs", days=0)


def test_without_cryptography_the_error_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)  # makes `import cryptography` fail
    with pytest.raises(ConfigError, match="pip install"):
        create_certs(tmp_path / "certs")


# -- dask_security ------------------------------------------------------------------------------

def test_dask_security_requires_tls_with_one_certificate_for_every_role(certs: Path):
    security = node_security(certs, "worker")
    assert isinstance(security, Security)
    assert security.require_encryption is True
    for role in ("scheduler", "worker", "client"):
        tls = security.get_tls_config_for_role(role)
        assert (tls["ca_file"], tls["cert"], tls["key"]) == (
            str(certs / "ca.pem"), str(certs / "worker.pem"), str(certs / "worker.key"))
        assert security.get_connection_args(role)["ssl_context"] is not None


def test_a_missing_file_is_named(certs: Path):
    (certs / "worker.key").unlink()
    with pytest.raises(ConfigError, match=r"private key .*worker\.key: No such file"):
        node_security(certs, "worker")


@pytest.mark.parametrize(("garbled", "what"), [("ca.pem", "CA certificate"), ("head.pem", "certificate"),
                                               ("head.key", "private key")])
def test_a_garbled_pem_is_named(certs: Path, garbled: str, what: str):
    path = certs / garbled
    path.write_text(path.read_text().replace("A", "?", 20))
    with pytest.raises(ConfigError, match=rf"TLS {what} {path}") as caught:
        node_security(certs, "head")
    assert "\n" not in str(caught.value)


def test_a_key_of_another_certificate_is_refused(certs: Path):
    with pytest.raises(ConfigError, match=r"worker\.key does not belong to certificate .*head\.pem"):
        dask_security(certs / "ca.pem", certs / "head.pem", certs / "worker.key")


def test_a_certificate_of_another_ca_is_refused(certs: Path, tmp_path: Path):
    other = tmp_path / "other"
    create_certs(other)
    with pytest.raises(ConfigError, match=r"other/head\.pem is refused with CA .*: it was not signed by this CA"):
        dask_security(certs / "ca.pem", other / "head.pem", other / "head.key")


def test_an_encrypted_key_is_refused_without_a_prompt(certs: Path, tmp_path: Path):
    key = serialization.load_pem_private_key((certs / "head.key").read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError, match="encrypted"):
        dask_security(certs / "ca.pem", certs / "head.pem", encrypted)


def test_node_security_checks_the_node_name(certs: Path):
    with pytest.raises(ConfigError, match="node name"):
        node_security(certs, "../certs/head")


# -- require_tls_address ------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["tcp://10.0.0.1:8786", "10.0.0.1:8786", "ws://10.0.0.1:8786", "inproc://x"])
def test_plain_addresses_are_refused_when_tls_is_configured(certs: Path, address: str):
    with pytest.raises(ConfigError, match="refused because TLS is configured") as caught:
        require_tls_address(address, node_security(certs, "head"))
    if address.startswith("10."):
        assert "plain tcp" in str(caught.value)


def test_tls_addresses_pass_and_without_tls_anything_goes(certs: Path):
    require_tls_address("tls://10.0.0.1:8786", node_security(certs, "head"))
    require_tls_address("wss://10.0.0.1:8786", node_security(certs, "head"))
    require_tls_address("tcp://10.0.0.1:8786", None)
    require_tls_address("tcp://10.0.0.1:8786", Security(require_encryption=False))


# -- clusterai certs create -----------------------------------------------------------------------

def test_cli_creates_certificates_and_says_where_they_go(tmp_path: Path):
    directory = tmp_path / "certs"
    result = CliRunner().invoke(app, ["certs", "create", "--dir", str(directory), "--host", "10.0.0.9",
                                      "--node", "head", "--node", "gpu-1", "--days", "90"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in directory.iterdir()) == [
        "ca.key", "ca.pem", "gpu-1.key", "gpu-1.pem", "head.key", "head.pem"]
    assert "made a new CA" in result.output
    assert f"{directory / 'ca.key'} stays on this machine" in result.output
    assert f"node gpu-1 (worker): {directory / 'ca.pem'} {directory / 'gpu-1.pem'} {directory / 'gpu-1.key'} -> " \
           "the machine that runs gpu-1" in result.output
    cert = load(directory / "gpu-1.pem")
    assert 90 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 91

    again = CliRunner().invoke(app, ["certs", "create", "--dir", str(directory), "--node", "gpu-2"])
    assert again.exit_code == 0, again.output
    assert "reused the CA" in again.output


def test_cli_defaults_to_head_and_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["certs", "create"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / ".clusterai" / "certs").iterdir()) == [
        "ca.key", "ca.pem", "head.key", "head.pem", "worker.key", "worker.pem"]


@pytest.mark.parametrize(("args", "message"), [
    (["--node", "../x"], "node name"),
    (["--host", "tls://head:8786"], "neither a DNS name nor an IP address"),
    (["--days", "0"], "--days"),
])
def test_cli_bad_input_exits_2(tmp_path: Path, args: list[str], message: str):
    result = CliRunner().invoke(app, ["certs", "create", "--dir", str(tmp_path / "certs"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_refuses_to_overwrite_without_the_flag(tmp_path: Path):
    directory = tmp_path / "certs"
    create_certs(directory)
    before = (directory / "worker.pem").read_bytes()
    result = CliRunner().invoke(app, ["certs", "create", "--dir", str(directory), "--node", "worker"])
    assert result.exit_code == 2
    assert "refusing to overwrite" in result.output
    assert (directory / "worker.pem").read_bytes() == before

    result = CliRunner().invoke(app, ["certs", "create", "--dir", str(directory), "--node", "worker", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (directory / "worker.pem").read_bytes() != before
