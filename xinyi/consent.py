"""Consent: what an enterprise signs, how its id is derived, and the checks a node makes.

A consent is a signed ConsentBody. Its id is a hash of the signed bytes, so it cannot be
changed, only replaced. A revocation is a signed RevocationBody by the same enterprise.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from enum import StrEnum

from xinyi import uscc as uscc_codes
from xinyi.clock import DAY_MS, MINUTE_MS
from xinyi.envelope import Verified, sign, verify
from xinyi.errors import Kind, Refusal
from xinyi.identity import Principal, Role
from xinyi.pki import Identity, TrustAnchor
from xinyi.store import StoredConsent
from xinyi.v1 import consent_pb2, envelope_pb2
from xinyi.vocab import category_problem, purpose_problem

MAX_CONSENT_DAYS = 366
_CONSENT_ID = re.compile(r"^[0-9a-f]{32}$")
_ENTERPRISE = frozenset({Role.ENTERPRISE})


class Status(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"


STATUS_TO_PROTO = {
    Status.ACTIVE: consent_pb2.CONSENT_STATUS_ACTIVE,
    Status.REVOKED: consent_pb2.CONSENT_STATUS_REVOKED,
    Status.EXPIRED: consent_pb2.CONSENT_STATUS_EXPIRED,
    Status.NOT_YET_VALID: consent_pb2.CONSENT_STATUS_NOT_YET_VALID,
}


def consent_id_for(body: bytes) -> str:
    return hashlib.sha256(b"xinyi-consent/v1\n" + body).hexdigest()[:32]


def check_consent_id(consent_id: str, field: str = "consent_id") -> str:
    if not consent_id:
        raise Refusal.denied(
            "CONSENT_MISSING", f"{field}: no consent given; the enterprise must grant one first", field_name=field
        )
    if not _CONSENT_ID.match(consent_id):
        raise Refusal.invalid(field, f"{consent_id!r} is not a consent id (32 lower-case hex characters)")
    return consent_id


def status_of(consent: StoredConsent, now_ms: int) -> Status:
    if consent.revocation is not None:
        return Status.REVOKED
    if now_ms < consent.valid_from_ms:
        return Status.NOT_YET_VALID
    if now_ms >= consent.valid_until_ms:
        return Status.EXPIRED
    return Status.ACTIVE


def build_consent(
    identity: Identity, *, grantee: str, purpose: str, categories: list[str], days: int, now_ms: int
) -> envelope_pb2.SignedEnvelope:
    """An enterprise's signed consent, valid from now for `days` days."""
    body = consent_pb2.ConsentBody(
        uscc=identity.principal.id,
        grantee=grantee,
        purpose=purpose,
        categories=sorted(set(categories)),
        valid_from_ms=now_ms,
        valid_until_ms=now_ms + days * DAY_MS,
        nonce=os.urandom(16),
        issued_at_ms=now_ms,
    )
    return sign(identity, body)


def build_revocation(identity: Identity, consent_id: str, now_ms: int) -> envelope_pb2.SignedEnvelope:
    body = consent_pb2.RevocationBody(
        consent_id=consent_id, uscc=identity.principal.id, revoked_at_ms=now_ms, nonce=os.urandom(16)
    )
    return sign(identity, body)


def verify_consent(envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor, now_ms: int) -> StoredConsent:
    """Verify an enterprise's signed consent and check its fields; return it ready to store."""
    v: Verified[consent_pb2.ConsentBody] = verify(envelope, consent_pb2.ConsentBody, trust, roles=_ENTERPRISE, field="consent")
    body = v.message
    if v.signer.id != body.uscc:
        raise Refusal.unauthenticated(
            "consent.uscc", f"names {body.uscc} but was signed by {v.signer}; an enterprise consents only for itself",
            "CONSENT_SIGNER_MISMATCH",
        )
    problem = uscc_codes.problem(body.grantee)
    if problem:
        raise Refusal.invalid("consent.grantee", f"must be the USCC of a bank or guarantor: {problem}")
    if body.grantee == body.uscc:
        raise Refusal.invalid("consent.grantee", "an enterprise cannot grant consent to itself")
    problem = purpose_problem(body.purpose)
    if problem:
        raise Refusal.invalid("consent.purpose", problem)
    if not body.categories:
        raise Refusal.invalid("consent.categories", "must name at least one category")
    for c in body.categories:
        problem = category_problem(c)
        if problem:
            raise Refusal.invalid("consent.categories", problem)
    if body.valid_until_ms <= body.valid_from_ms:
        raise Refusal.invalid("consent.valid_until_ms", "must be after valid_from_ms")
    if body.valid_until_ms - body.valid_from_ms > MAX_CONSENT_DAYS * DAY_MS:
        raise Refusal.invalid("consent.valid_until_ms", f"a consent may last at most {MAX_CONSENT_DAYS} days")
    return StoredConsent(
        consent_id=consent_id_for(v.body),
        uscc=body.uscc,
        grantee=body.grantee,
        purpose=body.purpose,
        categories=tuple(sorted(set(body.categories))),
        valid_from_ms=body.valid_from_ms,
        valid_until_ms=body.valid_until_ms,
        envelope=envelope.SerializeToString(deterministic=True),
        received_at_ms=now_ms,
    )


def check_grantable(consent: StoredConsent, now_ms: int) -> None:
    """At grant time (not on later delivery): the consent must be current."""
    if consent.valid_until_ms <= now_ms:
        raise Refusal.invalid("consent.valid_until_ms", "is already in the past")
    if consent.valid_from_ms > now_ms + 5 * MINUTE_MS:
        raise Refusal.invalid("consent.valid_from_ms", "lies in the future; a consent starts when it is granted")


def verify_revocation(
    envelope: envelope_pb2.SignedEnvelope, consent: StoredConsent | None, trust: TrustAnchor
) -> consent_pb2.RevocationBody:
    """Verify a revocation: signed by the enterprise the consent belongs to."""
    v = verify(envelope, consent_pb2.RevocationBody, trust, roles=_ENTERPRISE, field="revocation")
    body = v.message
    if consent is None:
        raise Refusal(Kind.NOT_FOUND, "CONSENT_NOT_FOUND", f"revocation.consent_id: no consent {body.consent_id} is known")
    if v.signer.id != consent.uscc:
        raise Refusal.denied(
            "CONSENT_OF_ANOTHER_ENTERPRISE",
            f"consent {consent.consent_id} belongs to {consent.uscc}; {v.signer} cannot revoke it",
            field_name="revocation.signer_cert",
        )
    if body.consent_id != consent.consent_id or body.uscc != consent.uscc:
        raise Refusal.invalid("revocation.consent_id", "does not match the consent being revoked")
    return body


@dataclass(frozen=True)
class ConsentAsk:
    """What a query asks of a consent."""

    consent_id: str
    asker: Principal
    uscc: str
    purpose: str
    categories: tuple[str, ...]


def check_covers(consent: StoredConsent | None, ask: ConsentAsk, now_ms: int) -> StoredConsent:
    """Refuse unless an active consent names this asker, enterprise, purpose and every category."""
    def deny(reason: str, message: str) -> Refusal:
        return Refusal.denied(reason, f"consent_id: {message}", field_name="consent_id")

    if consent is None:
        raise deny("CONSENT_NOT_FOUND", f"no consent {ask.consent_id} is known to this node")
    if consent.uscc != ask.uscc:
        raise deny("CONSENT_SUBJECT_MISMATCH", f"consent {consent.consent_id} was given by {consent.uscc}, not by {ask.uscc}")
    if consent.grantee != ask.asker.id:
        raise deny("CONSENT_GRANTEE_MISMATCH", f"consent {consent.consent_id} was granted to {consent.grantee}, not to {ask.asker.id}")
    status = status_of(consent, now_ms)
    if status is not Status.ACTIVE:
        raise deny(f"CONSENT_{status.upper()}", f"consent {consent.consent_id} is {status.replace('_', ' ')}")
    if consent.purpose != ask.purpose:
        raise deny("CONSENT_PURPOSE_MISMATCH", f"consent {consent.consent_id} covers purpose {consent.purpose}, not {ask.purpose}")
    missing = sorted(set(ask.categories) - set(consent.categories))
    if missing:
        raise deny("CONSENT_SCOPE", f"consent {consent.consent_id} does not cover {', '.join(missing)}")
    return consent


def to_record(consent: StoredConsent, now_ms: int, *, delivered_to=(), pending=()) -> consent_pb2.ConsentRecord:
    """The wire form of a stored consent."""
    record = consent_pb2.ConsentRecord(
        consent_id=consent.consent_id,
        status=STATUS_TO_PROTO[status_of(consent, now_ms)],
        uscc=consent.uscc,
        grantee=consent.grantee,
        purpose=consent.purpose,
        categories=consent.categories,
        valid_until_ms=consent.valid_until_ms,
        delivered_to=list(delivered_to),
        pending=list(pending),
    )
    record.consent.ParseFromString(consent.envelope)
    if consent.revocation is not None:
        record.revocation.ParseFromString(consent.revocation)
    return record
