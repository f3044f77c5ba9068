"""Size limits for every field of every request, checked before any work is done.

The transport's 4 MiB bound is for a whole message; inside it, one unsigned string could still
be 4 MB, and would be carried into errors, logs and the audit log. So every request is walked
field by field against its descriptor: a string, a bytes field or a repeated field without an
entry in LIMITS gets the default, and the few that hold more by nature (signed bodies,
certificates, ONNX models, sealed feature bundles, a consent's signed changes) have their own.
A request over a limit is refused naming the field path and the limit, before any signature
check or store access. Fields the server does not know are dropped, so nothing it cannot read
is stored or relayed.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from xinyi.compute.models import MAX_MODEL_BYTES
from xinyi.crypto.envelope import MAX_BODY_BYTES
from xinyi.errors import Refusal

DEFAULT_STRING_CHARS = 256
DEFAULT_BYTES = 1024
DEFAULT_ITEMS = 64
CERTIFICATE_BYTES = 8 * 1024


@dataclass(frozen=True)
class Limit:
    size: int | None = None   # characters of a string, bytes of a bytes field (of each item, when repeated)
    items: int | None = None  # items of a repeated field, entries of a map


# "package.Message.field" -> its limit, where the default does not fit what the field holds.
LIMITS: dict[str, Limit] = {
    "xinyi.v1.SignedEnvelope.body": Limit(size=MAX_BODY_BYTES),
    "xinyi.v1.SignedEnvelope.signer_cert": Limit(size=CERTIFICATE_BYTES),
    "xinyi.v1.SignedEnvelope.signer_chain": Limit(size=CERTIFICATE_BYTES, items=2),  # issuing CAs (envelope.MAX_CHAIN)
    "xinyi.v1.RegisterNodeRequest.signing_cert": Limit(size=CERTIFICATE_BYTES),
    # Enterprises outside its area a node holds records for: many, each an 18-character USCC.
    "xinyi.v1.RegisterNodeRequest.held_usccs": Limit(size=DEFAULT_STRING_CHARS, items=100_000),
    # A consent's signed pauses, resumes and revocation, delivered together; the transport's
    # 4 MiB bound is reached first.
    "xinyi.v1.ConsentRecord.changes": Limit(items=10_000),
    "xinyi.v1.ConsentRecord.delivered_to": Limit(items=10_000),
    "xinyi.v1.ConsentRecord.pending": Limit(items=10_000),
    # A CA operator's issuing CAs and revocation lists (pki publish); a list of ~20,000
    # revocations fits in 1 MiB.
    "xinyi.v1.PublishRevocationsRequest.authorities": Limit(size=CERTIFICATE_BYTES, items=256),
    "xinyi.v1.PublishRevocationsRequest.revocation_lists": Limit(size=1024 * 1024, items=257),
    "xinyi.v1.AddCheckpointRequest.checkpoint": Limit(size=8 * 1024),  # a signed note with cosignatures
    "xinyi.v1.ResolveDisputeRequest.resolution": Limit(size=8 * 1024),
    "xinyi.v1.ResolveDisputeRequest.corrected_fields_json": Limit(size=MAX_BODY_BYTES),
    "xinyi.v1.SubmitModelRequest.onnx": Limit(size=MAX_MODEL_BYTES),
    # Each a sealed, signed FeatureBundleBody (a signed body, a certificate, a signature).
    "xinyi.v1.NodeEvaluateRequest.sealed_bundles": Limit(size=MAX_BODY_BYTES + 4 * CERTIFICATE_BYTES, items=1024),
}


def check_request(message: Message) -> None:
    """Drop unknown fields, then refuse the first field over its limit (INVALID_ARGUMENT,
    reason TOO_LARGE, naming the field path and the limit)."""
    message.DiscardUnknownFields()
    problem = _first_excess(message, "")
    if problem is not None:
        path, description = problem
        raise Refusal.invalid(path, description, "TOO_LARGE")


def _limit(field: FieldDescriptor) -> Limit:
    return LIMITS.get(field.full_name, Limit())


def _size_problem(value, limit: int | None) -> str | None:
    if isinstance(value, str):
        allowed = limit or DEFAULT_STRING_CHARS
        return f"is {len(value)} characters; at most {allowed} are accepted" if len(value) > allowed else None
    if isinstance(value, bytes):
        allowed = limit or DEFAULT_BYTES
        return f"is {len(value)} bytes; at most {allowed} are accepted" if len(value) > allowed else None
    return None


def _first_excess(message: Message, prefix: str) -> tuple[str, str] | None:
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        limit = _limit(field)
        if field.is_repeated:
            allowed = limit.items or DEFAULT_ITEMS
            if len(value) > allowed:
                return path, f"has {len(value)} items; at most {allowed} are accepted"
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    found = (_size_problem(key, None) or
                             (None if isinstance(item, Message) else _size_problem(item, limit.size)))
                    if found:
                        return f"{path}[{key!s:.20}]", found
                    if isinstance(item, Message) and (inner := _first_excess(item, f"{path}[{key!s:.20}].")):
                        return inner
                continue
            for i, item in enumerate(value):
                if isinstance(item, Message):
                    if inner := _first_excess(item, f"{path}[{i}]."):
                        return inner
                elif found := _size_problem(item, limit.size):
                    return f"{path}[{i}]", found
        elif isinstance(value, Message):
            if inner := _first_excess(value, f"{path}."):
                return inner
        elif found := _size_problem(value, limit.size):
            return path, found
    return None
