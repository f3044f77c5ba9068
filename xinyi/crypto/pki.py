"""The national PKI: one root, the issuing CAs it certifies, and the identity bundles they issue.

The root's key can stay offline: it certifies issuing CAs (one per province or sector, say),
and they issue identities. Every party trusts only the root and verifies the whole chain.

Every party holds two keys, both certified by the root or by an issuing CA under it:
- a TLS key (ECDSA P-256) for mutual-TLS channels;
- an Ed25519 signing key for the statements it signs (queries, answers, consents, the directory).

Both certificates carry the principal as a subjectAltName URI (xinyi://ROLE/ID); that URI is
the only place identity is read from.

Layout on disk (`xinyi pki init --dir D`, `pki ca --dir D --id NAME`, `pki issue --dir D --role R --id I`):
    D/ca/ca.crt, D/ca/ca.key           the root (keep ca.key offline in production)
    D/ca/crl.pem                       the root's revocation list (issuing CAs it revoked)
    D/cas/NAME/ca.crt, ca.key, crl.pem an issuing CA, its key and its revocation list
    D/ROLE-ID/ca.crt                   a copy of the root, the trust anchor
    D/ROLE-ID/chain.crt                the issuing CA's certificate (absent when the root issued)
    D/ROLE-ID/tls.crt, tls.key         mutual-TLS certificate and key
    D/ROLE-ID/signing.crt, signing.key Ed25519 signing certificate and key
    D/ROLE-ID/previous/SERIAL/         what `pki renew` replaced, kept for verifying old statements
Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xinyi.crypto.identity import IdentityError, Principal, Role, check_principal_id
from xinyi.crypto.revocation import Revoked, RevocationSet

ORGANIZATION = "Xinyi Credit Network"
DEFAULT_VALIDITY = dt.timedelta(days=365)
ROOT_VALIDITY = dt.timedelta(days=3650)
ISSUING_CA_VALIDITY = dt.timedelta(days=1825)
# Issuing CAs are named like identities' ids: letters, digits, dashes (e.g. sichuan, banks-2026).
_CA_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class PKIError(Exception):
    """A certificate or key that cannot be used, with the reason."""


class CertificateRevoked(PKIError):
    """A certificate, or the issuing CA on its path, revoked at the time asked about.
    `revoked` is the revocation (serial, time, reason); `issuing_ca` whether it is the CA's."""

    def __init__(self, message: str, revoked: "Revoked | None" = None, *, issuing_ca: bool = False) -> None:
        super().__init__(message)
        self.revoked = revoked
        self.issuing_ca = issuing_ca


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
    except ValueError:  # extensions are parsed lazily: a damaged one fails here
        raise PKIError("certificate's extensions do not parse") from None
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


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _signed(builder: x509.CertificateBuilder, issuer_key, serial: int | None) -> x509.Certificate:
    """Sign a certificate; one given a chosen serial is meant to be reproduced byte for byte (the
    conformance vectors), so its ECDSA signature is deterministic (RFC 6979)."""
    return builder.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True if serial is not None else None)


def _ca_certificate(subject: x509.Name, public_key, issuer_cert: x509.Certificate | None, issuer_key,
                    validity: dt.timedelta, path_length: int, *, serial: int | None = None,
                    not_before: dt.datetime | None = None) -> x509.Certificate:
    """A CA certificate: keyCertSign and cRLSign only, with a path length that bounds what it certifies."""
    now = not_before or _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()), critical=False)
    return _signed(builder, issuer_key, serial)


_DNS_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def check_dns_name(name: str) -> None:
    """A host name for a TLS certificate (`pki issue --dns`): labels of letters, digits and
    dashes (RFC 1123), at most 63 characters each and 253 in all; a first label of `*` is a
    wildcard. Anything else would be written into the certificate and never match a host."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise PKIError(f"--dns: {name!r} is an IP address; give it with --ip")
    labels = name.split(".")
    if labels and labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    problem = ""
    if not name or len(name) > 253:
        problem = "a host name has 1 to 253 characters"
    elif not name.isascii():
        problem = "give an internationalized name in its ASCII (xn--) form"
    elif any(not label or len(label) > 63 for label in labels):
        problem = "every dot-separated label has 1 to 63 characters"
    elif any(not set(label.lower()) <= _DNS_LABEL_CHARS or label[0] == "-" or label[-1] == "-" for label in labels):
        problem = "a label holds letters, digits and dashes, and neither starts nor ends with a dash"
    if problem:
        raise PKIError(f"--dns: {name!r} is not a host name: {problem}")


def check_ca_name(name: str) -> None:
    if not name or len(name) > 40 or not set(name) <= _CA_NAME_CHARS or name.startswith("-"):
        raise PKIError(f"CA name {name!r}: use 1-40 lowercase letters, digits and dashes, e.g. sichuan or banks")


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA that issues identities: the root itself, or an issuing CA the root certified.

    `parents` are the certificates between this CA and the root (none for the root or an
    issuing CA directly under it); an identity it issues carries (this CA, *parents) as its
    chain, so that anyone holding only the root can verify it.
    """

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | None = None

    @property
    def is_root(self) -> bool:
        return self.cert.issuer == self.cert.subject

    @property
    def name(self) -> str:
        return str(self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """What an identity issued here must present besides its own certificate."""
        return () if self.is_root else (self.cert,)

    def issue(
        self,
        principal: Principal,
        *,
        licence: str = "",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        tls_key: ec.EllipticCurvePrivateKey | None = None,
        signing_key: ed25519.Ed25519PrivateKey | None = None,
        serial: int | None = None,
    ) -> "Identity":
        """Issue a TLS certificate and a signing certificate for a principal.

        `licence` is a bank's or guarantor's financial licence number: policies may require it,
        and it can only come from here, the certificate. `dns_names` and `ip_addresses` are the
        hosts a service is reached by, so that clients can connect by its real name.
        `tls_key`, `signing_key` and `serial` (the TLS certificate's; the signing certificate
        gets serial + 1) make an identity reproducible, for the conformance vectors; by default
        keys are fresh and serials random.
        """
        if self.key is None:
            which = "the root CA key" if self.is_root else f"the key of issuing CA {self.name!r}"
            raise PKIError(f"{which} is needed to issue identities")
        check_principal_id(principal.role, principal.id)
        if licence and principal.role not in (Role.BANK, Role.GUARANTOR):
            raise PKIError(f"only banks and guarantors carry a licence, not a {principal.role}")
        start = not_before or _now() - dt.timedelta(minutes=5)
        end = not_after or start + DEFAULT_VALIDITY
        if end > self.cert.not_valid_after_utc:
            raise PKIError(f"CA {self.name!r} expires on {self.cert.not_valid_after_utc:%Y-%m-%d}; "
                           f"it cannot issue a certificate valid until {end:%Y-%m-%d}")
        try:
            ips = [ipaddress.ip_address(a) for a in ip_addresses]
        except ValueError as e:
            raise PKIError(f"--ip: {e}") from None
        for d in dns_names:
            check_dns_name(d)
        tls_key = tls_key or ec.generate_private_key(ec.SECP256R1())
        signing_key = signing_key or ed25519.Ed25519PrivateKey.generate()
        dns = list(dict.fromkeys([tls_server_name(principal), tls_role_name(principal.role), "localhost", *dns_names]))
        tls_cert = self._certify(
            principal,
            licence,
            tls_key.public_key(),
            start,
            end,
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(principal.uri), *(x509.DNSName(d) for d in dns),
                 *(x509.IPAddress(a) for a in ips)]
            ),
            key_usage=x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            serial=serial,
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
            serial=None if serial is None else serial + 1,
        )
        return Identity(principal, self.root_cert, tls_cert, tls_key, signing_cert, signing_key, self.chain)

    @property
    def root_cert(self) -> x509.Certificate:
        return self.cert if self.is_root else self._root

    def _certify(self, principal, licence, public_key, start, end, san, *, key_usage, eku,
                 serial: int | None = None) -> x509.Certificate:
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
            .serial_number(serial if serial is not None else x509.random_serial_number())
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
        return _signed(builder, self.key, serial)


@dataclass(frozen=True)
class RootCA(CertificateAuthority):
    """The national root: a self-signed ECDSA P-256 certificate and, when issuing, its key.

    Its path length is 1: it certifies issuing CAs, which certify identities and nothing else.
    (Roots made before issuing CAs existed have path length 0 and issue identities directly.)"""

    @classmethod
    def create(cls, name: str = "Xinyi National Root CA", validity: dt.timedelta = ROOT_VALIDITY, *,
               key: ec.EllipticCurvePrivateKey | None = None, serial: int | None = None,
               not_before: dt.datetime | None = None) -> "RootCA":
        """`key`, `serial` and `not_before` make a reproducible root (the conformance vectors)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        return cls(_ca_certificate(_name(name), key.public_key(), None, key, validity, path_length=1,
                                   serial=serial, not_before=not_before), key)

    @classmethod
    def load(cls, directory: Path, *, with_key: bool = True) -> "RootCA":
        ca_dir = Path(directory) / "ca"
        if not (ca_dir / "ca.crt").exists():
            raise PKIError(f"{ca_dir / 'ca.crt'} is missing: create the root first with `xinyi pki init --dir {directory}`")
        cert = _load_cert(ca_dir / "ca.crt")
        if with_key and not (ca_dir / "ca.key").exists():
            raise PKIError(f"this needs the root CA's key, and {ca_dir / 'ca.key'} is not here (kept offline?): bring "
                           "it back to certify or revoke an issuing CA, revoke or renew what the root issued, or issue "
                           "from the root; identities can be issued from an issuing CA (`pki issue --ca NAME`) without it")
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

    def certify_ca(self, name: str, validity: dt.timedelta = ISSUING_CA_VALIDITY, *,
                   key: ec.EllipticCurvePrivateKey | None = None, serial: int | None = None,
                   not_before: dt.datetime | None = None) -> "IssuingCA":
        """A new issuing CA under this root (path length 0: it issues identities, not CAs).
        `key`, `serial` and `not_before` make it reproducible (the conformance vectors)."""
        if self.key is None:
            raise PKIError("the root CA key is needed to certify an issuing CA")
        check_ca_name(name)
        constraints = self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.path_length == 0:
            raise PKIError("this root was made with path length 0 and can certify no issuing CA; "
                           "make a new root with `xinyi pki init` to use issuing CAs")
        validity = min(validity, self.cert.not_valid_after_utc - (not_before or _now()))
        key = key or ec.generate_private_key(ec.SECP256R1())
        cert = _ca_certificate(_name(f"Xinyi Issuing CA {name}"), key.public_key(), self.cert, self.key, validity,
                               path_length=0, serial=serial, not_before=not_before)
        return IssuingCA(cert, key, _root=self.cert, ca_id=name)


@dataclass(frozen=True)
class IssuingCA(CertificateAuthority):
    """A CA certified by the root, kept in D/cas/NAME/; it issues identities (`pki issue --ca NAME`)."""

    _root: x509.Certificate = field(default=None, repr=False)  # type: ignore[assignment]
    ca_id: str = ""

    @classmethod
    def load(cls, directory: Path, name: str, *, with_key: bool = True) -> "IssuingCA":
        check_ca_name(name)
        ca_dir = Path(directory) / "cas" / name
        if not (ca_dir / "ca.crt").exists():
            raise PKIError(f"no issuing CA {name!r} in {Path(directory) / 'cas'}; create it with "
                           f"`xinyi pki ca --dir {directory} --id {name}`")
        root = RootCA.load(directory, with_key=False).cert
        cert = _load_cert(ca_dir / "ca.crt")
        if with_key and not (ca_dir / "ca.key").exists():
            raise PKIError(f"this needs the key of issuing CA {name!r}, and {ca_dir / 'ca.key'} is not here")
        key = _load_key(ca_dir / "ca.key") if with_key else None
        return cls(cert, key, _root=root, ca_id=name)

    def save(self, directory: Path) -> Path:
        ca_dir = Path(directory) / "cas" / self.ca_id
        if (ca_dir / "ca.key").exists():
            raise PKIError(f"{ca_dir} already holds issuing CA {self.ca_id!r}; refusing to overwrite it")
        ca_dir.mkdir(parents=True, exist_ok=True)
        (ca_dir / "ca.crt").write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        if self.key is not None:
            _write_private(ca_dir / "ca.key", _pem_key(self.key))
        return ca_dir


def issuing_cas(directory: Path) -> list[IssuingCA]:
    """Every issuing CA kept in D/cas/, without keys."""
    base = Path(directory) / "cas"
    return [IssuingCA.load(directory, d.name, with_key=False) for d in sorted(base.iterdir())
            if (d / "ca.crt").exists()] if base.is_dir() else []


def issuer_of(directory: Path, cert: x509.Certificate, *, with_key: bool = True) -> CertificateAuthority:
    """The CA in D that issued `cert` (the root or one of D/cas/*)."""
    root = RootCA.load(directory, with_key=False)
    if cert.issuer == root.cert.subject:
        return RootCA.load(directory, with_key=with_key)
    for ca in issuing_cas(directory):
        if cert.issuer == ca.cert.subject:
            return IssuingCA.load(directory, ca.ca_id, with_key=with_key)
    raise PKIError(f"no CA in {directory} issued the certificate of {principal_of(cert)}")


@dataclass(frozen=True)
class Identity:
    """One party's identity bundle: who it is, its keys, the root it trusts and its chain to it."""

    principal: Principal
    ca_cert: x509.Certificate
    tls_cert: x509.Certificate
    tls_key: ec.EllipticCurvePrivateKey
    signing_cert: x509.Certificate
    signing_key: ed25519.Ed25519PrivateKey
    chain: tuple[x509.Certificate, ...] = ()  # issuing CA certificates, nearest first; () when the root issued

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
        if self.chain:
            (out / "chain.crt").write_bytes(b"".join(c.public_bytes(pem) for c in self.chain))
        else:
            (out / "chain.crt").unlink(missing_ok=True)
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
        chain: tuple[x509.Certificate, ...] = ()
        if (path / "chain.crt").exists():
            try:
                chain = tuple(x509.load_pem_x509_certificates((path / "chain.crt").read_bytes()))
            except ValueError as e:
                raise PKIError(f"{path / 'chain.crt'} is not PEM certificates: {e}") from None
        raw = serialization.Encoding.DER
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if tls_cert.public_key().public_bytes(raw, spki) != tls_key.public_key().public_bytes(raw, spki):
            raise PKIError(f"{path}: tls.key does not match tls.crt")
        if signing_cert.public_key().public_bytes(raw, spki) != signing_key.public_key().public_bytes(raw, spki):
            raise PKIError(f"{path}: signing.key does not match signing.crt")
        principal = principal_of(tls_cert)
        if principal_of(signing_cert) != principal:
            raise PKIError(f"{path}: tls.crt and signing.crt name different principals")
        return cls(principal, ca_cert, tls_cert, tls_key, signing_cert, signing_key, chain)

    # PEM forms, as gRPC's credential constructors take them.
    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def tls_cert_pem(self) -> bytes:
        """The TLS certificate followed by its chain: what the peer needs to reach the root."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.tls_cert, *self.chain))

    @property
    def tls_key_pem(self) -> bytes:
        return _pem_key(self.tls_key)

    @property
    def signing_cert_der(self) -> bytes:
        return self.signing_cert.public_bytes(serialization.Encoding.DER)

    @property
    def chain_der(self) -> tuple[bytes, ...]:
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in self.chain)

    def expires_at(self) -> dt.datetime:
        """When the first of its certificates (TLS, signing, chain) expires."""
        return min(c.not_valid_after_utc for c in (self.tls_cert, self.signing_cert, *self.chain))

    @property
    def generation(self) -> int:
        """How many renewed bundles this object has taken over (see adopt): a holder of a TLS
        channel made with the keys of an older generation makes a new one."""
        return self.__dict__.get("_generation", 0)

    def adopt(self, renewed: "Identity") -> None:
        """Take over a renewed bundle of the same principal, in place (a service's SIGHUP after
        `xinyi pki renew`): every part of the service holding this object signs, serves and
        connects with the new keys from now on, with no list of holders to keep up to date.
        Refused (PKIError, nothing changed) for another principal, another root or a bundle
        that cannot be used now."""
        self.check_renewal(renewed)
        self.trust().add_authorities(renewed.chain)
        # One dict update: a reader sees the old parts or the new ones (the dataclass is frozen
        # against accidental assignment, not against this one deliberate replacement).
        self.__dict__.update(tls_cert=renewed.tls_cert, tls_key=renewed.tls_key, signing_cert=renewed.signing_cert,
                             signing_key=renewed.signing_key, chain=renewed.chain, _generation=self.generation + 1)

    def check_renewal(self, renewed: "Identity") -> None:
        """PKIError unless `renewed` can replace this bundle (see adopt)."""
        if renewed.principal != self.principal:
            raise PKIError(f"the new bundle is {renewed.principal}, not {self.principal}")
        if renewed.ca_cert != self.ca_cert:
            raise PKIError("the new bundle trusts another national root (ca.crt differs)")
        check_own_validity(renewed)

    def trust(self) -> "TrustAnchor":
        """The root this identity trusts; one anchor per identity, so what it verified stays
        verified (a signer's certificate is checked against the root once, not per request)."""
        return self._trust

    @functools.cached_property
    def _trust(self) -> "TrustAnchor":
        anchor = TrustAnchor(self.ca_cert)
        anchor.add_authorities(self.chain)
        return anchor


def check_own_validity(identity: Identity, *, now: dt.datetime | None = None) -> None:
    """Raise PKIError, saying which certificate and what to do, when an identity cannot be used
    now: a certificate (or its issuing CA) expired or not valid yet."""
    now = now or _now()
    for what, cert in (("tls.crt", identity.tls_cert), ("signing.crt", identity.signing_cert),
                       *((f"chain.crt (issuing CA {c.subject.rfc4514_string()})", c) for c in identity.chain)):
        if now > cert.not_valid_after_utc:
            raise PKIError(f"{identity.principal}: {what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                           f"renew it (`xinyi pki renew --id {identity.dirname}`) and use the new bundle")
        if now < cert.not_valid_before_utc:
            raise PKIError(f"{identity.principal}: {what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                           "UTC; check this machine's clock")


class TrustAnchor:
    """Verifies certificates against the national root, through issuing CAs it certified, and
    against the revocation lists it was given; caches the chains it has verified.

    A signing certificate is accepted when a valid path leads from it to the root (issuing CAs
    with keyCertSign and a path length that allows it), every certificate on the path is inside
    its validity window and not revoked at the time asked about, and it carries an Ed25519 key
    naming exactly one principal. Revocation counts from its time: a statement signed before a
    certificate was revoked still verifies when checked `at` its signing time.
    """

    _CACHE_LIMIT = 4096

    def __init__(self, root: x509.Certificate) -> None:
        self.root = root
        self._verified: dict[bytes, tuple[Principal, x509.Certificate, tuple[x509.Certificate, ...]]] = {}
        self._authorities: dict[bytes, x509.Certificate] = {}  # issuing CAs by subject (DER)
        self._lock = threading.Lock()
        self.revocations = RevocationSet()

    # -- what the anchor knows besides the root ------------------------------------------------
    def add_authorities(self, certs) -> list[x509.Certificate]:
        """Learn issuing CAs (from a bundle's chain, an envelope or the signed directory). Only
        CAs that the root certified are kept; returns those."""
        kept = []
        for cert in certs:
            cert = cert if isinstance(cert, x509.Certificate) else _der_cert(cert, "issuing CA certificate")
            key = cert.subject.public_bytes()
            if self._authorities.get(key) == cert:
                kept.append(cert)
                continue
            if cert.issuer != self.root.subject:
                continue
            try:
                cert.verify_directly_issued_by(self.root)
            except Exception:  # noqa: BLE001 - any failure means "not certified by our root"
                continue
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            if not constraints.ca:
                continue
            with self._lock:
                self._authorities[key] = cert
            kept.append(cert)
        return kept

    @property
    def authorities(self) -> tuple[x509.Certificate, ...]:
        return tuple(self._authorities.values())

    def set_revocations(self, revocations: RevocationSet) -> None:
        """Replace the revocation lists in force (each already verified against its issuer)."""
        self.revocations = revocations

    def learn(self, authorities, crls) -> list[str]:
        """Take the issuing CAs and revocation lists (DER) the signed directory publishes: CAs
        the root certified, and each list its CA signed, when newer than the one held (an older
        list never undoes a revocation). Returns why any list was left out."""
        from xinyi.crypto.revocation import RevocationError, crl_number

        fresh, problems = [], []
        try:
            self.add_authorities(authorities)
        except PKIError as e:
            problems.append(str(e))
        for der in crls:
            try:
                crl = x509.load_der_x509_crl(der)
            except ValueError:
                problems.append("a revocation list that is not DER")
                continue
            try:
                if crl_number(crl) <= self.revocations.number(crl.issuer):
                    continue  # the one held is as new (the common case: nothing changed)
                fresh.append(RevocationSet.verified([crl], self.issuer_cert_by_name))
            except RevocationError as e:
                problems.append(str(e))
            except Exception:  # noqa: BLE001 - cryptography parses lazily: a bad extension shows up only here
                problems.append("a revocation list whose extensions or names do not parse")
        with self._lock:
            for found in fresh:
                self.revocations = self.revocations.merged(found)
        return problems

    def issuer_cert(self, cert: x509.Certificate) -> x509.Certificate | None:
        """The root or a known issuing CA that issued `cert`, by name."""
        return self.issuer_cert_by_name(cert.issuer)

    def issuer_cert_by_name(self, name: x509.Name) -> x509.Certificate | None:
        if name == self.root.subject:
            return self.root
        return self._authorities.get(name.public_bytes())

    # -- verification --------------------------------------------------------------------------
    def verify_signing_cert(self, der: bytes, *, at: dt.datetime | None = None,
                            chain: tuple[bytes, ...] = ()) -> tuple[Principal, x509.Certificate]:
        """Return the principal and certificate, or raise PKIError with the reason."""
        now = at or _now()
        principal, cert, path = self._path(der, chain, now)
        if not isinstance(cert.public_key(), ed25519.Ed25519PublicKey):
            raise PKIError("signer certificate does not carry an Ed25519 signing key")
        self._check_times(principal, cert, path, now, "signer certificate")
        return principal, cert

    def check_peer(self, pem: bytes | x509.Certificate, *, at: dt.datetime | None = None) -> Principal:
        """A TLS peer's certificate (the handshake verified its chain): its principal, refused
        when it or its issuer has been revoked or is outside its validity."""
        try:
            cert = pem if isinstance(pem, x509.Certificate) else x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise PKIError("peer certificate is not PEM") from None
        return self.check_in_force(cert, at=at)

    def check_in_force(self, cert: x509.Certificate, *, at: dt.datetime | None = None,
                       what: str = "certificate") -> Principal:
        """A certificate whose chain something else already vouched for (a TLS handshake, the
        registry-signed directory that lists a log's keys): its principal, refused when it or
        its issuing CA is outside its validity window or revoked at `at` (default now):
        PKIError, or CertificateRevoked carrying the revocation."""
        principal = principal_of(cert)
        issuer = self.issuer_cert(cert)
        path = (issuer,) if issuer is not None and issuer is not self.root else ()
        self._check_times(principal, cert, path, at or _now(), what)
        return principal

    def _path(self, der: bytes, chain: tuple[bytes, ...], now: dt.datetime):
        key = hashlib.sha256(der).digest()
        cached = self._verified.get(key)
        if cached is not None:
            return cached
        cert = _der_cert(der, "signer certificate")
        self._check_times(principal_of(cert), cert, (), now, "signer certificate")  # the likeliest fault, named first
        if chain:
            self.add_authorities(chain)
        issuer = self.issuer_cert(cert)
        if issuer is None:
            raise PKIError("signer certificate was not issued by the national root or an issuing CA it certified")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError):
            raise PKIError("signer certificate was not issued by the national root or an issuing CA it certified") from None
        except Exception:  # noqa: BLE001 - InvalidSignature and kin: a look-alike issuer
            raise PKIError("signer certificate's signature does not verify against the national root") from None
        path = () if issuer is self.root else (issuer,)
        self._validate_path(cert, path)
        cached = (principal_of(cert), cert, path)
        with self._lock:
            if len(self._verified) >= self._CACHE_LIMIT:
                self._verified.clear()
            self._verified[key] = cached
        return cached

    def _validate_path(self, cert: x509.Certificate, path: tuple[x509.Certificate, ...]) -> None:
        """RFC 5280 path validation by cryptography (key usage, CA flags, path length), at a
        moment inside every window on the path: validity in time is checked per use, below."""
        moment = max(c.not_valid_before_utc for c in (cert, *path, self.root)) + dt.timedelta(seconds=1)
        moment = min(moment, *(c.not_valid_after_utc for c in (cert, *path)))
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store([self.root]))
            .time(moment)
            .max_chain_depth(2)
            .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                                ee_policy=verification.ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        try:
            verifier.verify(cert, list(path))
        except verification.VerificationError as e:
            raise PKIError(f"certificate path to the national root does not validate: {e}") from None

    def _check_times(self, principal: Principal, cert: x509.Certificate, path, now: dt.datetime, what: str) -> None:
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise PKIError(
                f"{what} of {principal} is outside its validity "
                f"({cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
            )
        for ca in path:
            if not (ca.not_valid_before_utc <= now <= ca.not_valid_after_utc):
                raise PKIError(f"the issuing CA of {principal} is outside its validity "
                               f"({ca.not_valid_before_utc:%Y-%m-%d} to {ca.not_valid_after_utc:%Y-%m-%d})")
        revoked = self.revocations.revoked(cert, at=now)
        if revoked is not None:
            raise CertificateRevoked(f"{what} of {principal} was revoked: {revoked}", revoked)
        for ca in path:
            revoked = self.revocations.revoked(ca, at=now)
            if revoked is not None:
                raise CertificateRevoked(f"the issuing CA of {principal} was revoked: {revoked}", revoked, issuing_ca=True)

    def principal_of_tls_cert(self, pem: bytes) -> Principal:
        """The principal of a peer's TLS certificate (already verified by the TLS handshake)."""
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise PKIError("peer certificate is not PEM") from None
        return principal_of(cert)


def _der_cert(der: bytes, what: str) -> x509.Certificate:
    """Load a certificate and parse now every field checks read (the library parses names,
    serial, validity and extensions lazily): a damaged one is refused here, not mid-check."""
    try:
        cert = x509.load_der_x509_certificate(der)
        _ = (cert.issuer.public_bytes(), cert.subject, cert.serial_number, cert.not_valid_before_utc,
             cert.not_valid_after_utc, cert.extensions)
    except ValueError:
        raise PKIError(f"{what} is not a DER X.509 certificate") from None
    return cert


def init_root(directory: Path) -> RootCA:
    root = RootCA.create()
    root.save(directory)
    return root


def create_issuing_ca(directory: Path, name: str, *, days: int = 0) -> Path:
    root = RootCA.load(directory)
    ca = root.certify_ca(name, dt.timedelta(days=days) if days else ISSUING_CA_VALIDITY)
    return ca.save(directory)


def issue_identity(directory: Path, role: Role, principal_id: str, *, licence: str = "", ca: str = "",
                   dns_names: tuple[str, ...] = (), ip_addresses: tuple[str, ...] = (), **validity) -> Path:
    """Issue a new identity into D/ROLE-ID. Refused when that bundle exists: issuing over it would
    lose its keys and leave its certificates valid but out of reach of `pki revoke` and `pki status`."""
    bundle = Path(directory) / f"{role}-{principal_id}"
    if (bundle / "tls.crt").exists() or (bundle / "signing.crt").exists():
        raise PKIError(f"{bundle} already holds the identity {role}/{principal_id}; refusing to overwrite it. "
                       f"New keys for it: `xinyi pki renew --dir {directory} --id {bundle.name}` (the old ones stay "
                       f"verifiable); to withdraw it: `xinyi pki revoke --dir {directory} --id {bundle.name}`")
    issuer: CertificateAuthority = IssuingCA.load(directory, ca) if ca else RootCA.load(directory)
    identity = issuer.issue(Principal(role, principal_id), licence=licence, dns_names=dns_names,
                            ip_addresses=ip_addresses, **validity)
    return identity.save(directory)


# -- the operator's PKI directory: revoke, renew, status ------------------------------------------
def _crl_path(directory: Path, ca: CertificateAuthority) -> Path:
    return Path(directory) / "ca" / "crl.pem" if ca.is_root else Path(directory) / "cas" / ca.ca_id / "crl.pem"


def _load_crl(path: Path) -> x509.CertificateRevocationList | None:
    if not path.exists():
        return None
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except ValueError as e:
        raise PKIError(f"{path} is not a PEM revocation list: {e}") from None


def _sign_revocations(directory: Path, ca: CertificateAuthority, serials: list[int], reason: str,
                      now: dt.datetime | None = None) -> x509.CertificateRevocationList:
    from xinyi.crypto.revocation import RevocationError, revoke

    if ca.key is None:
        raise PKIError(f"the key of {ca.name!r} is needed to revoke what it issued")
    path = _crl_path(directory, ca)
    try:
        crl = revoke(ca.cert, ca.key, _load_crl(path), serials, reason, now=now)
    except RevocationError as e:
        raise PKIError(str(e)) from None
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return crl


def bundle_certificates(bundle: Path) -> list[x509.Certificate]:
    """The TLS and signing certificates of a bundle directory, current and previous."""
    found = []
    for where in [bundle, *sorted((bundle / "previous").glob("*"))]:
        for name in ("tls.crt", "signing.crt"):
            if (where / name).exists():
                found.append(_load_cert(where / name))
    return found


def revoke_identity(directory: Path, role_id: str, reason: str, *, now: dt.datetime | None = None,
                    previous_only: bool = False) -> list[int]:
    """Revoke every certificate of bundle D/ROLE-ID (its TLS and signing keys, current and
    previous) in the revocation list of the CA that issued each. Returns the serials.

    `previous_only`: only the certificates `pki renew` replaced (D/ROLE-ID/previous/), as after a
    leaked key: renew, let the service take over the new keys (SIGHUP), then revoke the old."""
    bundle = Path(directory) / role_id
    if not (bundle / "tls.crt").exists():
        raise PKIError(f"no identity {role_id!r} in {directory} (expected {bundle}/tls.crt; ROLE-ID as the bundle's folder)")
    certificates = bundle_certificates(bundle)
    if previous_only:
        current = {_load_cert(bundle / name).serial_number for name in ("tls.crt", "signing.crt")}
        certificates = [c for c in certificates if c.serial_number not in current]
        if not certificates:
            raise PKIError(f"{role_id} has no replaced certificates ({bundle / 'previous'} is empty): "
                           f"`xinyi pki renew --dir {directory} --id {role_id}` first")
    by_issuer: dict[bytes, tuple[CertificateAuthority, list[int]]] = {}
    for cert in certificates:
        ca = issuer_of(directory, cert)
        by_issuer.setdefault(ca.cert.subject.public_bytes(), (ca, []))[1].append(cert.serial_number)
    for ca, serials in by_issuer.values():
        _sign_revocations(directory, ca, serials, reason, now)
    return [s for _, serials in by_issuer.values() for s in serials]


def revoke_ca(directory: Path, name: str, reason: str, *, now: dt.datetime | None = None) -> int:
    """Revoke issuing CA `name` in the root's list: everything it issued stops verifying."""
    ca = IssuingCA.load(directory, name, with_key=False)
    _sign_revocations(directory, RootCA.load(directory), [ca.cert.serial_number], reason, now)
    return ca.cert.serial_number


def revocation_lists(directory: Path) -> list[x509.CertificateRevocationList]:
    """Every revocation list kept in D: the root's and each issuing CA's."""
    paths = [Path(directory) / "ca" / "crl.pem", *sorted((Path(directory) / "cas").glob("*/crl.pem"))]
    return [crl for crl in (_load_crl(p) for p in paths) if crl is not None]


def renew_identity(directory: Path, role_id: str, *, days: int = 0) -> Path:
    """A new key pair and certificates for the same identity, from the CA that issued the
    current ones; the replaced files move to D/ROLE-ID/previous/SERIAL/ and stay valid until
    they expire or are revoked, so both keys work while services pick up the new one."""
    bundle = Path(directory) / role_id
    current = Identity.load(bundle)
    ca = issuer_of(directory, current.tls_cert)
    tls_san = current.tls_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    defaults = {tls_server_name(current.principal), tls_role_name(current.principal.role), "localhost"}
    dns = tuple(d for d in tls_san.get_values_for_type(x509.DNSName) if d not in defaults)
    ips = tuple(str(a) for a in tls_san.get_values_for_type(x509.IPAddress))
    validity = {}
    if days:
        start = _now() - dt.timedelta(minutes=5)
        validity = {"not_before": start, "not_after": start + dt.timedelta(days=days)}
    renewed = ca.issue(current.principal, licence=licence_of(current.signing_cert_der), dns_names=dns,
                       ip_addresses=ips, **validity)
    keep = bundle / "previous" / f"{current.tls_cert.serial_number:x}"
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key", "signing.crt", "signing.key", "chain.crt"):
        if (bundle / name).exists():
            os.replace(bundle / name, keep / name)
    (keep / "ca.crt").write_bytes((bundle / "ca.crt").read_bytes())  # the kept bundle stays loadable
    return renewed.save(directory)


@dataclass(frozen=True)
class CertificateStatus:
    """One certificate in an operator's PKI directory, as `pki status` reports it."""

    what: str            # "root", "ca sichuan", "bank-9144...: tls", ...
    subject: str
    serial: int
    not_after: dt.datetime
    days_left: int
    revoked: str         # "" or the revocation, as text
    previous: bool = False

    @property
    def state(self) -> str:
        if self.revoked:
            return "revoked"
        if self.days_left < 0:
            return "expired"
        return "expiring" if self.days_left <= 30 else "valid"

    def to_json(self) -> dict:
        return {"what": self.what, "subject": self.subject, "serial": f"{self.serial:x}", "state": self.state,
                "not_after": self.not_after.isoformat(), "days_left": self.days_left, "revoked": self.revoked,
                "previous": self.previous}


def pki_status(directory: Path, *, now: dt.datetime | None = None) -> list[CertificateStatus]:
    """Every certificate in D with its expiry and revocation, as the local lists record it."""
    now = now or _now()
    root = RootCA.load(directory, with_key=False)
    anchor = TrustAnchor(root.cert)
    cas = issuing_cas(directory)
    anchor.add_authorities([c.cert for c in cas])
    try:
        from xinyi.crypto.revocation import RevocationError

        anchor.set_revocations(RevocationSet.verified(revocation_lists(directory), lambda n: anchor.issuer_cert_by_name(n)))
    except RevocationError as e:
        raise PKIError(str(e)) from None

    names = {c.cert.subject.public_bytes(): c.ca_id for c in cas}

    def row(what: str, cert: x509.Certificate, previous: bool = False) -> CertificateStatus:
        revoked = anchor.revocations.revoked(cert, at=now)
        text = str(revoked) if revoked else ""
        issuer = anchor.issuer_cert(cert)
        if not text and issuer is not None and issuer != root.cert:  # what a revoked issuing CA issued is refused too
            by_ca = anchor.revocations.revoked(issuer, at=now)
            if by_ca is not None:
                text = f"its issuing CA {names.get(issuer.subject.public_bytes(), issuer.subject.rfc4514_string())} " \
                       f"was revoked: {by_ca}"
        return CertificateStatus(what, cert.subject.rfc4514_string(), cert.serial_number, cert.not_valid_after_utc,
                                 (cert.not_valid_after_utc - now).days, text, previous)

    rows = [row("root", root.cert)] + [row(f"ca {c.ca_id}", c.cert) for c in cas]
    for bundle in sorted(p for p in Path(directory).iterdir() if (p / "tls.crt").exists()):
        for cert in bundle_certificates(bundle):
            kind = "tls" if cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment else "signing"
            current = cert in (_load_cert(bundle / "tls.crt"), _load_cert(bundle / "signing.crt"))
            rows.append(row(f"{bundle.name}: {kind}", cert, previous=not current))
    return rows
