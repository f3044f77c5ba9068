"""Revocation: X.509 CRLs that CAs sign, and the set of revocations a party enforces.

A CA revokes by signing a new CRL (`revoke`): the previous entries, the new ones, a CRL number
one higher. Parties never take a CRL on trust: `RevocationSet.verified` keeps a list only when
its issuer (the root or an issuing CA the root certified) signed it, and keeps the newest list
per issuer by CRL number, so an old list cannot be replayed to un-revoke a certificate.

A revocation has a time. Checked `at` a moment before it, a certificate still counts as valid:
what its key signed before it was revoked (audit entries, old checkpoints) stays verifiable.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import CRLEntryExtensionOID

REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "ca_compromise": x509.ReasonFlags.ca_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "certificate_hold": x509.ReasonFlags.certificate_hold,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
}
CRL_VALIDITY = dt.timedelta(days=30)  # nextUpdate: a CA re-signs (and re-publishes) at least this often


class RevocationError(Exception):
    """A revocation list that cannot be used, with the reason."""


@dataclass(frozen=True)
class Revoked:
    serial: int
    at: dt.datetime
    reason: str

    def __str__(self) -> str:
        return f"serial {self.serial:x} revoked at {self.at:%Y-%m-%d %H:%M:%S} UTC ({self.reason})"


def _reason(entry: x509.RevokedCertificate) -> str:
    try:
        flag = entry.extensions.get_extension_for_oid(CRLEntryExtensionOID.CRL_REASON).value.reason
    except x509.ExtensionNotFound:
        return "unspecified"
    return next((name for name, f in REASONS.items() if f == flag), flag.value)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def revoke(issuer_cert: x509.Certificate, issuer_key, previous: x509.CertificateRevocationList | None,
           serials: Iterable[int], reason: str, *, now: dt.datetime | None = None,
           deterministic: bool = False) -> x509.CertificateRevocationList:
    """A new CRL signed by the issuer: every earlier entry, plus `serials` revoked now.
    `deterministic`: an ECDSA signature per RFC 6979, for a list reproduced byte for byte (the
    conformance vectors)."""
    if reason not in REASONS:
        raise RevocationError(f"--reason: {reason!r} is not one of {', '.join(REASONS)}")
    now = now or dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
        # (`is not None`: a list without entries is falsy, but its number still counts)
        .add_extension(x509.CRLNumber((crl_number(previous) if previous is not None else 0) + 1), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()), critical=False)
    )
    seen = set()
    for entry in previous if previous is not None else ():
        seen.add(entry.serial_number)
        builder = builder.add_revoked_certificate(entry)
    for serial in serials:
        if serial in seen:
            continue
        seen.add(serial)
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
            .add_extension(x509.CRLReason(REASONS[reason]), critical=False).build()
        )
    return builder.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True if deterministic else None)


class RevocationSet:
    """The revocations a party enforces: per issuer, the newest CRL it signed."""

    def __init__(self, crls: dict[bytes, x509.CertificateRevocationList] | None = None) -> None:
        self._crls = dict(crls or {})
        self._index: dict[tuple[bytes, int], Revoked] = {
            (issuer, entry.serial_number): Revoked(entry.serial_number, entry.revocation_date_utc, _reason(entry))
            for issuer, crl in self._crls.items() for entry in crl
        }

    @classmethod
    def verified(cls, crls: Iterable[x509.CertificateRevocationList], issuer_of) -> "RevocationSet":
        """Keep each CRL whose issuer `issuer_of(issuer name)` returns and whose signature that
        issuer made; of several from one issuer, the highest CRL number. Raises for a CRL that
        no known CA signed."""
        newest: dict[bytes, x509.CertificateRevocationList] = {}
        for crl in crls:
            issuer = issuer_of(crl.issuer)
            if issuer is None:
                raise RevocationError(f"a revocation list from {crl.issuer.rfc4514_string()}, a CA the national root did not certify")
            if not crl.is_signature_valid(issuer.public_key()):
                raise RevocationError(f"the revocation list of {crl.issuer.rfc4514_string()} is not signed by that CA")
            key = crl.issuer.public_bytes()
            if key not in newest or crl_number(crl) > crl_number(newest[key]):
                newest[key] = crl
        return cls(newest)

    def merged(self, other: "RevocationSet") -> "RevocationSet":
        """This set updated by `other`: per issuer the list with the higher CRL number."""
        crls = dict(self._crls)
        for key, crl in other._crls.items():
            if key not in crls or crl_number(crl) > crl_number(crls[key]):
                crls[key] = crl
        return RevocationSet(crls)

    @property
    def crls(self) -> tuple[x509.CertificateRevocationList, ...]:
        return tuple(self._crls.values())

    def number(self, issuer: x509.Name) -> int:
        crl = self._crls.get(issuer.public_bytes())
        return crl_number(crl) if crl is not None else 0

    def revoked(self, cert: x509.Certificate, *, at: dt.datetime) -> Revoked | None:
        """The revocation of `cert` in force at `at`, or None."""
        found = self._index.get((cert.issuer.public_bytes(), cert.serial_number))
        return found if found is not None and found.at <= at else None

    def __len__(self) -> int:
        return len(self._index)
