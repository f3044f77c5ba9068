"""The national PKI: one root, and identity bundles it certifies.

Every party holds two keys, both certified by the root:
- a TLS key (ECDSA P-256) for mutual-TLS channels;
- an Ed25519 signing key for the statements it signs (queries, answers, consents, the directory).

Both certificates carry the principal as a subjectAltName URI (xinyi://ROLE/ID); that URI is
the only place identity is read from.

Layout on disk (`xinyi pki init --dir D`, `xinyi pki issue --dir D --role R --id I`):
    D/ca/ca.crt, D/ca/ca.key           the root (keep ca.key offline in production)
    D/ROLE-ID/ca.crt                   a copy of the root, the trust anchor
    D/ROLE-ID/tls.crt, tls.key         mutual-TLS certificate and key
    D/ROLE-ID/signing.crt, signing.key Ed25519 signing certificate and key
Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xinyi.crypto.identity import IdentityError, Principal, Role, check_principal_id

ORGANIZATION = "Xinyi Credit Network"
DEFAULT_VALIDITY = dt.timedelta(days=365)


class PKIError(Exception):
    """A certificate or key that cannot be used, with the reason."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def tls_server_name(principal: Principal) -> str:
    """The DNS name a client expects in a server's certificate (see xinyi.channels)."""
    return f"{principal.role}-{principal.id}.xinyi"


def tls_role_name(role: Role) -> str:
    """A DNS name every server of a role carries, for clients that know only the role."""
    return f"{role}.xinyi"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path):
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise PKIError(f"{path} is missing; issue the identity with `xinyi pki issue`") from None
    except ValueError as e:
        raise PKIError(f"{path} is not a PEM private key: {e}") from None


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PKIError(f"{path} is missing; issue the identity with `xinyi pki issue`") from None
    except ValueError as e:
        raise PKIError(f"{path} is not a PEM certificate: {e}") from None


def principal_of(cert: x509.Certificate) -> Principal:
    """The principal named in a certificate's xinyi:// subjectAltName URI."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PKIError("certificate has no subjectAltName naming a xinyi principal") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("xinyi://")]
    if len(uris) != 1:
        raise PKIError("certificate must name exactly one xinyi:// principal")
    try:
        return Principal.from_uri(uris[0])
    except IdentityError as e:
        raise PKIError(str(e)) from None


@functools.lru_cache(maxsize=4096)
def licence_of(cert_der: bytes) -> str:
    """The financial licence number a certificate carries ("" when none)."""
    cert = x509.load_der_x509_certificate(cert_der)
    values = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return str(values[0].value) if values else ""


@dataclass(frozen=True)
class RootCA:
    """The national root: a self-signed ECDSA P-256 certificate and, when issuing, its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | None = None

    @classmethod
    def create(cls, name: str = "Xinyi National Root CA", validity: dt.timedelta = dt.timedelta(days=3650)) -> "RootCA":
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION), x509.NameAttribute(NameOID.COMMON_NAME, name)]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path, *, with_key: bool = True) -> "RootCA":
        ca_dir = Path(directory) / "ca"
        if not (ca_dir / "ca.crt").exists():
            raise PKIError(f"{ca_dir / 'ca.crt'} is missing: create the root first with `xinyi pki init --dir {directory}`")
        cert = _load_cert(ca_dir / "ca.crt")
        key = _load_key(ca_dir / "ca.key") if with_key else None
        return cls(cert, key)

    def save(self, directory: Path) -> Path:
        ca_dir = Path(directory) / "ca"
        if (ca_dir / "ca.key").exists():
            raise PKIError(f"{ca_dir} already holds a root CA; refusing to overwrite it")
        ca_dir.mkdir(parents=True, exist_ok=True)
        (ca_dir / "ca.crt").write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        if self.key is not None:
            _write_private(ca_dir / "ca.key", _pem_key(self.key))
        return ca_dir

    def issue(
        self,
        principal: Principal,
        *,
        licence: str = "",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> "Identity":
        """Issue a TLS certificate and a signing certificate for a principal.

        `licence` is a bank's or guarantor's financial licence number: policies may require it,
        and it can only come from here, the certificate.
        """
        if self.key is None:
            raise PKIError("the root CA key is needed to issue identities")
        check_principal_id(principal.role, principal.id)
        if licence and principal.role not in (Role.BANK, Role.GUARANTOR):
            raise PKIError(f"only banks and guarantors carry a licence, not a {principal.role}")
        start = not_before or _now() - dt.timedelta(minutes=5)
        end = not_after or start + DEFAULT_VALIDITY
        tls_key = ec.generate_private_key(ec.SECP256R1())
        signing_key = ed25519.Ed25519PrivateKey.generate()
        dns = [tls_server_name(principal), tls_role_name(principal.role), "localhost"]
        tls_cert = self._certify(
            principal,
            licence,
            tls_key.public_key(),
            start,
            end,
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(principal.uri), *(x509.DNSName(d) for d in dns)]
            ),
            key_usage=x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        signing_cert = self._certify(
            principal,
            licence,
            signing_key.public_key(),
            start,
            end,
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(principal.uri)]),
            # digitalSignature + contentCommitment: this key signs statements, not TLS handshakes.
            key_usage=x509.KeyUsage(True, True, False, False, False, False, False, False, False),
            eku=None,
        )
        return Identity(principal, self.cert, tls_cert, tls_key, signing_cert, signing_key)

    def _certify(self, principal, licence, public_key, start, end, san, *, key_usage, eku) -> x509.Certificate:
        attributes = [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, str(principal.role)),
            x509.NameAttribute(NameOID.COMMON_NAME, principal.id),
        ]
        if licence:
            attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, licence))
        subject = x509.Name(attributes)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage, critical=True)
            .add_extension(san, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()), critical=False
            )
        )
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        return builder.sign(self.key, hashes.SHA256())


@dataclass(frozen=True)
class Identity:
    """One party's identity bundle: who it is, its keys, and the root it trusts."""

    principal: Principal
    ca_cert: x509.Certificate
    tls_cert: x509.Certificate
    tls_key: ec.EllipticCurvePrivateKey
    signing_cert: x509.Certificate
    signing_key: ed25519.Ed25519PrivateKey

    @property
    def dirname(self) -> str:
        return f"{self.principal.role}-{self.principal.id}"

    def save(self, directory: Path) -> Path:
        """Write the bundle to directory/ROLE-ID/ and return that path."""
        out = Path(directory) / self.dirname
        out.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        (out / "ca.crt").write_bytes(self.ca_cert.public_bytes(pem))
        (out / "tls.crt").write_bytes(self.tls_cert.public_bytes(pem))
        (out / "signing.crt").write_bytes(self.signing_cert.public_bytes(pem))
        _write_private(out / "tls.key", _pem_key(self.tls_key))
        _write_private(out / "signing.key", _pem_key(self.signing_key))
        return out

    @classmethod
    def load(cls, path: Path) -> "Identity":
        """Load a bundle directory (D/ROLE-ID) and check that its parts belong together."""
        path = Path(path)
        if not path.is_dir():
            raise PKIError(f"identity directory {path} does not exist; create it with `xinyi pki issue`")
        tls_key = _load_key(path / "tls.key")
        signing_key = _load_key(path / "signing.key")
        if not isinstance(tls_key, ec.EllipticCurvePrivateKey):
            raise PKIError(f"{path / 'tls.key'} must be an ECDSA P-256 key")
        if not isinstance(signing_key, ed25519.Ed25519PrivateKey):
            raise PKIError(f"{path / 'signing.key'} must be an Ed25519 key")
        ca_cert = _load_cert(path / "ca.crt")
        tls_cert = _load_cert(path / "tls.crt")
        signing_cert = _load_cert(path / "signing.crt")
        raw = serialization.Encoding.DER
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if tls_cert.public_key().public_bytes(raw, spki) != tls_key.public_key().public_bytes(raw, spki):
            raise PKIError(f"{path}: tls.key does not match tls.crt")
        if signing_cert.public_key().public_bytes(raw, spki) != signing_key.public_key().public_bytes(raw, spki):
            raise PKIError(f"{path}: signing.key does not match signing.crt")
        principal = principal_of(tls_cert)
        if principal_of(signing_cert) != principal:
            raise PKIError(f"{path}: tls.crt and signing.crt name different principals")
        return cls(principal, ca_cert, tls_cert, tls_key, signing_cert, signing_key)

    # PEM forms, as gRPC's credential constructors take them.
    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def tls_cert_pem(self) -> bytes:
        return self.tls_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def tls_key_pem(self) -> bytes:
        return _pem_key(self.tls_key)

    @property
    def signing_cert_der(self) -> bytes:
        return self.signing_cert.public_bytes(serialization.Encoding.DER)

    def trust(self) -> "TrustAnchor":
        """The root this identity trusts; one anchor per identity, so what it verified stays
        verified (a signer's certificate is checked against the root once, not per request)."""
        return self._trust

    @functools.cached_property
    def _trust(self) -> "TrustAnchor":
        return TrustAnchor(self.ca_cert)


class TrustAnchor:
    """Verifies certificates against the national root; caches what it has verified.

    A signing certificate is accepted when the root issued it, it is inside its validity
    window, it carries an Ed25519 key and names exactly one principal.
    """

    _CACHE_LIMIT = 4096

    def __init__(self, root: x509.Certificate) -> None:
        self.root = root
        self._verified: dict[bytes, tuple[Principal, x509.Certificate]] = {}
        self._lock = threading.Lock()

    def verify_signing_cert(self, der: bytes, *, at: dt.datetime | None = None) -> tuple[Principal, x509.Certificate]:
        """Return the principal and certificate, or raise PKIError with the reason."""
        key = hashlib.sha256(der).digest()
        cached = self._verified.get(key)
        if cached is None:
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError:
                raise PKIError("signer certificate is not a DER X.509 certificate") from None
            try:
                cert.verify_directly_issued_by(self.root)
            except (ValueError, TypeError):
                raise PKIError("signer certificate was not issued by the national root") from None
            except Exception:
                raise PKIError("signer certificate's signature does not verify against the national root") from None
            if not isinstance(cert.public_key(), ed25519.Ed25519PublicKey):
                raise PKIError("signer certificate does not carry an Ed25519 signing key")
            cached = (principal_of(cert), cert)
            with self._lock:
                if len(self._verified) >= self._CACHE_LIMIT:
                    self._verified.clear()
                self._verified[key] = cached
        principal, cert = cached
        now = at or _now()
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise PKIError(
                f"signer certificate of {principal} is outside its validity "
                f"({cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
            )
        return principal, cert

    def principal_of_tls_cert(self, pem: bytes) -> Principal:
        """The principal of a peer's TLS certificate (already verified by the TLS handshake)."""
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise PKIError("peer certificate is not PEM") from None
        return principal_of(cert)


def init_root(directory: Path) -> RootCA:
    root = RootCA.create()
    root.save(directory)
    return root


def issue_identity(directory: Path, role: Role, principal_id: str, *, licence: str = "", **validity) -> Path:
    root = RootCA.load(directory)
    return root.issue(Principal(role, principal_id), licence=licence, **validity).save(directory)
