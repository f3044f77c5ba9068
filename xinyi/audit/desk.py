"""The auditor's view of a log, shared by nodes and the registry: records, the signed
checkpoint, raw entries, inclusion and consistency proofs. Auditors only; every read is itself
recorded in the log."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from xinyi.audit.entry import AuditEntry, StoredEntry
from xinyi.audit.log import AuditLog, SignedCheckpoint
from xinyi.crypto.identity import Principal
from xinyi.errors import Kind, Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.records import uscc as uscc_codes

MAX_PAGE = 1000
# A page also stops at this many bytes of entries (but holds at least one), so that no page
# exceeds the message limit whatever the entries hold. An entry is bounded when appended
# (xinyi.audit.entry); one written before that may be larger, and is served alone.
MAX_PAGE_BYTES = 2 * 1024 * 1024
_ENTRY_OVERHEAD = 16  # its index and framing in a response


def fitting(sizes: list[tuple[int, int]], budget: int = MAX_PAGE_BYTES) -> int:
    """How many of these (index, bytes) entries fit in `budget` bytes; at least one."""
    total = 0
    for n, (_, size) in enumerate(sizes):
        total += size + _ENTRY_OVERHEAD
        if total > budget and n > 0:
            return n
    return len(sizes)


@dataclass
class AuditDesk:
    log: AuditLog
    authorizer: Authorizer

    async def _checked(self, caller: Principal, what: str, trace_id: str, problem: Refusal | None = None, uscc: str = "") -> None:
        """Authorize the read and record it, allowed or refused."""
        decision = self.authorizer.decide(caller, Action.READ_AUDIT, Resource.audit_log(str(self.log.identity.principal)))
        refusal = None if decision.allowed else Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
        refusal = refusal or problem
        await self.log.append(AuditEntry.of(self.log.clock(), caller, str(Action.READ_AUDIT), refusal, allowed=what,
                                            policy_ids=decision.policy_ids, uscc=uscc, trace_id=trace_id))
        if refusal:
            raise refusal

    async def records(self, caller: Principal, *, start: int, limit: int, uscc: str,
                      trace_id: str) -> tuple[list[StoredEntry], int]:
        """A page of records from `start` (about `uscc` when given) and the index to continue
        from, -1 when there is nothing more. At most `limit` records and MAX_PAGE_BYTES."""
        problem = None
        if start < 0:
            problem = Refusal.invalid("start", "must not be negative")
        elif limit < 0 or limit > MAX_PAGE:
            problem = Refusal.invalid("limit", f"must be between 1 and {MAX_PAGE} (0 means 100)")
        elif uscc and uscc_codes.problem(uscc):
            problem = Refusal.invalid("uscc", uscc_codes.problem(uscc) or "")
        await self._checked(caller, f"records from {start}", trace_id, problem, uscc)
        limit = limit or 100
        sizes = await asyncio.to_thread(self.log.store.audit_sizes, start=start, uscc=uscc, limit=limit)
        count = fitting(sizes)
        entries = await asyncio.to_thread(self.log.store.find_audit, uscc=uscc, start=start, limit=count) if count else []
        more = count < len(sizes) or len(sizes) == limit
        return entries, entries[-1].index + 1 if more and entries else -1

    async def checkpoint(self, caller: Principal, trace_id: str) -> tuple[SignedCheckpoint, SignedCheckpoint | None]:
        """The latest checkpoint and the newest cosigned one, taken before the read is logged:
        they describe the log as asked."""
        checkpoints = await self.log.checkpoints()
        await self._checked(caller, "checkpoint", trace_id)
        return checkpoints

    async def entries(self, caller: Principal, start: int, end: int, trace_id: str) -> list[StoredEntry]:
        """Entries start..end inclusive (RFC 6962 get-entries), at most MAX_PAGE of them and
        MAX_PAGE_BYTES (but at least one); the caller asks again from after the last."""
        size = await self.log.size()
        problem = None
        if start < 0 or end < start:
            problem = Refusal.invalid("start", f"must satisfy 0 <= start <= end, got start={start} end={end}")
        elif start >= size:
            problem = Refusal(Kind.OUT_OF_RANGE, "BEYOND_TREE_SIZE", f"start: {start} is past the end of the log (size {size})")
        await self._checked(caller, f"entries {start}..{end}", trace_id, problem)
        last = min(end, start + MAX_PAGE - 1, size - 1)
        sizes = await asyncio.to_thread(self.log.store.audit_sizes, start=start, end=last + 1, limit=MAX_PAGE)
        return await asyncio.to_thread(self.log.store.audit_entries, start, start + fitting(sizes))

    async def inclusion(self, caller: Principal, *, index: int | None, leaf_hash: bytes | None, tree_size: int,
                        trace_id: str) -> tuple[int, list[bytes]]:
        problem = await self._size_problem("tree_size", tree_size, minimum=1)
        if problem is None and leaf_hash is not None:
            index = await self.log.index_of(leaf_hash)
            if index is None or index >= tree_size:
                problem = Refusal(Kind.NOT_FOUND, "UNKNOWN_LEAF_HASH",
                                  f"leaf_hash: no entry with this hash in the first {tree_size} entries")
        elif problem is None and (index is None or not 0 <= index < tree_size):
            problem = Refusal.invalid("index", f"must be between 0 and tree_size - 1 ({tree_size - 1}), got {index}")
        await self._checked(caller, f"inclusion proof for {index} in {tree_size}", trace_id, problem)
        return index, await self.log.inclusion_proof(index, tree_size)

    async def consistency(self, caller: Principal, first: int, second: int, trace_id: str) -> list[bytes]:
        problem = await self._size_problem("second", second, minimum=1)
        if problem is None and not 1 <= first <= second:
            problem = Refusal.invalid("first", f"must be between 1 and second ({second}), got {first}")
        await self._checked(caller, f"consistency proof {first} -> {second}", trace_id, problem)
        return await self.log.consistency_proof(first, second)

    async def _size_problem(self, field: str, value: int, minimum: int) -> Refusal | None:
        size = await self.log.size()
        if value > size:
            return Refusal(Kind.OUT_OF_RANGE, "BEYOND_TREE_SIZE", f"{field}: {value} is past the end of the log (size {size})")
        if value < minimum:
            return Refusal.invalid(field, f"must be at least {minimum}")
        return None


