"""Signed statements: sign exact bytes, carry those bytes, verify before parsing.

    envelope = sign(identity, QueryBody(...))
    verified = verify(envelope, QueryBody, trust, roles={Role.BANK})
    verified.message, verified.signer, verified.body_hash

The signed input is a fixed context string, the body's message type and the body bytes, so a
signature over one kind of statement can never be passed off as another kind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Generic, TypeVar

from cryptography.exceptions import InvalidSignature
from google.protobuf.message import DecodeError, Message

from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, PKIError, TrustAnchor
from xinyi.errors import Refusal, quoted
from xinyi.v1 import envelope_pb2

M = TypeVar("M", bound=Message)

_CONTEXT = b"xinyi-signed-envelope/v1\n"
MAX_BODY_BYTES = 16 * 1024
MAX_CHAIN = 2  # issuing CAs between a signer and the root: one today, room for one more level


def signed_input(body_type: str, body: bytes) -> bytes:
    """The exact bytes an envelope's Ed25519 signature is over (the protocol's contract: clients
    in other languages build the same; conformance/query.json shows them)."""
    return _CONTEXT + body_type.encode() + b"\n" + body


def body_hash(body: bytes) -> bytes:
    """SHA-256 of a body: the request hash that answers and audit records refer to."""
    return hashlib.sha256(body).digest()


def sign(identity: Identity, message: Message) -> envelope_pb2.SignedEnvelope:
    body_type = message.DESCRIPTOR.full_name
    body = message.SerializeToString(deterministic=True)
    return envelope_pb2.SignedEnvelope(
        body_type=body_type,
        body=body,
        signature=identity.signing_key.sign(signed_input(body_type, body)),
        signer_cert=identity.signing_cert_der,
        signer_chain=identity.chain_der,
    )


def claimed_time(envelope: envelope_pb2.SignedEnvelope, body_cls: type[Message], ms_field: str) -> dt.datetime | None:
    """When a signed body says it was made (`ms_field`, Unix ms), read before verifying it. A
    stored statement, accepted when it was fresh, is re-verified as of then: a certificate
    revoked later does not undo what its key signed before. None when there is no such time."""
    message = body_cls()
    try:
        message.ParseFromString(envelope.body)
    except DecodeError:
        return None
    ms = getattr(message, ms_field, 0)
    try:
        return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc) if ms > 0 else None
    except (ValueError, OverflowError, OSError):  # a time no calendar holds: checked as of now
        return None


@dataclass(frozen=True)
class Verified(Generic[M]):
    """A statement whose signature and signer certificate have been checked."""

    message: M
    body: bytes
    signer: Principal
    signer_cert_der: bytes

    @property
    def body_hash(self) -> bytes:
        return body_hash(self.body)


def verify(
    envelope: envelope_pb2.SignedEnvelope,
    body_cls: type[M],
    trust: TrustAnchor,
    *,
    roles: frozenset[Role] | set[Role] | None = None,
    field: str = "envelope",
    at: dt.datetime | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Verified[M]:
    """Check the signature and the signer's certificate, then parse the body.

    `max_body_bytes`: a reader of a node's answer that lists many items (a client, not a
    server taking requests) may allow more than a request's bound.
    Raises Refusal (UNAUTHENTICATED for signatures and certificates, INVALID for malformed
    input) naming `field`.
    """
    expected_type = body_cls.DESCRIPTOR.full_name
    if not envelope.body:
        raise Refusal.invalid(f"{field}.body", "is empty")
    if len(envelope.body) > max_body_bytes:
        raise Refusal.invalid(
            f"{field}.body", f"is {len(envelope.body)} bytes; at most {max_body_bytes} are accepted", "TOO_LARGE"
        )
    if len(envelope.signer_chain) > MAX_CHAIN:
        raise Refusal.invalid(f"{field}.signer_chain", f"holds {len(envelope.signer_chain)} certificates; at most {MAX_CHAIN}")
    if envelope.body_type != expected_type:
        raise Refusal.invalid(f"{field}.body_type", f"is {quoted(envelope.body_type)}; expected {expected_type!r}")
    try:
        signer, cert = trust.verify_signing_cert(envelope.signer_cert, at=at, chain=tuple(envelope.signer_chain))
    except PKIError as e:
        raise Refusal.unauthenticated(f"{field}.signer_cert", str(e), "BAD_CERTIFICATE") from None
    if roles is not None and signer.role not in roles:
        allowed = ", ".join(sorted(str(r) for r in roles))
        raise Refusal.unauthenticated(
            f"{field}.signer_cert", f"signer is a {signer.role}; only {allowed} may sign this", "WRONG_SIGNER_ROLE"
        )
    try:
        cert.public_key().verify(envelope.signature, signed_input(envelope.body_type, envelope.body))
    except InvalidSignature:
        raise Refusal.unauthenticated(
            f"{field}.signature", f"does not verify with the key of {signer}; the body was altered or forged"
        ) from None
    message = body_cls()
    try:
        message.ParseFromString(envelope.body)
    except DecodeError:
        raise Refusal.invalid(f"{field}.body", f"is not a valid {expected_type}") from None
    return Verified(message, bytes(envelope.body), signer, bytes(envelope.signer_cert))
