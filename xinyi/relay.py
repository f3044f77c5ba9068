"""Who may hand over a statement someone else signed.

At the registry the sender of a signed request must be its signer. At a node, the sender is
either the signer (a direct call) or the registry relaying it: a relay is allowed by policy,
and the node still verifies the signer's signature itself.
"""

from __future__ import annotations

from xinyi.crypto.identity import Principal
from xinyi.errors import Refusal
from xinyi.policy import Action, Authorizer, Resource


def require_signer(caller: Principal, signer: Principal, field: str) -> None:
    """The registry's rule: send only what you signed yourself."""
    if caller != signer:
        raise Refusal.unauthenticated(f"{field}.signer_cert", f"signed by {signer} but sent by {caller}; send your own",
                                      "SIGNER_IS_NOT_CALLER")


def relayed_by(authorizer: Authorizer, caller: Principal, signer: Principal, field: str) -> str:
    """A node's rule: the signer itself, or a relay the policy allows (returned, "" if direct)."""
    if caller == signer:
        return ""
    decision = authorizer.decide(caller, Action.RELAY_QUERY, Resource.network())
    if not decision.allowed:
        raise Refusal.unauthenticated(f"{field}.signer_cert", f"signed by {signer} but sent by {caller}; only the "
                                      "registry relays", "RELAY_NOT_ALLOWED", policy_ids=decision.policy_ids)
    return caller.id
