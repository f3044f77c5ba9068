"""Refusals: the domain's way of saying no, with the field and the reason.

The domain core raises `Refusal`; the gRPC layer (xinyi.rpc.status) turns it into the fitting
status code with google.rpc details. Nothing here knows about gRPC.

Every reason is a value of `enum ErrorReason` in proto/xinyi/v1/errors.proto (the contract other
languages' clients switch on); `Reason` is that enum in Python, and a Refusal with a reason the
enum lacks cannot be made.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from xinyi.v1 import errors_pb2

MESSAGE_CHARS = 1000  # a refusal's message, and each field description and metadata value
ECHO_CHARS = 120       # a caller's value quoted inside a message

# C0/C1 controls, DEL, line and paragraph separators, and bidirectional overrides: nothing that
# could forge a line in a log or reorder what an operator reads.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]+")


def bounded(value: object, limit: int = ECHO_CHARS) -> str:
    """`value` as text safe to put into an error or a log line: control characters removed, at
    most `limit` characters, with a marker saying how many more there were.

    The one helper for echoing anything a caller sent (or a peer answered); a 4 MB field
    becomes a short line, never a 4 MB error or audit entry."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and not _CONTROL.search(text):
        return text
    if len(text) > 4 * limit:  # never scan more than needed: a huge value is cut first
        head, cut = text[: 4 * limit], len(text) - 4 * limit
    else:
        head, cut = text, 0
    head = _CONTROL.sub("", head)
    if len(head) > limit:
        cut += len(head) - limit
        head = head[:limit]
    return f"{head}…[{cut} more characters]" if cut else head


def quoted(value: object, limit: int = ECHO_CHARS) -> str:
    """A caller's value quoted in a message: repr-style quotes around `bounded(value)`."""
    return "'" + bounded(value, limit) + "'"


REASON_PREFIX = "ERROR_REASON_"
# ErrorReason as a Python enum, under the names sent on the wire: Reason.CONSENT_REVOKED == 41.
Reason = IntEnum("Reason", {v.name.removeprefix(REASON_PREFIX): v.number  # type: ignore[misc]
                            for v in errors_pb2.DESCRIPTOR.enum_types_by_name["ErrorReason"].values})


def reason_of(name: str) -> "Reason":
    """The enum value of a reason as sent on the wire; UNSPECIFIED for "" and for a name this
    version does not know (a newer peer's)."""
    return Reason.__members__.get(name, Reason.UNSPECIFIED)


def checked_reason(reason: "str | Reason") -> str:
    """`reason` as sent on the wire, refused unless ErrorReason has it: no reason leaves a server
    that is not in the contract."""
    name = reason.name if isinstance(reason, Reason) else reason
    if reason_of(name) is Reason.UNSPECIFIED:
        raise ValueError(f"refusal reason {name!r} is not a value of ErrorReason: add ERROR_REASON_{name} to "
                         "proto/xinyi/v1/errors.proto (and run `make proto`)")
    return name


class Kind(Enum):
    """What sort of refusal, which decides the gRPC status code."""

    INVALID = "INVALID_ARGUMENT"          # malformed or out-of-range input
    UNAUTHENTICATED = "UNAUTHENTICATED"   # a signature or certificate that does not verify
    DENIED = "PERMISSION_DENIED"          # policy or consent says no
    NOT_FOUND = "NOT_FOUND"               # the thing named does not exist
    PRECONDITION = "FAILED_PRECONDITION"  # valid, but the state of the network does not allow it
    ALREADY_RECEIVED = "ALREADY_EXISTS"   # this very request was received before (a retry): not handled twice
    OUT_OF_RANGE = "OUT_OF_RANGE"         # past the end of something that grows (a log)
    TOO_LARGE = "RESOURCE_EXHAUSTED"      # over a size limit
    UNAVAILABLE = "UNAVAILABLE"           # nobody could answer


class StoreUnavailable(Exception):
    """An infrastructure fault: the store (database, disk, the node's sequencer) could not be
    used. Not a refusal: the caller is told to try again, never why in detail."""


# SQLSTATE classes and codes that say the database cannot take the request now, whatever it is:
# no connection (08), the server shutting down or starting (57P01-57P03), out of resources
# (53: a full disk, too many connections), and a read-only server (25006: a standby, or a primary
# being demoted) - all of them seen while a standby is promoted.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53")
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "25006"})


def is_store_unavailable(error: BaseException) -> bool:
    """Whether `error` means the store could not be reached or written (the database went away,
    a failover is under way, the disk is full), as opposed to a bug. Knows SQLAlchemy's classes
    without importing it."""
    if isinstance(error, (StoreUnavailable, OSError)):
        return True
    sa = sys.modules.get("sqlalchemy.exc")
    if sa is not None and isinstance(error, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError,
                                             sa.DisconnectionError)):
        return True
    if sa is not None and isinstance(error, sa.DBAPIError):
        if error.connection_invalidated:  # SQLAlchemy saw the connection die under the statement
            return True
        state = getattr(error.orig, "sqlstate", None) or ""
        if state.startswith(_UNAVAILABLE_SQLSTATE_CLASSES) or state in _UNAVAILABLE_SQLSTATES:
            return True
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3 is not None and isinstance(error, (sqlite3.OperationalError, sqlite3.InterfaceError))


@dataclass(frozen=True)
class Violation:
    field: str
    description: str


@dataclass
class Refusal(Exception):
    """A request refused for a stated reason.

    `reason` is a stable machine-readable code, the name of a value of ErrorReason (e.g.
    CONSENT_REVOKED; the constructors below take a `Reason` too); `message` is the sentence a
    person reads; `violations` name the offending fields. `relayed`: the reason is a peer's,
    passed on as it came (a newer node may send a value this version does not know), so it is
    not checked.
    """

    kind: Kind
    reason: str
    message: str
    violations: tuple[Violation, ...] = ()
    policy_ids: tuple[str, ...] = field(default=())
    metadata: dict[str, str] = field(default_factory=dict)  # machine-readable facts (ErrorInfo.metadata)
    # For the audit log only, never sent to the caller: what the message deliberately leaves out
    # (e.g. that an "unknown" consent exists but is another institution's).
    audit_note: str = ""
    relayed: bool = False

    def __post_init__(self) -> None:
        if not self.relayed:
            self.reason = checked_reason(self.reason)
        # Whatever a message quotes, the caller, the audit log and the operator's log get a short line.
        self.message = bounded(self.message, MESSAGE_CHARS)
        self.violations = tuple(Violation(bounded(v.field, ECHO_CHARS), bounded(v.description, MESSAGE_CHARS))
                                for v in self.violations)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    @property
    def logged(self) -> str:
        """The refusal as the audit log records it: reason, message and the auditors' note."""
        note = f" [{self.audit_note}]" if self.audit_note else ""
        return f"{self.reason}: {self.message}{note}"

    @classmethod
    def invalid(cls, field_name: str, description: str, reason: str | Reason = "INVALID_FIELD") -> "Refusal":
        return cls(Kind.INVALID, checked_reason(reason), f"{field_name}: {description}", (Violation(field_name, description),))

    @classmethod
    def unauthenticated(cls, field_name: str, description: str, reason: str | Reason = "BAD_SIGNATURE", *,
                        policy_ids: tuple[str, ...] = ()) -> "Refusal":
        return cls(Kind.UNAUTHENTICATED, checked_reason(reason), f"{field_name}: {description}", (Violation(field_name, description),),
                   policy_ids)

    @classmethod
    def denied(cls, reason: str | Reason, message: str, *, field_name: str | None = None, policy_ids: tuple[str, ...] = (),
               audit_note: str = "") -> "Refusal":
        violations = (Violation(field_name, message),) if field_name else ()
        return cls(Kind.DENIED, checked_reason(reason), message, violations, policy_ids, audit_note=audit_note)
