"""Consents arriving at a node: pushed by the registry on every change and pulled every few
seconds; each signature (consent, delegation, change) verified here."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from node.store import NodeStore
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.envelope import claimed_time
from xinyi.crypto.identity import Principal
from xinyi.crypto.pki import TrustAnchor
from xinyi.errors import Kind, Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.privacy.consent import Status, StoredConsent, apply_change, status_of, verify_change, verify_consent
from xinyi.v1 import consent_pb2

log = logging.getLogger("xinyi.node.consents")


REFRESH_SECONDS = 1.0  # how long a worker waits for its sequencer's news before refusing


@dataclass
class ConsentFreshness:
    """A node acts on its consents only while the registry confirmed them recently: a consent
    revoked at the registry must not go on being honoured by a node that stopped hearing from it."""

    confirmed_at: Callable[[], int]  # when the registry last confirmed this node's consents (ms)
    freshness_ms: int = 30_000
    # A worker's view of the confirmation is its sequencer's, polled every half second: before
    # refusing, it asks again, so that a worker just started (or between polls) refuses nothing
    # its sequencer would answer. One ask at a time, shared by every query waiting on it.
    refresh: Callable[[], Awaitable[None]] | None = None
    _asking: asyncio.Future | None = field(default=None, init=False, repr=False)

    def fresh(self, now: int) -> bool:
        return now - self.confirmed_at() <= self.freshness_ms

    async def require(self, now: int, doing: str) -> bool:
        """Refuse (UNAVAILABLE: the node's own state, not the asker's fault) unless fresh.
        True when it had to wait for the sequencer: what the caller read before may be stale."""
        if self.fresh(now):
            return False
        if self.refresh is not None:
            if self._asking is None or self._asking.done():
                self._asking = asyncio.ensure_future(self._ask())
            await asyncio.shield(self._asking)
            if self.fresh(now):
                return True
        raise Refusal(Kind.UNAVAILABLE, "CONSENT_STATUS_UNCONFIRMED",
                      f"consent_id: this node could not confirm consent statuses with the registry in the last "
                      f"{self.freshness_ms / 1000:g} s, so it {doing}; try again shortly")

    async def _ask(self) -> None:
        try:
            await asyncio.wait_for(self.refresh(), REFRESH_SECONDS)
        except Exception as e:  # noqa: BLE001 - a sequencer that does not answer confirms nothing: refused
            log.debug("the sequencer did not confirm consent statuses: %s", e)


class ConsentInbox:
    def __init__(self, store: NodeStore, authorizer: Authorizer, trust: TrustAnchor, audit_log: AuditLog, clock: Clock) -> None:
        self.store = store
        self.authorizer = authorizer
        self.trust = trust
        self.audit_log = audit_log
        self.clock = clock
        self.synced_at_ms = 0  # when the registry last confirmed this node's consents
        self._lock = asyncio.Lock()  # changes to one consent apply in order

    async def deliver(self, caller: Principal, record: consent_pb2.ConsentRecord, *, trace_id: str = "") -> tuple[str, Status]:
        """The registry pushes a consent with its delegation and changes."""
        decision = self.authorizer.decide(caller, Action.DELIVER_CONSENT, Resource.network())
        consent: StoredConsent | None = None
        try:
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
            consent = await self.accept(record)
        except Refusal as r:
            await self._audit(caller, consent, r, "", decision.policy_ids, trace_id)
            raise
        uses, _ = await asyncio.to_thread(self.store.use_stats, consent.consent_id)
        status = status_of(consent, self.clock(), uses)
        await self._audit(caller, consent, None, f"consent {status}", decision.policy_ids, trace_id)
        return consent.consent_id, status

    async def accept(self, record: consent_pb2.ConsentRecord) -> StoredConsent:
        """Verify and store a consent and apply its signed changes in order. Idempotent."""
        delegation = record.delegation if record.HasField("delegation") else None
        # Consents come from the registry, which verified each when it was signed: they are
        # checked as of their signing, so that an enterprise's certificate revoked since does
        # not void what it consented to before (nor a change it signed before).
        consent = verify_consent(record.consent, self.trust, self.clock(), delegation,
                                 at=claimed_time(record.consent, consent_pb2.ConsentBody, "issued_at_ms"))
        async with self._lock:
            await asyncio.to_thread(self.store.put_consent, consent)
            current = await asyncio.to_thread(self.store.get_consent, consent.consent_id)
            for envelope in record.changes:
                change = verify_change(envelope, current, self.trust,
                                       at=claimed_time(envelope, consent_pb2.ConsentChangeBody, "at_ms"))
                changed = apply_change(current, change)
                if changed is not None:
                    await asyncio.to_thread(self.store.put_change, changed, change.at_ms,
                                            envelope.SerializeToString(deterministic=True))
                    current = changed
        return current

    async def _audit(self, caller, consent, refusal, allowed, policy_ids, trace_id) -> None:
        entry = AuditEntry.of(self.clock(), caller, str(Action.DELIVER_CONSENT), refusal, allowed=allowed,
                              consent=consent, policy_ids=policy_ids, trace_id=trace_id)
        await self.audit_log.append(entry)
