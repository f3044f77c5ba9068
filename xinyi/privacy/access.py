"""Access transparency: an enterprise sees every access to its data, each line provable.

The enterprise signs an AccessRequestBody; the registry relays it to every node that routes
for the enterprise; each node answers with the audit entries about the enterprise and an
inclusion proof of each against its signed checkpoint. The enterprise's client checks the
checkpoint signature (the node's key from the signed directory) and every proof.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography import x509

from xinyi.audit import merkle
from xinyi.audit.checkpoint import NoteError, verify_note
from xinyi.clock import MINUTE_MS
from xinyi.crypto.envelope import Verified, sign, verify
from xinyi.crypto.identity import Role
from xinyi.crypto.pki import Identity, TrustAnchor
from xinyi.directory import Directory
from xinyi.errors import Refusal
from xinyi.v1 import access_pb2, audit_pb2, envelope_pb2

WINDOW_MS = 5 * MINUTE_MS


def build_access_request(identity: Identity, now_ms: int) -> envelope_pb2.SignedEnvelope:
    body = access_pb2.AccessRequestBody(uscc=identity.principal.id, nonce=os.urandom(16), issued_at_ms=now_ms)
    return sign(identity, body)


def check_access_request(envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor, now_ms: int) -> Verified:
    """A fresh request signed by the enterprise it is about."""
    v = verify(envelope, access_pb2.AccessRequestBody, trust, roles={Role.ENTERPRISE}, field="request")
    if v.message.uscc != v.signer.id:
        raise Refusal.denied("ACCESSES_OF_ANOTHER_ENTERPRISE",
                             f"request.uscc: {v.signer} may see accesses to its own data only",
                             field_name="request.uscc")
    if abs(v.message.issued_at_ms - now_ms) > WINDOW_MS:
        raise Refusal.invalid("request.issued_at_ms", "is more than 300 s from this server's clock; sign a fresh request",
                              "STALE_TIMESTAMP")
    return v


@dataclass(frozen=True)
class Access:
    """One proven line of an enterprise's access history."""

    node: str
    index: int
    record: audit_pb2.AuditRecord

    def to_json(self) -> dict:
        r = self.record
        return {
            "node": self.node, "index": r.index, "at_ms": r.at_ms, "institution": f"{r.caller_role}/{r.caller_id}",
            "relayed_by": r.relayed_by, "action": r.action, "purpose": r.purpose, "categories": list(r.categories),
            "consent_id": r.consent_id,
            "decision": audit_pb2.Decision.Name(r.decision).removeprefix("DECISION_").lower(),
            "reason": r.reason, "proven": True,
        }


class AccessProofError(Exception):
    """A node's access list that does not prove what it claims."""


def verify_node_accesses(accesses: access_pb2.NodeAccesses, directory: Directory, uscc: str) -> list[Access]:
    """Check the node's signed checkpoint and every entry's inclusion proof against it."""
    node = accesses.node_id
    entry = directory.nodes.get(node)
    if entry is None:
        raise AccessProofError(f"node {node} is not in the signed directory")
    key = x509.load_der_x509_certificate(entry.signing_cert).public_key()
    try:
        checkpoint = verify_note(accesses.checkpoint, f"xinyi/{node}", key)
    except NoteError as e:
        raise AccessProofError(f"node {node}'s checkpoint does not verify: {e}") from None
    out = []
    for proven in accesses.entries:
        leaf = merkle.leaf_hash(proven.leaf_input)
        if not merkle.verify_inclusion(leaf, proven.index, checkpoint.size, list(proven.audit_path), checkpoint.root):
            raise AccessProofError(f"node {node}: entry {proven.index} is not in the log its checkpoint signs")
        record = audit_pb2.AuditRecord.FromString(proven.leaf_input)
        if record.uscc != uscc or record.index != proven.index:
            raise AccessProofError(f"node {node}: entry {proven.index} is not about {uscc}")
        out.append(Access(node, proven.index, record))
    return out
