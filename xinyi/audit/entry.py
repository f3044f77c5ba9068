"""What the audit log holds: one entry per decision, and the storage it needs underneath.

The log does not know which database keeps it: a store offers the few operations of
AuditStore (xinyi.store.BaseStore does, on SQLite and PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple, Protocol

from xinyi.errors import bounded
from xinyi.v1 import audit_pb2

if TYPE_CHECKING:
    from xinyi.crypto.identity import Principal
    from xinyi.errors import Refusal

# The most an entry keeps of each field, whatever a handler passes: the last line of defence
# that keeps every entry small (and so every page of the log servable), even if some caller's
# value reached an entry unchecked. Generous for what the fields really hold.
SHORT_CHARS = 128        # ids, names, hashes
REASON_CHARS = 2000
DETAIL_CHARS = 16000     # per-node outcomes of a routing across the whole network
MAX_LIST_ITEMS = 32      # categories, policy ids
LIST_ITEM_CHARS = 128
_SHORT_FIELDS = ("caller_role", "caller_id", "action", "decision", "relayed_by", "uscc", "purpose", "consent_id",
                 "request_hash", "trace_id")


class ConsentScope(Protocol):
    """The part of a consent an entry records (xinyi.privacy.consent.StoredConsent has it)."""

    uscc: str
    categories: tuple[str, ...]
    purpose: str
    consent_id: str


@dataclass(frozen=True)
class AuditEntry:
    """One decision, as a handler reports it to the audit log (which adds index and chain)."""

    at_ms: int
    caller_role: str
    caller_id: str
    action: str
    decision: str  # "allow" or "deny"
    relayed_by: str = ""
    uscc: str = ""
    categories: tuple[str, ...] = ()
    purpose: str = ""
    consent_id: str = ""
    policy_ids: tuple[str, ...] = ()
    reason: str = ""
    request_hash: str = ""
    trace_id: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        for name in _SHORT_FIELDS:
            object.__setattr__(self, name, bounded(getattr(self, name), SHORT_CHARS))
        object.__setattr__(self, "reason", bounded(self.reason, REASON_CHARS))
        object.__setattr__(self, "detail", bounded(self.detail, DETAIL_CHARS))
        for name in ("categories", "policy_ids"):
            items = getattr(self, name)
            kept = tuple(bounded(i, LIST_ITEM_CHARS) for i in items[:MAX_LIST_ITEMS])
            if len(items) > MAX_LIST_ITEMS:
                kept += (f"…[{len(items) - MAX_LIST_ITEMS} more]",)
            object.__setattr__(self, name, kept)

    @classmethod
    def of(
        cls,
        at_ms: int,
        caller: "Principal",
        action: str,
        refusal: "Refusal | None",
        *,
        allowed: str,
        consent: "ConsentScope | None" = None,
        policy_ids: tuple[str, ...] = (),
        **fields,
    ) -> "AuditEntry":
        """An entry for one decision: denied with the refusal's reason, or allowed with `allowed`."""
        if consent is not None:
            fields.update(uscc=consent.uscc, categories=consent.categories, purpose=consent.purpose,
                          consent_id=consent.consent_id)
        return cls(
            at_ms=at_ms,
            caller_role=str(caller.role),
            caller_id=caller.id,
            action=action,
            decision="deny" if refusal else "allow",
            policy_ids=(refusal.policy_ids or policy_ids) if refusal else policy_ids,
            reason=refusal.logged if refusal else allowed,
            **fields,
        )

    def to_record(self, index: int, prev_root: bytes) -> audit_pb2.AuditRecord:
        return audit_pb2.AuditRecord(
            index=index,
            at_ms=self.at_ms,
            caller_role=self.caller_role,
            caller_id=self.caller_id,
            relayed_by=self.relayed_by,
            action=self.action,
            uscc=self.uscc,
            categories=self.categories,
            purpose=self.purpose,
            consent_id=self.consent_id,
            decision=audit_pb2.DECISION_ALLOW if self.decision == "allow" else audit_pb2.DECISION_DENY,
            policy_ids=self.policy_ids,
            reason=self.reason,
            request_hash=self.request_hash,
            trace_id=self.trace_id,
            detail=self.detail,
            prev_root=prev_root,
        )


@dataclass(frozen=True)
class StoredEntry:
    """An audit log row: its index and the exact entry bytes."""

    index: int
    leaf_input: bytes

    def record(self) -> audit_pb2.AuditRecord:
        return audit_pb2.AuditRecord.FromString(self.leaf_input)


@dataclass(frozen=True)
class AuditBatch:
    """A group commit whose indexes and chain are decided inside the store's transaction, once
    the store has serialized it against every other writer of the same log (another process,
    another host): `build` gets the leaf hashes they appended after `known_size` and returns
    the rows, numbered after them."""

    origin: str
    known_size: int
    count: int  # entries in the batch
    build: Callable[[list[bytes]], list[dict]]

    def __len__(self) -> int:
        return self.count


class Retraction(NamedTuple):
    """A row an earlier entry's request wrote with it (its consent use), deleted by the commit of
    the entry that retracts it (AuditLog: a commit whose reply was lost)."""

    table: str
    row: dict


class AuditStore(Protocol):
    """The storage an AuditLog is kept in: append in batches, read back, keep checkpoints.

    `shared`: other processes may append to the same log (a PostgreSQL store); the log then
    reads what they appended before it answers a reader."""

    shared: bool

    def append_audit_batch(self, rows: "list[dict] | AuditBatch", extras: list[tuple[str, dict]] = ()) -> list[bytes]: ...
    def audit_leaf_hashes(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]: ...
    def audit_index_of(self, leaf_hash: bytes) -> int | None: ...
    def audit_entries(self, start: int, end: int) -> list[StoredEntry]: ...
    def find_audit(self, *, uscc: str = "", request_hash: str = "", start: int = 0, end: int | None = None,
                   limit: int = 1000, newest_first: bool = False) -> list[StoredEntry]: ...
    def audit_sizes(self, *, uscc: str = "", start: int = 0, end: int | None = None, limit: int = 1000,
                    newest_first: bool = False) -> list[tuple[int, int]]: ...
    def put_checkpoint(self, size: int, root: bytes, note: str, at_ms: int, *, cosigned: bool = False) -> None: ...
    def latest_checkpoint(self) -> tuple[int, bytes, str, int] | None: ...
