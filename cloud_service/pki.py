"""A small private PKI for the broker: one CA, the broker's server certificate, the cloud's
client certificate and one client certificate per gateway (CN = gateway id).

The broker runs with `require_certificate true` and `use_identity_as_username true`, so the
CN a certificate carries is the username its ACL patterns (`%u`) see: whoever holds a
gateway's key is that gateway, and nobody else is. This mirrors AWS IoT, where the thing bound
to the certificate names the topics the policy allows.

Layout of a PKI folder (the CA key never leaves it; hand each process only its own files):

    ca.crt  ca.key                 the CA (keep ca.key offline once the gateways are issued)
    crl.pem                        the revoked certificates (`pki revoke`), signed by the CA
    broker.crt  broker.key         the broker's server certificate (SANs: localhost, 127.0.0.1,
                                   and the --host names)
    cloud.crt  cloud.key           the cloud service's client certificate (CN pdm-cloud)
    gateways/<id>.crt  <id>.key    one per gateway

Keys are written with mode 0600 and never overwritten: a second run refuses, so an issued
identity is not silently replaced.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from contract.errors import ContractError
from contract.topics import check_id

CLOUD_NAME = "pdm-cloud"
CA_DAYS = 3650
LEAF_DAYS = 825


class PkiError(ValueError):
    """A PKI folder cannot be written or read as asked (the message says why, in one line)."""


@dataclass(frozen=True)
class Identity:
    """A certificate and its key, as files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PkiLayout:
    """Where each file of a PKI folder lives."""

    folder: Path

    @property
    def ca(self) -> Identity:
        return Identity(self.folder / "ca.crt", self.folder / "ca.key")

    @property
    def broker(self) -> Identity:
        return Identity(self.folder / "broker.crt", self.folder / "broker.key")

    @property
    def cloud(self) -> Identity:
        return Identity(self.folder / "cloud.crt", self.folder / "cloud.key")

    @property
    def crl(self) -> Path:
        return self.folder / "crl.pem"

    def gateway(self, name: str) -> Identity:
        folder = self.folder / "gateways"
        return Identity(folder / f"{name}.crt", folder / f"{name}.key")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca,
                         content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, encipher_only=False,
                         decipher_only=False)


def _subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in ["localhost", "127.0.0.1", *hosts]:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    return names


def _issue(ca_cert: x509.Certificate | None, ca_key: ec.EllipticCurvePrivateKey | None,
           common_name: str, days: int, usage: x509.ObjectIdentifier | None,
           hosts: list[str] | None = None,
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new key and its certificate; self-signed CA when `ca_cert` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    is_ca = ca_cert is None
    issuer = _name(common_name) if ca_cert is None else ca_cert.subject
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               # A little slack for gateways whose clock is slightly behind.
               .not_valid_before(now - dt.timedelta(minutes=10))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None),
                              critical=True)
               .add_extension(_key_usage(ca=is_ca), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)),
                                        critical=False)
    if ca_cert is not None:
        ca_public = ca_cert.public_key()
        # The CA signs with its EC key (`_load_ca` checks it), so its certificate holds the
        # matching EC public key; anything else is a CA folder whose files do not belong together.
        if not isinstance(ca_public, ec.EllipticCurvePublicKey):
            raise PkiError("the CA certificate does not hold an EC public key")
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
    signer = key if ca_key is None else ca_key
    return builder.sign(signer, hashes.SHA256()), key


def _refuse_existing(paths: list[Path]) -> None:
    existing = [p for p in paths if p.exists()]
    if existing:
        raise PkiError(f"{existing[0]} already exists: refusing to overwrite an issued "
                       "identity (move the old files away first)")


def _write(identity: Identity, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    identity.cert.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # O_EXCL: never replace a key, even one that appeared since the check above; 0600 from
    # the first byte, not chmod-ed afterwards.
    fd = os.open(identity.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    fd = os.open(identity.cert, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(layout: PkiLayout) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca = layout.ca
    if not (ca.cert.exists() and ca.key.exists()):
        raise PkiError(f"no CA in {layout.folder} (run `pki init {layout.folder}` first)")
    try:
        cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"cannot read the CA in {layout.folder}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{ca.key} is not an EC key")
    return cert, key


def common_name(cert_file: Path) -> str:
    """The CN of a PEM certificate: the username the broker gives its holder."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def init_pki(folder: Path, hosts: list[str] | None = None, cloud_name: str = CLOUD_NAME,
             days: int = LEAF_DAYS) -> PkiLayout:
    """Write a new CA, the broker's server certificate and the cloud's client certificate."""
    hosts = list(hosts or [])
    try:
        check_id(cloud_name, "cloud name")
    except ContractError as exc:
        raise PkiError(str(exc)) from None
    for host in hosts:
        if not host or any(c.isspace() or c in "/,*" for c in host):
            raise PkiError(f"--host {host!r} is not a host name or an IP address")
    layout = PkiLayout(folder)
    _refuse_existing([p for i in (layout.ca, layout.broker, layout.cloud)
                      for p in (i.cert, i.key)])
    ca_cert, ca_key = _issue(None, None, "pdm broker CA", CA_DAYS, None)
    broker_cert, broker_key = _issue(ca_cert, ca_key, hosts[0] if hosts else "localhost", days,
                                     ExtendedKeyUsageOID.SERVER_AUTH, hosts)
    cloud_cert, cloud_key = _issue(ca_cert, ca_key, cloud_name, days,
                                   ExtendedKeyUsageOID.CLIENT_AUTH)
    folder.mkdir(parents=True, exist_ok=True)
    _write(layout.ca, ca_cert, ca_key)
    _write(layout.broker, broker_cert, broker_key)
    _write(layout.cloud, cloud_cert, cloud_key)
    # An empty CRL from the start, so the broker's crlfile is always there to point at.
    _write_crl(layout, ca_cert, ca_key, [])
    return layout


def _write_crl(layout: PkiLayout, ca_cert: x509.Certificate,
               ca_key: ec.EllipticCurvePrivateKey,
               revoked: list[x509.RevokedCertificate]) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - dt.timedelta(minutes=10))
               # OpenSSL refuses every client once the CRL is past its next update, so it is
               # valid as long as the CA; a revocation re-signs it.
               .next_update(ca_cert.not_valid_after_utc))
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    tmp = layout.crl.with_suffix(".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    tmp.chmod(0o644)
    tmp.replace(layout.crl)  # atomic: a broker reloading never reads half a file


def revoke_gateway(folder: Path, name: str) -> int:
    """Add a gateway's certificate to the CA's CRL (the broker's `crlfile`); returns the
    number of revoked certificates. The certificate file stays, renamed `.revoked`, so the
    id can be issued again with a new key."""
    try:
        check_id(name, "gateway id")
    except ContractError as exc:
        raise PkiError(str(exc)) from None
    layout = PkiLayout(folder)
    ca_cert, ca_key = _load_ca(layout)
    identity = layout.gateway(name)
    if not identity.cert.exists():
        raise PkiError(f"no certificate for gateway {name!r} in {folder}")
    cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
    revoked: list[x509.RevokedCertificate] = []
    if layout.crl.exists():
        revoked = list(x509.load_pem_x509_crl(layout.crl.read_bytes()))
    if all(r.serial_number != cert.serial_number for r in revoked):
        revoked.append(x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                       .revocation_date(dt.datetime.now(dt.timezone.utc)).build())
    _write_crl(layout, ca_cert, ca_key, revoked)
    for path in (identity.cert, identity.key):
        if path.exists():
            path.replace(path.with_name(f"{path.name}.{cert.serial_number:x}.revoked"))
    return len(revoked)


def issue_gateway(folder: Path, name: str, days: int = LEAF_DAYS) -> Identity:
    """Write a gateway's key and certificate (CN = its id), signed by the CA in `folder`."""
    try:
        check_id(name, "gateway id")
    except ContractError as exc:
        raise PkiError(str(exc)) from None
    layout = PkiLayout(folder)
    ca_cert, ca_key = _load_ca(layout)
    # The cloud's CN is a broker username too: a gateway of that name would share its ACL.
    if layout.cloud.cert.exists() and common_name(layout.cloud.cert) == name:
        raise PkiError(f"{name!r} is the cloud's name in {folder}; pick another gateway id")
    identity = layout.gateway(name)
    _refuse_existing([identity.cert, identity.key])
    cert, key = _issue(ca_cert, ca_key, name, days, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(identity, cert, key)
    return identity
