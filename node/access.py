"""A node's answer to an enterprise asking who accessed its data: one page of the audit entries
about it, each with an inclusion proof against the node's signed checkpoint.

A page is bounded by count and by bytes, so no page can outgrow a gRPC message whatever the
entries hold; an entry too large for any page is sent as its proven leaf hash, so a listing
always moves on. The entries are found through the audit log's (uscc, idx) index: a page costs
the same with ten entries or ten million.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from xinyi.audit import merkle
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.identity import Principal
from xinyi.errors import Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.privacy.access import AccessCursor, check_access_request, check_page_size
from xinyi.relay import relayed_by
from xinyi.v1 import access_pb2

MAX_PAGE_BYTES = 3 * 1024 * 1024  # under gRPC's 4 MiB with the checkpoint and framing
MIN_PAGE_BYTES = 4096
ENTRY_FRAMING = 16                # protobuf tags and lengths around one entry


def proof_bytes(size: int) -> int:
    """An inclusion proof's size in a tree of `size`: one 32-byte hash (and its framing) a level."""
    return max(size - 1, 0).bit_length() * (merkle.HASH_SIZE + 2)


@dataclass
class AccessDesk:
    node_id: str
    audit_log: AuditLog
    authorizer: Authorizer
    clock: Clock

    async def accesses(self, caller: Principal, request: access_pb2.NodeAccessesRequest, trace_id: str) -> access_pb2.NodeAccesses:
        trust = self.audit_log.identity.trust()
        uscc, who, relay = "", caller, ""
        try:
            checked = check_access_request(request.request, trust, self.clock())
            uscc = checked.message.uscc
            relay = relayed_by(self.authorizer, caller, checked.signer, "request")
            who = checked.signer  # from here on, the asker is the enterprise that signed, relayed or not
            decision = self.authorizer.decide(checked.signer, Action.READ_ACCESSES, Resource.enterprise(uscc))
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
            page_size = check_page_size(request.page_size)
            cursor = (AccessCursor.parse(request.cursor, oldest_first=request.oldest_first) if request.cursor else None)
        except Refusal as r:
            await self.audit_log.append(AuditEntry.of(self.clock(), who, str(Action.READ_ACCESSES), r, allowed="",
                                                      relayed_by=relay, uscc=uscc, trace_id=trace_id))
            raise
        latest, _ = await self.audit_log.checkpoints()
        size = latest.checkpoint.size
        cursor = (cursor or AccessCursor.first(oldest_first=request.oldest_first, size=size)).within(size)
        budget = min(max(request.max_bytes or MAX_PAGE_BYTES, MIN_PAGE_BYTES), MAX_PAGE_BYTES) - len(latest.note)
        entries, next_cursor = await self._page(uscc, cursor, page_size, budget, size)
        total = (await asyncio.to_thread(self.audit_log.store.count_audit, uscc=uscc, end=size)
                 if request.count_total and not request.cursor else 0)  # a count reads every entry's index row
        where = f"from index {entries[0].index} " if entries else ""
        await self.audit_log.append(AuditEntry.of(
            self.clock(), who, str(Action.READ_ACCESSES), None, relayed_by=relay, uscc=uscc, trace_id=trace_id,
            allowed=f"{len(entries)} entries {where}{'newest' if cursor.newest_first else 'oldest'} first"))
        return access_pb2.NodeAccesses(node_id=self.node_id, checkpoint=latest.note, entries=entries,
                                       next_cursor=str(next_cursor) if next_cursor else "", total=total)

    async def _page(self, uscc: str, cursor: AccessCursor, page_size: int, budget: int,
                    size: int) -> tuple[list[access_pb2.ProvenEntry], AccessCursor | None]:
        """The entries of one page, proven against the tree of `size`, and where the next starts."""
        store = self.audit_log.store
        sizes = await asyncio.to_thread(store.audit_sizes, uscc=uscc, start=cursor.start, end=cursor.end,
                                        limit=page_size + 1, newest_first=cursor.newest_first)
        per_entry = proof_bytes(size) + ENTRY_FRAMING
        taken, used = [], 0
        for index, nbytes in sizes[:page_size]:
            if used + nbytes + per_entry > budget:
                if not taken:  # alone too large for any page: its hash goes instead
                    taken.append(index)
                break
            taken.append(index)
            used += nbytes + per_entry
        if not taken:
            return [], None
        lo, hi = min(taken), max(taken)
        rows = await asyncio.to_thread(store.find_audit, uscc=uscc, start=lo, end=hi + 1, limit=len(taken),
                                       newest_first=cursor.newest_first)
        paths = await self.audit_log.inclusion_proofs([e.index for e in rows], size)
        entries = []
        for row, path in zip(rows, paths):
            if len(row.leaf_input) + per_entry > budget:
                entries.append(access_pb2.ProvenEntry(index=row.index, leaf_hash=merkle.leaf_hash(row.leaf_input),
                                                      withheld_bytes=len(row.leaf_input), audit_path=path))
            else:
                entries.append(access_pb2.ProvenEntry(index=row.index, leaf_input=row.leaf_input, audit_path=path))
        more = len(sizes) > len(taken)
        return entries, cursor.after(entries[-1].index) if more and entries else None
