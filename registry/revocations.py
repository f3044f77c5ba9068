"""Revocation lists reaching the network: a CA operator publishes, the registry checks and publishes.

`xinyi pki publish` hands the registry every revocation list and issuing CA certificate of an
operator's PKI directory. Anyone authenticated may hand them over: what counts is the signature
on each list, which must be the root's or an issuing CA's the root certified. Per CA the
registry keeps the highest CRL number it was shown, so replaying an older list undoes nothing;
it publishes them in the signed directory, which every node and client verifies and learns
from, and enforces them itself at once (the directory's rebuild updates its trust anchor).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from cryptography import x509

from registry.directory import NetworkDirectory
from registry.store import RegistryStore
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.identity import Principal
from xinyi.crypto.revocation import RevocationError, RevocationSet, crl_number
from xinyi.errors import Refusal, bounded
from xinyi.v1 import registry_pb2


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class RevocationDesk:
    directory: NetworkDirectory
    store: RegistryStore
    audit_log: AuditLog
    clock: Clock

    async def publish(self, caller: Principal, request: registry_pb2.PublishRevocationsRequest,
                      trace_id: str) -> registry_pb2.PublishRevocationsResponse:
        try:
            authorities = self._authorities(list(request.authorities))
            crls = self._revocation_lists(list(request.revocation_lists))
        except Refusal as r:
            await self._audit(caller, r, trace_id)
            raise
        taken = await asyncio.to_thread(
            self.store.put_revocations,
            [(_sha256(c.subject.public_bytes()), der) for c, der in authorities],
            [(_sha256(c.issuer.public_bytes()), crl_number(c), der) for c, der in crls],
            self.clock())
        directory = await self.directory.refresh()  # also updates the registry's own trust anchor
        accepted, unchanged = [], []
        for crl, _ in crls:
            line = f"{crl.issuer.rfc4514_string()}: CRL number {crl_number(crl)}, {len(crl)} revoked"
            (accepted if _sha256(crl.issuer.public_bytes()) in taken else unchanged).append(line)
        if accepted or len(authorities):
            await self._audit(caller, None, trace_id, allowed="published",
                              detail=f"{len(accepted)} new revocation lists ({'; '.join(accepted)[:400]}), "
                                     f"{len(authorities)} issuing CAs; directory version {directory.version}")
        return registry_pb2.PublishRevocationsResponse(directory_version=directory.version, accepted=accepted,
                                                       unchanged=unchanged)

    def _authorities(self, ders: list[bytes]) -> list[tuple[x509.Certificate, bytes]]:
        out = []
        for i, der in enumerate(ders):
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError:
                raise Refusal.invalid(f"authorities[{i}]", "is not a DER X.509 certificate") from None
            if not self.directory.trust.add_authorities([cert]):
                raise Refusal.unauthenticated(
                    f"authorities[{i}]", f"{bounded(cert.subject.rfc4514_string(), 200)} is not a CA the national root certified",
                    "UNTRUSTED_AUTHORITY")
            out.append((cert, der))
        return out

    def _revocation_lists(self, ders: list[bytes]) -> list[tuple[x509.CertificateRevocationList, bytes]]:
        out = []
        for i, der in enumerate(ders):
            try:
                crl = x509.load_der_x509_crl(der)
            except ValueError:
                raise Refusal.invalid(f"revocation_lists[{i}]", "is not a DER X.509 revocation list") from None
            try:
                RevocationSet.verified([crl], self.directory.trust.issuer_cert_by_name)
            except RevocationError as e:
                raise Refusal.unauthenticated(f"revocation_lists[{i}]", f"{bounded(str(e), 300)}; not published",
                                              "UNTRUSTED_REVOCATION_LIST") from None
            out.append((crl, der))
        return out

    async def _audit(self, caller: Principal, refusal: Refusal | None, trace_id: str, allowed: str = "",
                     detail: str = "") -> None:
        await self.audit_log.append(AuditEntry.of(self.clock(), caller, "publish_revocations", refusal,
                                                  allowed=allowed, trace_id=trace_id, detail=detail))
