"""Reading an audit log: the auditor-only view, shared by nodes and the registry."""

from __future__ import annotations

import asyncio

from xinyi.errors import Refusal
from xinyi.identity import Principal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.store import AuditEntry, BaseStore
from xinyi import uscc as uscc_codes

MAX_PAGE = 1000


class AuditReader:
    def __init__(self, owner: Principal, store: BaseStore, authorizer: Authorizer, clock) -> None:
        self.owner = owner
        self.store = store
        self.authorizer = authorizer
        self.clock = clock

    async def read(self, caller: Principal, *, start_seq: int, limit: int, uscc: str, trace_id: str) -> list[AuditEntry]:
        """Entries from start_seq on; the read itself is audited, allowed or not."""
        decision = self.authorizer.decide(caller, Action.READ_AUDIT, Resource.audit_log(str(self.owner)))
        refusal = None
        if not decision.allowed:
            refusal = Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
        elif start_seq < 0:
            refusal = Refusal.invalid("start_seq", "must not be negative")
        elif limit < 0 or limit > MAX_PAGE:
            refusal = Refusal.invalid("limit", f"must be between 1 and {MAX_PAGE} (0 means 100)")
        elif uscc and uscc_codes.problem(uscc):
            refusal = Refusal.invalid("uscc", uscc_codes.problem(uscc) or "")
        entry = AuditEntry.of(self.clock(), caller, str(Action.READ_AUDIT), refusal,
                              allowed=f"from seq {max(start_seq, 1)}", policy_ids=decision.policy_ids,
                              uscc=uscc, trace_id=trace_id)
        await asyncio.to_thread(self.store.append_audit, entry)
        if refusal:
            raise refusal
        return await asyncio.to_thread(self.store.list_audit, max(start_seq, 1), limit or 100, uscc)
