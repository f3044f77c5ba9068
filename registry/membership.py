"""Who is on the network, and what the directory says about them.

Nodes register their endpoint and key, and claim the enterprises outside their own area they
hold records for; a claim is pending, never routed, until the platform operator (holding the
registry's own identity) approves it, and only approved claims are published in the signed
directory. Institutions (banks, guarantors, government departments) register themselves, with
the role, USCC and licence of their own certificate, so that enterprises may name them in
consents. Every change and every refusal is in the registry's audit log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from registry.addresses import AddressChange
from registry.directory import NetworkDirectory
from registry.store import APPROVED, PENDING, REJECTED, ClaimRow, InstitutionRow, RegistryStore
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.identity import IdentityError, Principal, Role, check_principal_id
from xinyi.crypto.pki import Identity
from xinyi.directory import Directory
from xinyi.errors import Kind, Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.records import uscc as uscc_codes
from xinyi.registration import REGISTRATION_WINDOW_MS, check_registration
from xinyi.v1 import directory_pb2, registry_pb2

log = logging.getLogger("xinyi.registry")

# A node joined an enterprise's route (node id, USCC): it must learn the enterprise's consents.
RouteAdded = Callable[[str, str], Awaitable[None]]

_STATES = {PENDING: registry_pb2.HOLDING_CLAIM_STATE_PENDING, APPROVED: registry_pb2.HOLDING_CLAIM_STATE_APPROVED,
           REJECTED: registry_pb2.HOLDING_CLAIM_STATE_REJECTED}
_STATE_NAMES = {v: k for k, v in _STATES.items()}


@dataclass
class Membership:
    identity: Identity
    directory: NetworkDirectory
    store: RegistryStore
    authorizer: Authorizer
    audit_log: AuditLog
    clock: Clock
    route_added: RouteAdded

    # -- nodes ----------------------------------------------------------------------------------
    async def register_node(self, caller: Principal, request: registry_pb2.RegisterNodeRequest,
                            trace_id: str) -> tuple[Directory, AddressChange]:
        """A node's signed registration (xinyi.registration): the endpoint and the signing key are
        read from it, never from the request's unsigned fields."""
        try:
            self._require(caller, Action.REGISTER_NODE)
            now = self.clock()
            signed = check_registration(request, caller, self.directory.trust, now)
            fresh = await asyncio.to_thread(self.store.remember_nonce, f"registration:{caller}", signed.message.nonce,
                                            now + 2 * REGISTRATION_WINDOW_MS, now)
            if not fresh:
                raise Refusal.invalid("registration.nonce", "was already used: a replayed registration is refused",
                                      "REPLAYED_NONCE")
            endpoint = signed.message.endpoint
            directory, registration = await self.directory.register(
                caller, endpoint, signed.signer_cert_der, list(request.held_usccs))
        except Refusal as r:
            await self._audit(caller, "register_node", r, trace_id)
            raise
        change = registration.address
        assert change is not None
        if change.changed or registration.new_claims or registration.withdrawn:
            # Counts only: what a node claims may be long; the operator lists it.
            detail = f"endpoint {endpoint}; directory version {directory.version}"
            if change.changed:
                detail = (f"endpoint changed from {change.address.previous_endpoint} to {endpoint}; "
                          f"directory version {directory.version}")
                log.log(logging.WARNING if change.conflict else logging.INFO, "node %s: %s%s", caller.id, detail,
                        f"; CONFLICT: {change.conflict}" if change.conflict else "")
            if change.conflict:
                detail += f"; CONFLICT: {change.conflict}"
            if registration.new_claims:
                detail += f"; {len(registration.new_claims)} new holding claims outside its area, pending approval"
            if registration.withdrawn:
                detail += f"; {len(registration.withdrawn)} holding claims withdrawn"
            await self._audit(caller, "register_node", None, trace_id, allowed="registered", detail=detail)
        return directory, change

    async def list_nodes(self, caller: Principal) -> list[registry_pb2.NodeRegistration]:
        """The platform operator's view: each node's endpoint, key, registrations, moves, conflicts."""
        self._require_operator(caller, Action.REVIEW_NODES)
        now, listed = self.clock(), []
        addresses = await asyncio.to_thread(self.store.node_addresses_seen)
        for node_id, entry in sorted(self.directory.current.nodes.items()):
            seen = addresses.get(node_id)
            listed.append(registry_pb2.NodeRegistration(
                node_id=node_id, endpoint=entry.endpoint,
                registered_at_ms=seen.registered_at_ms if seen else entry.registered_at_ms,
                signing_key_sha256=hashlib.sha256(entry.signing_cert).hexdigest(),
                previous_endpoint=seen.previous_endpoint if seen else "",
                endpoint_changed_at_ms=seen.changed_at_ms if seen else 0,
                conflict=seen.conflict(now) if seen else ""))
        return listed

    # -- the platform operator ------------------------------------------------------------------
    async def list_claims(self, caller: Principal, node_id: str, state: int) -> list[registry_pb2.HoldingClaim]:
        self._require_operator(caller)
        if node_id:
            _check_node_id(node_id)
        if state and state not in _STATE_NAMES:
            raise Refusal.invalid("state", "must be pending, approved or rejected")
        rows = await asyncio.to_thread(self.store.claims, node_id, _STATE_NAMES.get(state, ""))
        return [_claim(r) for r in rows]

    async def review_claim(self, caller: Principal, node_id: str, uscc: str, approve: bool,
                           trace_id: str) -> tuple[registry_pb2.HoldingClaim, int]:
        verb = "approve_holding" if approve else "reject_holding"
        try:
            self._require_operator(caller)
            _check_node_id(node_id)
            problem = uscc_codes.problem(uscc)
            if problem:
                raise Refusal.invalid("uscc", problem)
            row = await asyncio.to_thread(self.store.decide_claim, node_id, uscc, APPROVED if approve else REJECTED,
                                          self.clock())
            if row is None:
                raise Refusal(Kind.NOT_FOUND, "CLAIM_NOT_FOUND", f"node {node_id} claims no records of {uscc}")
            directory = await self.directory.refresh()
        except Refusal as r:
            await self._audit(caller, verb, r, trace_id, uscc=uscc if uscc_codes.is_valid(uscc) else "")
            raise
        routed = node_id in directory.route(uscc)
        await self._audit(caller, verb, None, trace_id, allowed="approved" if approve else "rejected", uscc=uscc,
                          detail=f"node {node_id} {'on' if routed else 'not on'} the route; "
                                 f"directory version {directory.version}")
        if routed:
            await self.route_added(node_id, uscc)
        return _claim(row), directory.version

    # -- institutions ---------------------------------------------------------------------------
    async def register_institution(self, caller: Principal, licence: str,
                                   trace_id: str) -> tuple[directory_pb2.InstitutionEntry, int]:
        """`licence` is read from the caller's certificate, like the caller itself."""
        known = next((e for e in self.directory.current.institutions.get(caller.id, ())
                      if e.role == str(caller.role) and e.licence == licence), None)
        if known is not None:  # the common case: a client opening again; nothing to write
            return known, self.directory.current.version
        try:
            decision = self.authorizer.decide(caller, Action.REGISTER_INSTITUTION, Resource.network(), licence=licence)
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
            row = InstitutionRow(str(caller.role), caller.id, licence, self.clock())
            await asyncio.to_thread(self.store.put_institution, row)
            await self.directory.refresh()
        except Refusal as r:
            await self._audit(caller, "register_institution", r, trace_id)
            raise
        directory = self.directory.current
        entry = next(e for e in directory.institutions[caller.id] if e.role == str(caller.role))
        await self._audit(caller, "register_institution", None, trace_id, allowed="registered",
                          detail=f"licence {licence or 'none'}; directory version {directory.version}")
        return entry, directory.version

    # -- helpers --------------------------------------------------------------------------------
    def _require(self, caller: Principal, action: Action) -> None:
        decision = self.authorizer.decide(caller, action, Resource.network())
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)

    def _require_operator(self, caller: Principal, action: Action = Action.REVIEW_HOLDINGS) -> None:
        self._require(caller, action)
        if caller != self.identity.principal:
            raise Refusal.denied("NOT_THIS_PLATFORMS_OPERATOR", f"{caller} is not this registry's operator")

    async def _audit(self, caller: Principal, action: str, refusal: Refusal | None, trace_id: str,
                     allowed: str = "", **fields) -> None:
        await self.audit_log.append(AuditEntry.of(self.clock(), caller, action, refusal, allowed=allowed,
                                                  trace_id=trace_id, **fields))


def _check_node_id(node_id: str) -> None:
    try:
        check_principal_id(Role.NODE, node_id)
    except IdentityError:
        raise Refusal.invalid("node_id", "must be a node's 6-digit GB/T 2260 area code, e.g. 510100") from None


def _claim(row: ClaimRow) -> registry_pb2.HoldingClaim:
    return registry_pb2.HoldingClaim(node_id=row.node_id, uscc=row.uscc, state=_STATES[row.state],
                                     claimed_at_ms=row.claimed_at_ms, decided_at_ms=row.decided_at_ms)
