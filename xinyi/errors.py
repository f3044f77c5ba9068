"""Refusals: the domain's way of saying no, with the field and the reason.

The domain core raises `Refusal`; the gRPC layer (xinyi.rpc.status) turns it into the fitting
status code with google.rpc details. Nothing here knows about gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Kind(Enum):
    """What sort of refusal, which decides the gRPC status code."""

    INVALID = "INVALID_ARGUMENT"          # malformed or out-of-range input
    UNAUTHENTICATED = "UNAUTHENTICATED"   # a signature or certificate that does not verify
    DENIED = "PERMISSION_DENIED"          # policy or consent says no
    NOT_FOUND = "NOT_FOUND"               # the thing named does not exist
    PRECONDITION = "FAILED_PRECONDITION"  # valid, but the state of the network does not allow it
    OUT_OF_RANGE = "OUT_OF_RANGE"         # past the end of something that grows (a log)
    TOO_LARGE = "RESOURCE_EXHAUSTED"      # over a size limit
    UNAVAILABLE = "UNAVAILABLE"           # nobody could answer


@dataclass(frozen=True)
class Violation:
    field: str
    description: str


@dataclass
class Refusal(Exception):
    """A request refused for a stated reason.

    `reason` is a stable machine-readable code (e.g. CONSENT_REVOKED); `message` is the
    sentence a person reads; `violations` name the offending fields.
    """

    kind: Kind
    reason: str
    message: str
    violations: tuple[Violation, ...] = ()
    policy_ids: tuple[str, ...] = field(default=())
    metadata: dict[str, str] = field(default_factory=dict)  # machine-readable facts (ErrorInfo.metadata)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    @classmethod
    def invalid(cls, field_name: str, description: str, reason: str = "INVALID_FIELD") -> "Refusal":
        return cls(Kind.INVALID, reason, f"{field_name}: {description}", (Violation(field_name, description),))

    @classmethod
    def unauthenticated(cls, field_name: str, description: str, reason: str = "BAD_SIGNATURE", *,
                        policy_ids: tuple[str, ...] = ()) -> "Refusal":
        return cls(Kind.UNAUTHENTICATED, reason, f"{field_name}: {description}", (Violation(field_name, description),),
                   policy_ids)

    @classmethod
    def denied(cls, reason: str, message: str, *, field_name: str | None = None, policy_ids: tuple[str, ...] = ()) -> "Refusal":
        violations = (Violation(field_name, message),) if field_name else ()
        return cls(Kind.DENIED, reason, message, violations, policy_ids)
