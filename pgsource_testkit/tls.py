"""Throw-away certificates for the TLS tests: a CA, a server certificate and client certificates.

Made with the ``cryptography`` package rather than the ``openssl`` CLI: the extensions
that libpq's ``verify-full`` and the Iggy SDK's rustls insist on (subjectAltName for
``localhost`` and ``127.0.0.1``, basicConstraints CA:TRUE on the CA only, key usages)
are set explicitly in code, the same on every OpenSSL version, with no subprocess and
no configuration file to write. Keys are EC P-256: fast to generate on a loaded machine.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CertificateFiles:
    """PEM files of one certificate and its key."""

    cert: str
    key: str


@dataclass(frozen=True)
class CertificateAuthority:
    """A certificate authority in ``directory`` that signs server and client certificates."""

    directory: str
    cert: str  # the CA certificate (PEM): what clients and servers trust
    _key: object
    _name: object

    @classmethod
    def create(cls, directory: str, name: str = "pgsource test CA") -> CertificateAuthority:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        os.makedirs(directory, exist_ok=True)
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        path = os.path.join(directory, "ca.crt")
        _write(path, _pem(certificate))
        return cls(directory, path, key, subject)

    def issue(self, stem: str, common_name: str, *, server: bool = False) -> CertificateFiles:
        """A certificate for ``common_name`` (a server's: valid for localhost and 127.0.0.1)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = _new_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        cert_path = os.path.join(self.directory, f"{stem}.crt")
        key_path = os.path.join(self.directory, f"{stem}.key")
        _write(cert_path, _pem(certificate))
        _write(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), private=True)
        return CertificateFiles(cert_path, key_path)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _usage(cert_sign: bool):
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _pem(certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.PEM)


def _write(path: str, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


class TlsProxy:
    """A TLS front for a plain TCP server (the Iggy stand-in): terminates TLS, forwards the bytes.

    ``TlsProxy(certificate, "127.0.0.1:8090").start()``; ``address`` is where TLS clients connect.
    """

    def __init__(self, certificate: CertificateFiles, target: str) -> None:
        self.certificate = certificate
        self.target = target
        self.address = ""
        self.handshakes = 0  # TLS sessions that completed the handshake and reached the target
        self._loop = None
        self._thread = None
        self._server = None

    def start(self) -> TlsProxy:
        import asyncio
        import ssl
        import threading

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate.cert, self.certificate.key)
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=context)
            self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
            ready.set()

        def run() -> None:
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="tls-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    async def _relay(self, reader, writer) -> None:
        import asyncio

        host, _, port = self.target.rpartition(":")
        try:
            target_reader, target_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        self.handshakes += 1

        async def pipe(source, sink) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, target_writer), pipe(target_reader, writer))

    def stop(self) -> None:
        if self._loop is None:
            return

        def close() -> None:
            self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(10)
        self._loop = None
