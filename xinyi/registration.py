"""A node's registration as a statement signed by the node: built by the node, checked by the
registry. Only the holder of a node's signing key can say where the node is and what it holds;
the statement is fresh (issued_at_ms within 5 minutes of the registry's clock) and used once
(its nonce), so a recorded registration cannot be replayed to move the node back.

The holdings list is not in the signed body: a node may hold records of up to 100,000
enterprises outside its area (about 2 MB), far more than the 16 KiB a signed body may carry
(the bound every relying party applies before verifying). The body carries its SHA-256
instead, over the list exactly as the request carries it; the registry recomputes it.
"""

from __future__ import annotations

import hashlib
import os

from xinyi.clock import MINUTE_MS
from xinyi.crypto.envelope import Verified, sign, verify
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, TrustAnchor
from xinyi.errors import Refusal
from xinyi.v1 import envelope_pb2, registry_pb2

REGISTRATION_WINDOW_MS = 5 * MINUTE_MS
NONCE_BYTES = 16


def holdings_digest(held_usccs: list[str]) -> bytes:
    """SHA-256 of RegisterNodeRequest{held_usccs} serialized deterministically: unambiguous
    (each USCC length-prefixed) and order-preserving."""
    request = registry_pb2.RegisterNodeRequest(held_usccs=held_usccs)
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


def build_registration(identity: Identity, endpoint: str, held_usccs: list[str],
                       now_ms: int) -> envelope_pb2.SignedEnvelope:
    body = registry_pb2.RegistrationBody(node_id=identity.principal.id, endpoint=endpoint, issued_at_ms=now_ms,
                                         nonce=os.urandom(NONCE_BYTES), held_usccs_sha256=holdings_digest(held_usccs))
    return sign(identity, body)


def check_registration(request: registry_pb2.RegisterNodeRequest, caller: Principal, trust: TrustAnchor,
                       now_ms: int) -> Verified[registry_pb2.RegistrationBody]:
    """The signed registration of `caller` (the mutual-TLS peer), or a Refusal naming the field.
    The nonce's single use is the caller's to enforce (it is durable in the registry's store)."""
    if not request.HasField("registration"):
        raise Refusal.invalid("registration", "is required: a node signs its registration with its signing key "
                              "(this node's software predates signed registrations; upgrade it)", "UNSIGNED_REGISTRATION")
    v = verify(request.registration, registry_pb2.RegistrationBody, trust, roles={Role.NODE}, field="registration")
    if v.signer != caller:
        raise Refusal.unauthenticated("registration.signer_cert", f"names {v.signer}, but the caller is {caller}; "
                                      "a node signs only its own registration", "WRONG_REGISTRATION_SIGNER")
    body = v.message
    if body.node_id != caller.id:
        raise Refusal.invalid("registration.node_id", f"must be the caller's node id {caller.id}")
    if len(body.nonce) != NONCE_BYTES:
        raise Refusal.invalid("registration.nonce", f"must be {NONCE_BYTES} random bytes")
    skew = body.issued_at_ms - now_ms
    if abs(skew) > REGISTRATION_WINDOW_MS:
        direction = "ahead of" if skew > 0 else "behind"
        raise Refusal.invalid("registration.issued_at_ms",
                              f"is {abs(skew) // 1000} s {direction} the registry's clock; at most "
                              f"{REGISTRATION_WINDOW_MS // 1000} s is accepted (check the node's clock)",
                              "STALE_TIMESTAMP")
    if body.held_usccs_sha256 != holdings_digest(list(request.held_usccs)):
        raise Refusal.unauthenticated("held_usccs", "do not match the holdings the node signed "
                                      "(registration.held_usccs_sha256); altered in transit", "HOLDINGS_NOT_SIGNED")
    return v
