"""Throw-away CA, server and client certificates for mutual-TLS tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.broker import TlsFiles


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _issue(ca_key, ca_name, cn: str, usage, san: list | None, path_cert: Path, path_key: Path):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    path_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, path_key)


def make_tls_files(folder: Path, client_cn: str = "gw-test") -> TlsFiles:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("pdm test CA")
    now = dt.datetime.now(dt.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(ca=folder / "ca.pem", server_cert=folder / "server.pem",
                     server_key=folder / "server.key", client_cert=folder / "client.pem",
                     client_key=folder / "client.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _issue(ca_key, ca_name, "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
           [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
           files.server_cert, files.server_key)
    _issue(ca_key, ca_name, client_cn, ExtendedKeyUsageOID.CLIENT_AUTH, None,
           files.client_cert, files.client_key)
    for f in (files.server_key, files.client_key, files.ca, files.server_cert, files.client_cert):
        f.chmod(0o644)  # mosquitto may run as another user
    return files
