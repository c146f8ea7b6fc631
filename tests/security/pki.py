"""Throwaway TLS material and a TLS-terminating TCP proxy for the security tests.

:func:`make_pki` writes a CA, a server certificate for 127.0.0.1/localhost, a client certificate and a
second, unrelated CA (the "wrong" trust anchor). :class:`TlsProxy` accepts TLS on a 127.0.0.1 port
(optionally requiring a client certificate signed by the CA) and relays the plaintext to an upstream
server (over TLS too if asked), recording each handshake's outcome.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(cn: str, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, server: bool
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """CA, server (127.0.0.1, localhost) and client (CN dcpue-client) certificates, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("dcpue-test-ca")
    _, other = _ca("someone-else-ca")
    server_key, server = _leaf("127.0.0.1", ca_key, ca, server=True)
    client_key, client = _leaf("dcpue-client", ca_key, ca, server=False)
    pem = serialization.Encoding.PEM
    pki = Pki(ca=directory / "ca.pem", server_cert=directory / "server.pem", server_key=directory / "server.key",
              client_cert=directory / "client.pem", client_key=directory / "client.key",
              other_ca=directory / "other-ca.pem")
    pki.ca.write_bytes(ca.public_bytes(pem))
    pki.other_ca.write_bytes(other.public_bytes(pem))
    pki.server_cert.write_bytes(server.public_bytes(pem))
    pki.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(server_key, pki.server_key)
    _write_key(client_key, pki.client_key)
    return pki


@dataclass
class TlsProxy:
    """TLS on ``127.0.0.1:port`` → plaintext (or TLS with ``upstream_ca``) to ``upstream``."""

    pki: Pki
    upstream: tuple[str, int] | None = None  # may be set after the port is known
    require_client_cert: bool = True
    upstream_ca: Path | None = None
    handshakes: list[str] = field(default_factory=list)  # the client certificate's CN, "" without one
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        if self.require_client_cert:
            self._context.verify_mode = ssl.CERT_REQUIRED
            self._context.load_verify_locations(self.pki.ca)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux); close() alone does not
        self._listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self._context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.failures.append(str(exc))
            raw.close()
            return
        cert = conn.getpeercert() or {}
        cn = next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), "")
        self.handshakes.append(cn)
        assert self.upstream is not None
        try:
            up = socket.create_connection(self.upstream, timeout=10)
            up.settimeout(None)
            if self.upstream_ca is not None:
                up = ssl.create_default_context(cafile=str(self.upstream_ca)).wrap_socket(
                    up, server_hostname=self.upstream[0])
        except OSError as exc:
            self.failures.append(f"upstream: {exc}")
            conn.close()
            return
        _relay(conn, up)


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways in one thread until either side closes. (An SSL socket read in one thread
    while written in another hung one write in a few runs.) Non-blocking reads, because a readable
    TLS socket may hold only records without data; data an SSL socket has already decrypted does
    not show in select(), hence ``pending()``."""
    peer = {a: b, b: a}
    try:
        for sock in (a, b):
            sock.setblocking(False)  # readable may mean TLS records without data (session tickets)
        while True:
            ready = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select([a, b], [], [])
            for sock in ready:
                try:
                    data = sock.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                if not data:
                    return
                out = peer[sock]
                out.setblocking(True)
                out.sendall(data)
                out.setblocking(False)
    except OSError:
        return
    finally:
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.close()
