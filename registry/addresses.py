"""Where each node says it is, and when that changed: the registry's record of nodes' addresses
(kept in the store, table node_addresses, so that every replica sees every registration), for
the operator (`xinyi registry nodes`) and for the node itself (its registration reply).

A node moving is normal and is recorded (audit log: "endpoint changed from A to B"). A node
whose address changes again within CONFLICT_WINDOW_MS of the last change is not moving: two
processes hold its certificate and re-register alternately (every 30 s each), each overwriting
the other. That is a conflict: reported to both in their replies, logged, audited, listed, until
the address has been stable for a whole window.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from xinyi.clock import MINUTE_MS

CONFLICT_WINDOW_MS = 5 * MINUTE_MS  # ten re-registrations at the default 30 s
MAX_CONFLICT_ENDPOINTS = 4  # the addresses a conflict names, the latest ones


@dataclass(frozen=True)
class NodeAddress:
    endpoint: str
    registered_at_ms: int = 0       # the last registration accepted
    previous_endpoint: str = ""
    changed_at_ms: int = 0          # when the endpoint last changed (0: never)
    conflict_endpoints: tuple[str, ...] = ()
    conflict_at_ms: int = 0         # the last change that was part of a conflict

    def conflict(self, now_ms: int) -> str:
        """A sentence for the operator while the conflict lasts, "" otherwise."""
        if not self.conflict_endpoints or now_ms - self.conflict_at_ms > CONFLICT_WINDOW_MS:
            return ""
        at = dt.datetime.fromtimestamp(self.conflict_at_ms / 1000, dt.timezone.utc)
        return (f"the endpoint flipped between {', '.join(self.conflict_endpoints)} within "
                f"{CONFLICT_WINDOW_MS // MINUTE_MS} minutes (last at {at:%Y-%m-%d %H:%M:%S} UTC): two processes hold "
                "this node's certificate and register alternately; stop the one that should not run, then renew "
                "and revoke the node's certificate if it leaked")


@dataclass(frozen=True)
class AddressChange:
    address: NodeAddress
    changed: bool       # this registration moved the node
    conflict: str       # "" or the conflict this node is in


def observe_address(state: NodeAddress | None, known_endpoint: str, endpoint: str, now_ms: int) -> AddressChange:
    """A registration at `endpoint` was accepted; `state` is what was recorded of the node
    before (None: nothing), `known_endpoint` where the directory had it ("" for a new node)."""
    state = state or NodeAddress(known_endpoint or endpoint)
    changed = bool(known_endpoint) and endpoint != known_endpoint
    if changed:
        flipping = state.changed_at_ms and now_ms - state.changed_at_ms <= CONFLICT_WINDOW_MS
        if flipping:
            recent = state.conflict_endpoints if state.conflict(now_ms) else ()
            named = tuple(dict.fromkeys((*recent, known_endpoint, endpoint)))[-MAX_CONFLICT_ENDPOINTS:]
            state = replace(state, conflict_endpoints=named, conflict_at_ms=now_ms)
        state = replace(state, previous_endpoint=known_endpoint, changed_at_ms=now_ms)
    state = replace(state, endpoint=endpoint, registered_at_ms=now_ms)
    return AddressChange(state, changed, state.conflict(now_ms))
