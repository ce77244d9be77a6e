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
