"""Disputes (Credit Reporting Regulation Art. 25): an enterprise objects to one of its records;
every answer that includes the record flags it; the node operator verifies it and replies in
writing within 20 days, correcting the record or confirming it."""

from __future__ import annotations

import hashlib
import os

from xinyi.clock import DAY_MS, MINUTE_MS
from xinyi.crypto.envelope import Verified, sign, verify
from xinyi.crypto.identity import Role
from xinyi.crypto.pki import Identity, TrustAnchor
from xinyi.errors import Refusal
from xinyi.v1 import dispute_pb2, envelope_pb2

REPLY_WITHIN_MS = 20 * DAY_MS
MAX_REASON = 2000
STATUS = {"open": dispute_pb2.DISPUTE_STATUS_OPEN, "corrected": dispute_pb2.DISPUTE_STATUS_CORRECTED,
          "confirmed": dispute_pb2.DISPUTE_STATUS_CONFIRMED}


def build_dispute(identity: Identity, *, node_id: str, record_id: str, reason: str, now_ms: int):
    body = dispute_pb2.DisputeBody(uscc=identity.principal.id, node_id=node_id, record_id=record_id, reason=reason,
                                   issued_at_ms=now_ms, nonce=os.urandom(16))
    return sign(identity, body)


def check_dispute(envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor, now_ms: int) -> Verified:
    """A fresh objection signed by the enterprise the record is about."""
    v = verify(envelope, dispute_pb2.DisputeBody, trust, roles={Role.ENTERPRISE}, field="dispute")
    body = v.message
    if body.uscc != v.signer.id:
        raise Refusal.denied("RECORD_OF_ANOTHER_ENTERPRISE",
                             f"dispute.uscc: {v.signer} may dispute its own records only",
                             field_name="dispute.uscc")
    if not body.reason.strip() or len(body.reason) > MAX_REASON:
        raise Refusal.invalid("dispute.reason", f"must say what is wrong, in at most {MAX_REASON} characters")
    if len(body.record_id) != 64:
        raise Refusal.invalid("dispute.record_id", "must be a record id as given in an answer (64 hex characters)")
    if abs(body.issued_at_ms - now_ms) > 5 * MINUTE_MS:
        raise Refusal.invalid("dispute.issued_at_ms", "is more than 300 s from this server's clock; sign it again",
                              "STALE_TIMESTAMP")
    return v


def dispute_id_for(body: bytes) -> str:
    return hashlib.sha256(b"xinyi-dispute/v1\n" + body).hexdigest()[:32]


def to_proto(row: dict, node_id: str, now_ms: int) -> dispute_pb2.Dispute:
    return dispute_pb2.Dispute(
        dispute_id=row["dispute_id"], uscc=row["uscc"], node_id=node_id, record_id=row["record_key"],
        reason=row["reason"], filed_by=row["filed_by"], filed_at_ms=row["filed_at_ms"], due_ms=row["due_ms"],
        status=STATUS[row["status"]], resolution=row["resolution"] or "", resolved_at_ms=row["resolved_at_ms"] or 0,
        overdue=row["status"] == "open" and now_ms > row["due_ms"], corrected_record_id=row["corrected_key"] or "",
    )
