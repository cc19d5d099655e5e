"""TLS for the Dask comms between scheduler, workers and clients: a private CA per cluster, one
key + certificate per node, and the `distributed.security.Security` that uses them.

How Dask uses these files, read from distributed/security.py and comm/tcp.py (distributed 2026.8) and
checked by tests/integration/test_dask_tls.py:

- Both ends authenticate: a listener demands a client certificate (CERT_REQUIRED) and a connector
  verifies the server's. A peer is accepted when its certificate chains to `ca.pem`, and to nothing
  else: Dask loads only that CA, not the system trust store.
- Hostnames are NOT checked (`check_hostname = False`): Dask expects a dedicated CA and addresses
  given as IP addresses. Dask itself accepts any certificate this CA signed from any address and
  for any role (scheduler, worker or client), and any client may run code on the scheduler. So
  every certificate made here carries its node's role (`head`, `worker` or `client`, as the
  subject's organizational unit), and clusterai's servers check it on every operation
  (worker/gate.py): a worker's key lets a machine be a worker, nothing more. The SubjectAltNames
  written here serve tools that do check hostnames (curl, httpx, a browser), not Dask.
- Dask clears VERIFY_X509_STRICT; OpenSSL still checks the extended key usage, which is why every
  node certificate carries both serverAuth and clientAuth (a worker listens and connects).
- `require_encryption=True` makes Dask refuse to listen on or connect to a `tcp://` address with
  RuntimeError("encryption required by Dask configuration, ..."): it does not upgrade the address.
  Only the tcp comm enforces it: Dask's websocket comm ignores require_encryption, so a `ws://`
  address would run in clear text. `require_tls_address` refuses both, earlier and in clusterai's
  words.
- A peer speaking plain TCP to a TLS listener is dropped at the handshake (the listener logs a
  warning): a Client fails at once with CommClosedError; a Worker retries until its death_timeout.
  A certificate from another CA fails at once with FatalCommClosedError, on either side.

Certificates are made on the head with `cryptography`, imported only there; workers read the PEM
files with the stdlib `ssl` and never need it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from distributed.security import Security

from clusterai.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
DEFAULT_NODES = ("head", "worker")
# What a certificate lets its holder be: the head (scheduler and its own client), a worker, or a
# client the admin issued on purpose (a Dask client on the cluster: it may run code on the head).
ROLES = ("head", "worker", "client")
DEFAULT_DAYS = 825  # the longest lifetime Apple platforms accept for a TLS server certificate
CA_DAYS = 3650  # a new CA outlives several rounds of node certificates, so adding a node rarely needs a new one
LOCAL_NAMES = ("localhost", "127.0.0.1")  # every node can be reached on loopback, e.g. in tests

_NODE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_DNS_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
# The encrypted comms: TLS and TLS websockets. Not ws://, which Dask lets through require_encryption.
_ENCRYPTED_SCHEMES = ("tls", "wss")
_UNKNOWN_ISSUER = 20  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY


# -- making certificates (on the head) --------------------------------------------------------------

def default_role(node: str) -> str:
    """The role a node's certificate gets unless told otherwise: `head` for the node named head."""
    return "head" if node == "head" else "worker"


def create_certs(directory: Path, *, hosts: Sequence[str] = (), nodes: Sequence[str] = DEFAULT_NODES,
                 days: int = DEFAULT_DAYS, overwrite: bool = False, role: str | None = None) -> dict[str, Path]:
    """Make the cluster's CA in `directory` unless one is there already, then a key and certificate
    signed by it for every node: NODE.pem and NODE.key (mode 0600), EC P-256, usable as TLS server
    and client, with SubjectAltNames for `hosts` (DNS names or IP addresses) plus localhost and
    127.0.0.1, and the node's role (`role`, else `default_role(node)`) in its subject.

    A new CA lasts CA_DAYS (or longer than `days`). An existing CA is reused so that certificates
    made earlier stay valid; a node certificate that would outlive it is refused. An existing node
    certificate is replaced only with `overwrite=True`. Returns every file of the CA and of the
    given nodes by file name ("ca.pem", "ca.key", "head.pem", "head.key", ...).
    """
    names = check_node_names(nodes)
    if role is not None and role not in ROLES:
        raise ConfigError(f"unknown certificate role {role!r}; allowed: {', '.join(ROLES)}")
    alt_names = _subject_alt_names(hosts)
    if not 1 <= days <= 36500:
        raise ConfigError(f"days must be between 1 and 36500, got {days}")
    directory = Path(directory)
    if not overwrite:
        taken = [str(directory / f"{n}{ext}") for n in names for ext in (".pem", ".key")
                 if (directory / f"{n}{ext}").exists()]
        if taken:
            raise ConfigError(f"refusing to overwrite {', '.join(taken)}: pass overwrite=True "
                              "(--overwrite) to replace them")
    try:
        from cryptography import x509  # noqa: F401  (only to fail here with a clear message)
    except ImportError:
        raise ConfigError("making certificates needs the 'cryptography' package, which is not installed: "
                          "pip install 'clusterai[server]' (only the machine that makes them needs it)") from None

    try:
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o700)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        ca_cert, ca_key = _load_or_make_ca(directory, days)
        files = {CA_CERT: directory / CA_CERT, CA_KEY: directory / CA_KEY}
        for name in names:
            key, cert = _node_cert(name, role or default_role(name), alt_names, ca_cert, ca_key, days)
            files[f"{name}.key"] = _write(directory / f"{name}.key", _key_pem(key), private=True)
            files[f"{name}.pem"] = _write(directory / f"{name}.pem", _cert_pem(cert), private=False)
    except OSError as exc:
        raise ConfigError(f"cannot write certificates in {directory}: {exc.strerror or exc}") from None
    return files


def issue_certificate(directory: Path, node: str, role: str = "worker", *, hosts: Sequence[str] = (),
                      days: int = DEFAULT_DAYS) -> tuple[bytes, bytes]:
    """A fresh key and certificate for `node`, signed by the CA in `directory` (which must exist:
    joining never makes a CA), returned as PEM and written nowhere: `clusterai join` hands them
    to the joining machine over the channel pinned to the CA."""
    (name,) = check_node_names([node])
    if role not in ROLES:
        raise ConfigError(f"unknown certificate role {role!r}; allowed: {', '.join(ROLES)}")
    directory = Path(directory)
    if not (directory / CA_KEY).exists():
        raise ConfigError(f"no CA key in {directory}: joining needs the head's CA (clusterai certs create)")
    ca_cert, ca_key = _load_or_make_ca(directory, days)
    key, cert = _node_cert(name, role, _subject_alt_names(hosts), ca_cert, ca_key, days)
    return _cert_pem(cert), _key_pem(key)


def fingerprint(pem: str | bytes) -> str:
    """SHA-256 of a PEM certificate's DER bytes, in hex (stdlib only: the joining side computes it)."""
    import hashlib

    text = pem.decode() if isinstance(pem, bytes) else pem
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text)).hexdigest()


def check_node_names(nodes: Sequence[str]) -> list[str]:
    names: list[str] = []
    for name in nodes:
        if not _NODE_NAME.fullmatch(name):
            raise ConfigError(f"node name {name!r} must be a plain file name: letters, digits, '_', '-' "
                              "and '.', not starting with '.'")
        if name == "ca":
            raise ConfigError("node name 'ca' is taken by the CA's own files (ca.pem, ca.key)")
        if name not in names:
            names.append(name)
    return names


def _subject_alt_names(hosts: Sequence[str]) -> list[str | ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found: list[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for raw in [*hosts, *LOCAL_NAMES]:
        host = raw.strip()
        if host.startswith("[") and host.endswith("]"):  # IPv6 as written in a URL
            host = host[1:-1]
        entry: str | ipaddress.IPv4Address | ipaddress.IPv6Address
        try:
            entry = ipaddress.ip_address(host)
        except ValueError:
            if not _DNS_NAME.fullmatch(host):
                raise ConfigError(f"host {raw!r} is neither a DNS name nor an IP address (give the bare "
                                  "name, without scheme or port)") from None
            entry = host.lower()
        if entry not in found:
            found.append(entry)
    return found


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _load_or_make_ca(directory: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() or key_path.exists():
        if not (cert_path.exists() and key_path.exists()):
            missing = key_path if cert_path.exists() else cert_path
            raise ConfigError(f"{missing} is missing beside {cert_path if missing == key_path else key_path}: "
                              "certificates can only be made where the CA's key is (the head)")
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"CA certificate {cert_path} is not a PEM certificate: {exc}") from None
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"CA key {key_path} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise ConfigError(f"CA key {key_path} does not belong to CA certificate {cert_path}")
        if cert.not_valid_after_utc <= _now() + datetime.timedelta(days=days):
            # Checked before any node file is written; a certificate is worthless once its CA expires.
            raise ConfigError(f"CA certificate {cert_path} expires on {cert.not_valid_after_utc:%Y-%m-%d}, before "
                              f"certificates valid for {days} days would; ask for fewer days, or move the directory "
                              "aside to make a new CA (and new certificates for every node)")
        return cert, key

    key = ec.generate_private_key(ec.SECP256R1())
    # A unique name per CA: two clusters' CAs never look alike to OpenSSL or to a person.
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clusterai"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"clusterai CA {secrets.token_hex(4)}")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clocks slightly behind ours
        .not_valid_after(now + datetime.timedelta(days=max(CA_DAYS, days + 1)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, _cert_pem(cert), private=False)
    return cert, key


def _node_cert(name: str, role: str, alt_names: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address],
               ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
               days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    sans: list[x509.GeneralName] = [x509.IPAddress(a) if not isinstance(a, str) else x509.DNSName(a)
                                    for a in alt_names]
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clusterai"),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                                 x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        # Both: a Dask worker listens (server) and connects to the scheduler and its peers (client).
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    # Unencrypted: Dask gives no way to pass a key's password. The file mode protects it instead.
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write(path: Path, data: bytes, *, private: bool) -> Path:
    """Write via a temporary file and rename, so a reader (or a crash) never sees half a key and an
    overwritten key never passes through a looser mode."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if not private:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- using certificates (on every node; stdlib ssl only) --------------------------------------------

def dask_security(ca_file: str | os.PathLike[str], cert_file: str | os.PathLike[str],
                  key_file: str | os.PathLike[str]) -> Security:
    """A Dask `Security` that requires TLS and presents the same certificate in every role
    (scheduler, worker, client), trusting only `ca_file`.

    The files are checked here, so a missing, unreadable or garbled one, a key that does not match
    its certificate, or a certificate the CA did not sign is a ConfigError naming the file, instead
    of a TLS failure deep inside Dask at the first connection. Hostnames are not checked, by Dask or
    here: see this module's docstring.
    """
    ca, cert, key = (os.path.abspath(p) for p in (ca_file, cert_file, key_file))
    for what, path in (("CA certificate", ca), ("certificate", cert), ("private key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"TLS {what} {path}: {exc.strerror or exc}") from None
    _check_tls_files(ca, cert, key)
    return Security(require_encryption=True, tls_ca_file=ca,
                    tls_scheduler_cert=cert, tls_scheduler_key=key,
                    tls_worker_cert=cert, tls_worker_key=key,
                    tls_client_cert=cert, tls_client_key=key)


def node_security(directory: str | os.PathLike[str], node: str) -> Security:
    """`dask_security` for the files `create_certs` wrote for `node` in `directory`."""
    check_node_names([node])
    d = Path(directory)
    return dask_security(d / CA_CERT, d / f"{node}.pem", d / f"{node}.key")


def _check_tls_files(ca: str, cert: str, key: str) -> None:
    def no_password() -> NoReturn:
        # Without a callback OpenSSL would prompt on the terminal, and Dask cannot pass a password anyway.
        raise ConfigError(f"TLS private key {key} is encrypted; Dask needs an unencrypted key (mode 0600)")

    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS CA certificate {ca} is not a PEM certificate{_why(exc)}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS certificate {cert} is not a PEM certificate{_why(exc)}") from None
    try:
        probe.load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"TLS private key {key} does not belong to certificate {cert}") from None
        raise ConfigError(f"TLS private key {key} is not a PEM private key{_why(exc)}") from None
    _handshake_with_itself(ca, cert, key)


def _handshake_with_itself(ca: str, cert: str, key: str) -> dict[str, Any]:
    """A TLS handshake in memory, this node's certificate on both ends, with the verification Dask
    does: proves the certificate chains to the CA, is in its validity period and may act as both
    server and client. Costs a few milliseconds and no socket. Returns the certificate as a peer
    sees it (`SSLSocket.getpeercert()`), which is how the stdlib reads a certificate's fields."""
    contexts = []
    for protocol in (ssl.PROTOCOL_TLS_CLIENT, ssl.PROTOCOL_TLS_SERVER):
        ctx = ssl.SSLContext(protocol)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT  # as Dask does
        ctx.load_verify_locations(cafile=ca)
        ctx.load_cert_chain(cert, key)
        contexts.append(ctx)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = contexts[0].wrap_bio(bios[0], bios[1], server_side=False)
    server = contexts[1].wrap_bio(bios[2], bios[3], server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, end, outgoing, peer_incoming in (("client", client, bios[1], bios[2]),
                                                    ("server", server, bios[3], bios[0])):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLCertVerificationError as exc:
                    why = exc.verify_message
                    if exc.verify_code == _UNKNOWN_ISSUER:
                        why = "it was not signed by this CA"
                    raise ConfigError(f"TLS certificate {cert} is refused with CA {ca}: {why}") from None
                except ssl.SSLError as exc:
                    raise ConfigError(f"TLS certificate {cert} cannot be used with CA {ca}{_why(exc)}") from None
            data = outgoing.read()
            if data:
                peer_incoming.write(data)
        if all(done.values()):
            return dict(server.getpeercert() or {})
    raise ConfigError(f"TLS certificate {cert}: the test handshake with CA {ca} did not complete")


# -- who a certificate says its holder is ----------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """A certificate's holder as a TLS peer shows it: what roles and revocation go by."""

    serial: str  # the certificate's serial number in upper-case hex: what `certs revoke` names
    name: str | None  # the node (common name)
    role: str | None  # head, worker or client; None for a certificate made before roles existed


def serial_text(serial: int | str) -> str:
    """One spelling of a serial number, whichever side read it (OpenSSL pads, cryptography does not)."""
    return format(serial if isinstance(serial, int) else int(serial, 16), "X")


def identity_of(peercert: Mapping[str, Any] | None) -> Identity | None:
    """The identity in `SSLSocket.getpeercert()`'s answer (Dask keeps it as comm.extra_info["peercert"])."""
    if not peercert or not peercert.get("serialNumber"):
        return None
    fields = {key: value for rdn in peercert.get("subject", ()) for key, value in rdn}
    role = fields.get("organizationalUnitName")
    return Identity(serial_text(str(peercert["serialNumber"])), fields.get("commonName"),
                    role if role in ROLES else None)


def certificate_identity(ca_file: str | os.PathLike[str], cert_file: str | os.PathLike[str],
                         key_file: str | os.PathLike[str]) -> Identity:
    """The identity of this node's own certificate (the stdlib only: light workers have no cryptography)."""
    ca, cert, key = (os.path.abspath(p) for p in (ca_file, cert_file, key_file))
    identity = identity_of(_handshake_with_itself(ca, cert, key))
    if identity is None:
        raise ConfigError(f"TLS certificate {cert} has no serial number")
    return identity


def read_certificate(cert_file: str | os.PathLike[str]) -> Identity:
    """The identity a certificate file carries, read with `cryptography` (on the head)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    path = Path(cert_file)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such certificate") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable PEM certificate: {exc}") from None

    def field(oid: Any) -> str | None:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else None

    role = field(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return Identity(serial_text(cert.serial_number), field(NameOID.COMMON_NAME), role if role in ROLES else None)


def _why(exc: ssl.SSLError) -> str:
    return f" ({exc.reason})" if exc.reason else ""


def require_tls_address(address: str, security: Security | None) -> None:
    """Refuse an unencrypted scheduler address when `security` requires encryption: anything but
    tls:// and wss://. Dask refuses tcp:// too, but only at the first connection and in its own
    words, and lets ws:// through. An address without a scheme is tcp (Dask's default scheme)."""
    if security is None or not security.require_encryption:
        return
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    if scheme not in _ENCRYPTED_SCHEMES:
        raise ConfigError(f"scheduler address {address!r} is plain {scheme}, which is refused because TLS is "
                          f"configured for Dask comms; use tls://{rest}")
