"""Disputes (Credit Reporting Regulation Art. 25): an enterprise objects to one of its records;
every answer that includes the record flags it; the node operator verifies it and replies in
writing within 20 days, correcting the record or confirming it.

The enterprise follows its disputes itself: it signs a MyDisputesBody (naming no enterprise:
the signer is the one asking), the registry relays it to the nodes that route for the
enterprise, each node checks the signature and answers with the signer's disputes only, in a
NodeDisputesBody it signs and binds to the request's hash. The client checks each answer
against the node's key in the signed directory, so the registry can neither forge an answer,
alter one, pass one node's off as another's, nor replay an old one.
"""

from __future__ import annotations

import hashlib
import os

from typing import Iterable

from xinyi.clock import DAY_MS, MINUTE_MS
from xinyi.crypto.envelope import Verified, body_hash, sign, verify
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, TrustAnchor
from xinyi.directory import Directory, listed_key
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


# ---- An enterprise following its own disputes -------------------------------------------------

WINDOW_MS = 5 * MINUTE_MS
# A node's signed list: an enterprise has a handful of disputes at a node; one dispute is at most
# ~45 KB (a 2,000-character reason, an 8 KiB-character reply), so the floor holds at least one.
MAX_ANSWER_BYTES = 1024 * 1024
MIN_ANSWER_BYTES = 64 * 1024
STATUS_NAMES = {v: k for k, v in STATUS.items()}


def build_my_disputes_request(identity: Identity, now_ms: int) -> envelope_pb2.SignedEnvelope:
    return sign(identity, dispute_pb2.MyDisputesBody(nonce=os.urandom(16), issued_at_ms=now_ms))


def check_my_disputes_request(envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor, now_ms: int) -> Verified:
    """A fresh request; whose disputes it asks for is its signer (the role is the policy's to
    decide, so that a bank is told it may not, not that its signature is bad)."""
    v = verify(envelope, dispute_pb2.MyDisputesBody, trust, field="request")
    if abs(v.message.issued_at_ms - now_ms) > WINDOW_MS:
        raise Refusal.invalid("request.issued_at_ms", "is more than 300 s from this server's clock; sign a fresh request",
                              "STALE_TIMESTAMP")
    return v


def answer_body(node_id: str, uscc: str, request_hash: bytes, now_ms: int, disputes: Iterable[dispute_pb2.Dispute],
                max_bytes: int = 0) -> dispute_pb2.NodeDisputesBody:
    """A node's answer: the enterprise's disputes, newest filed first, as many as its size
    budget holds (at least one); how many older ones were left out is said, signed too."""
    budget = min(max(max_bytes or MAX_ANSWER_BYTES, MIN_ANSWER_BYTES), MAX_ANSWER_BYTES)
    body = dispute_pb2.NodeDisputesBody(node_id=node_id, uscc=uscc, request_hash=request_hash, answered_at_ms=now_ms)
    ordered = sorted(disputes, key=lambda d: (d.filed_at_ms, d.dispute_id), reverse=True)
    used = body.ByteSize()
    for i, d in enumerate(ordered):
        size = d.ByteSize() + 8  # the field's tag and length
        if body.disputes and used + size > budget:
            body.omitted = len(ordered) - i
            break
        body.disputes.append(d)
        used += size
    return body


class DisputeAnswerError(Exception):
    """A node's dispute list that is not the node's answer to this very request about this
    enterprise."""


class UnlistedDisputeKey(DisputeAnswerError):
    """Signed with a key the reader's directory does not list for the node: a newer directory
    may (the node renewed its key)."""


def verify_node_disputes(answer: envelope_pb2.SignedEnvelope, *, node_id: str, directory: Directory, uscc: str,
                         request_hash: bytes, trust: TrustAnchor) -> dispute_pb2.NodeDisputesBody:
    """Check that `node_id` signed this answer, with a key the signed directory lists for it,
    to the request of `request_hash`, about `uscc`, and that every dispute in it is that
    enterprise's at that node."""
    entry = directory.nodes.get(node_id)
    if entry is None:
        raise DisputeAnswerError(f"node {node_id} is not in the signed directory")
    try:
        v = verify(answer, dispute_pb2.NodeDisputesBody, trust, roles={Role.NODE}, field="answer",
                   max_body_bytes=MAX_ANSWER_BYTES)
    except Refusal as e:
        raise DisputeAnswerError(f"node {node_id}'s answer does not verify: {e}") from None
    if v.signer != Principal(Role.NODE, node_id):
        raise DisputeAnswerError(f"the answer given as node {node_id}'s was signed by {v.signer}")
    body = v.message
    if not listed_key(entry.signing_cert, entry.previous_keys, v.signer_cert_der, body.answered_at_ms):
        raise UnlistedDisputeKey(f"node {node_id}'s answer was signed with a key the directory does not list for it")
    if body.node_id != node_id or body.uscc != uscc:
        raise DisputeAnswerError(f"node {node_id}'s answer is about {body.uscc} at {body.node_id}")
    if body.request_hash != request_hash:
        raise DisputeAnswerError(f"node {node_id}'s answer answers another request (an old answer sent again?)")
    for d in body.disputes:
        if d.uscc != uscc or d.node_id != node_id:
            raise DisputeAnswerError(f"node {node_id}'s answer holds dispute {d.dispute_id} about another enterprise")
    return body


def dispute_to_json(d: dispute_pb2.Dispute) -> dict:
    return {"dispute_id": d.dispute_id, "uscc": d.uscc, "node": d.node_id, "record_id": d.record_id,
            "status": STATUS_NAMES.get(d.status, "unspecified"), "reason": d.reason, "filed_by": d.filed_by,
            "filed_at_ms": d.filed_at_ms, "due_ms": d.due_ms, "overdue": d.overdue, "resolution": d.resolution,
            "resolved_at_ms": d.resolved_at_ms or None, "corrected_record_id": d.corrected_record_id or None}


def answer_hash(request: envelope_pb2.SignedEnvelope) -> bytes:
    """The request hash a node's answer binds: SHA-256 of the signed MyDisputesBody bytes."""
    return body_hash(request.body)
