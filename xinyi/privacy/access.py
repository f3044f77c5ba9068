"""Access transparency: an enterprise sees every access to its data, each line provable.

The enterprise signs an AccessRequestBody; the registry relays it to every node that routes
for the enterprise; each node answers with the audit entries about the enterprise and an
inclusion proof of each against its signed checkpoint. The enterprise's client checks the
checkpoint signature (the node's key from the signed directory) and every proof.

An enterprise may have millions of entries, so each node answers a page at a time, newest
first unless asked otherwise, bounded by count and by bytes; the page's cursor (`AccessCursor`)
says where the next one starts. The signed request binds who asks; cursors and page sizes are
plain fields, because they only choose among the caller's own entries.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from xinyi.audit import merkle
from xinyi.audit.checkpoint import NoteError
from xinyi.audit.verify import LogKeys, verify_checkpoint
from xinyi.clock import MINUTE_MS
from xinyi.crypto.envelope import Verified, sign, verify
from xinyi.crypto.identity import Role
from xinyi.crypto.pki import Identity, TrustAnchor
from xinyi.directory import Directory
from xinyi.errors import Refusal
from xinyi.records.vocab import SELF_ACCESS
from xinyi.v1 import access_pb2, audit_pb2, envelope_pb2

WINDOW_MS = 5 * MINUTE_MS
PAGE_SIZE = 1000        # entries per node page, the default and the most
MAX_CURSOR_CHARS = 64
MAX_NODE_ID_CHARS = 16
MAX_PAGES_PER_CALL = 64  # nodes one call may go on at


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


def check_page_size(page_size: int, field: str = "page_size") -> int:
    """The page size asked (0 means the default), bounded."""
    if page_size > PAGE_SIZE:
        raise Refusal.invalid(field, f"is {page_size}; at most {PAGE_SIZE} entries a page")
    return page_size or PAGE_SIZE


_CURSOR = re.compile(r"(n)(\d{1,19})|(o)(\d{1,19})\.(\d{1,19})")


@dataclass(frozen=True)
class AccessCursor:
    """Which of an enterprise's entries at one node a page is taken from: indexes in
    [start, end), newest first (from end down) or oldest first (from start up).

    `end` is the log's size when the listing began, so that the entries a listing itself adds
    (each page read is logged) do not make an oldest-first listing run on for ever.
    Text form: "n<end>" newest first, "o<start>.<end>" oldest first.
    """

    newest_first: bool
    start: int
    end: int

    @classmethod
    def first(cls, *, oldest_first: bool, size: int) -> "AccessCursor":
        return cls(not oldest_first, 0, size)

    @classmethod
    def parse(cls, text: str, *, oldest_first: bool, field: str = "cursor") -> "AccessCursor":
        if len(text) > MAX_CURSOR_CHARS:
            raise Refusal.invalid(field, f"is {len(text)} characters; a cursor has at most {MAX_CURSOR_CHARS}")
        m = _CURSOR.fullmatch(text)
        if m is None:
            raise Refusal.invalid(field, "is not a cursor this node gave; give back next_cursor as it came")
        if m.group(1):
            cursor = cls(True, 0, int(m.group(2)))
        else:
            cursor = cls(False, int(m.group(4)), int(m.group(5)))
        if cursor.newest_first == oldest_first:
            raise Refusal.invalid(field, "was given for the other order; keep oldest_first as on the first page")
        if cursor.start > cursor.end:
            raise Refusal.invalid(field, "starts after it ends")
        return cursor

    def within(self, size: int) -> "AccessCursor":
        """The same range, cut at the log's present size (a cursor cannot reach past the log)."""
        return AccessCursor(self.newest_first, min(self.start, size), min(self.end, size))

    def after(self, last_index: int) -> "AccessCursor":
        """Where the page after one that ended at `last_index` starts."""
        if self.newest_first:
            return AccessCursor(True, self.start, last_index)
        return AccessCursor(False, last_index + 1, self.end)

    def __str__(self) -> str:
        return f"n{self.end}" if self.newest_first else f"o{self.start}.{self.end}"


@dataclass(frozen=True)
class Access:
    """One proven line of an enterprise's access history."""

    node: str
    index: int
    record: audit_pb2.AuditRecord
    withheld_bytes: int = 0  # an entry too large to send: only its hash was proven

    @property
    def self_access(self) -> bool:
        """The enterprise itself read its records (purpose self_access), not an institution."""
        r = self.record
        return (r.action == "query" and r.purpose == SELF_ACCESS and r.caller_role == str(Role.ENTERPRISE)
                and r.caller_id == r.uscc)

    def to_json(self) -> dict:
        r = self.record
        out = {
            "node": self.node, "index": self.index, "at_ms": r.at_ms, "institution": f"{r.caller_role}/{r.caller_id}",
            "relayed_by": r.relayed_by, "action": r.action, "purpose": r.purpose, "categories": list(r.categories),
            "consent_id": r.consent_id,
            "decision": audit_pb2.Decision.Name(r.decision).removeprefix("DECISION_").lower(),
            "reason": r.reason, "proven": True, "self_access": self.self_access,
        }
        if self.withheld_bytes:
            out.update(institution="", decision="", withheld_bytes=self.withheld_bytes,
                       reason=f"an entry of {self.withheld_bytes} bytes, too large to send; its hash is proven in the log")
        return out


class AccessProofError(Exception):
    """A node's access list that does not prove what it claims."""


def verify_node_accesses(accesses: access_pb2.NodeAccesses, directory: Directory, uscc: str, *,
                         newest_first: bool | None = None, after: int | None = None) -> list[Access]:
    """Check the node's signed checkpoint and every entry's inclusion proof against it.

    With `newest_first` given, the entries must also come in that order, and (with `after`,
    the last index of the node's previous page) go on from where the previous page ended:
    a node cannot repeat entries or loop a listing.
    """
    node = accesses.node_id
    entry = directory.nodes.get(node)
    if entry is None:
        raise AccessProofError(f"node {node} is not in the signed directory")
    keys = LogKeys.of(directory, f"xinyi/{node}")  # with the directory's revocation lists
    try:
        checkpoint = verify_checkpoint(accesses.checkpoint, f"xinyi/{node}", keys)  # the key id picks one of its keys
    except NoteError as e:
        raise AccessProofError(f"node {node}'s checkpoint does not verify: {e}") from None
    out = []
    previous = after
    for proven in accesses.entries:
        if newest_first is not None and previous is not None and (
                proven.index >= previous if newest_first else proven.index <= previous):
            raise AccessProofError(f"node {node}: entry {proven.index} is out of order after entry {previous}")
        previous = proven.index
        if not 0 <= proven.index < checkpoint.size:
            raise AccessProofError(f"node {node}: entry {proven.index} is not in the log its checkpoint signs")
        withheld = not proven.leaf_input and proven.withheld_bytes > 0
        leaf = bytes(proven.leaf_hash) if withheld else merkle.leaf_hash(proven.leaf_input)
        if not merkle.verify_inclusion(leaf, proven.index, checkpoint.size, list(proven.audit_path), checkpoint.root):
            raise AccessProofError(f"node {node}: entry {proven.index} is not in the log its checkpoint signs")
        if withheld:
            out.append(Access(node, proven.index, audit_pb2.AuditRecord(index=proven.index, uscc=uscc),
                              withheld_bytes=proven.withheld_bytes))
            continue
        try:
            record = audit_pb2.AuditRecord.FromString(proven.leaf_input)
        except DecodeError:
            raise AccessProofError(f"node {node}: entry {proven.index} is not an audit record") from None
        if record.uscc != uscc or record.index != proven.index:
            raise AccessProofError(f"node {node}: entry {proven.index} is not about {uscc}")
        out.append(Access(node, proven.index, record))
    if accesses.next_cursor and not accesses.entries:
        raise AccessProofError(f"node {node}: a page with no entries cannot have a next page")
    return out
