"""The signed directory of nodes and routing by area code.

The registry signs a DirectoryBody (like X-Road's global configuration). Banks and nodes
verify it against the national root, cache it, and use it to check which key each node signs
with. Routing reads the same directory and nothing else: an enterprise's route is the nodes of
its area plus the out-of-area holdings the platform operator approved, all of it signed, so
that anyone holding the directory can check every route. It also lists the institutions that
consents may name.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Iterable

from xinyi.crypto.envelope import verify
from xinyi.crypto.identity import Role
from xinyi.crypto.pki import TrustAnchor
from xinyi.errors import Refusal
from xinyi.records import uscc as uscc_codes
from xinyi.v1 import directory_pb2, envelope_pb2

log = logging.getLogger("xinyi.directory")


# A statement signed just before its signer's key was replaced may reach its reader after the
# directory lists the new key: the old key is accepted this long past the moment it was replaced.
ROTATION_GRACE_MS = 2 * 60_000


def listed_key(current: bytes, previous: Iterable[directory_pb2.KeyPeriod], signer_cert: bytes, signed_at_ms: int) -> bool:
    """Whether `signer_cert` is the key the directory lists (`current`), or one it lists as
    replaced whose time in use covers `signed_at_ms` (within ROTATION_GRACE_MS)."""
    if signer_cert == current:
        return True
    return any(p.signing_cert == signer_cert
               and p.valid_from_ms - ROTATION_GRACE_MS <= signed_at_ms <= p.valid_until_ms + ROTATION_GRACE_MS
               for p in previous)


@dataclass(frozen=True)
class Directory:
    """A verified directory: node id -> entry, approved holdings, known institutions."""

    version: int
    issued_at_ms: int
    registry_id: str
    nodes: dict[str, directory_pb2.NodeEntry]
    models: tuple = ()  # approved scoring models (scoring_pb2.ModelApproval)
    holdings: dict[str, frozenset[str]] = field(default_factory=dict)  # uscc -> node ids (approved, out of area)
    institutions: dict[str, tuple[directory_pb2.InstitutionEntry, ...]] = field(default_factory=dict)  # USCC -> entries
    envelope: envelope_pb2.SignedEnvelope = field(repr=False, compare=False, default_factory=envelope_pb2.SignedEnvelope)
    registry_keys: tuple = ()  # the registry's replaced signing keys (directory_pb2.KeyPeriod), oldest first
    # The anchor it was verified with, which learned its revocation lists, and the time it was
    # checked as of (None: now): what decides whether a key it lists still counts (a checkpoint's).
    trust: TrustAnchor | None = field(default=None, repr=False, compare=False)
    as_of: dt.datetime | None = field(default=None, repr=False, compare=False)

    @classmethod
    def verify(cls, envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor, *, at: dt.datetime | None = None) -> "Directory":
        """`at`: check the registry's certificate as of then (an archived directory, as of its issue)."""
        v = verify(envelope, directory_pb2.DirectoryBody, trust, roles={Role.REGISTRY}, field="directory", at=at)
        body = v.message
        if v.signer.id != body.registry_id:
            raise Refusal.unauthenticated("directory.registry_id", f"names {body.registry_id} but was signed by {v.signer}")
        # Whoever verifies a directory learns its issuing CAs and revocation lists, each checked
        # against the root here: nodes, clients and auditors enforce what the CAs published.
        for problem in trust.learn(body.authorities, body.revocation_lists):
            log.warning("the directory's revocation lists: %s; left out", problem)
        holdings: dict[str, set[str]] = {}
        for h in body.holdings:
            holdings.setdefault(h.uscc, set()).add(h.node_id)
        institutions: dict[str, list] = {}
        for i in body.institutions:
            institutions.setdefault(i.id, []).append(i)
        return cls(body.version, body.issued_at_ms, body.registry_id, {n.node_id: n for n in body.nodes},
                   tuple(body.models), {u: frozenset(n) for u, n in holdings.items()},
                   {u: tuple(e) for u, e in institutions.items()}, envelope, tuple(body.registry_keys), trust, at)

    def node_keys(self, node_id: str) -> list[bytes]:
        """Every signing certificate the node has used, current first (a checkpoint's key id
        picks the one that signed it)."""
        entry = self.nodes.get(node_id)
        if entry is None:
            return []
        return [entry.signing_cert, *(p.signing_cert for p in reversed(entry.previous_keys))]

    def registry_certs(self) -> list[bytes]:
        """The registry's signing certificates, current (the directory's signer) first."""
        return [self.envelope.signer_cert, *(p.signing_cert for p in reversed(self.registry_keys))]

    def route(self, uscc: str) -> list[str]:
        """Node ids to ask about an enterprise: its county, city and province nodes, then the
        nodes whose holding of it the platform operator approved.

        510104... -> 510104 (if it runs a node), 510100 Chengdu, 510000 Sichuan.
        """
        area = uscc_codes.area_code(uscc)
        by_area = [n for n in uscc_codes.route_area_codes(area) if n in self.nodes]
        extra = sorted(n for n in self.holdings.get(uscc, ()) if n in self.nodes and n not in by_area)
        return by_area + extra

    def is_institution(self, uscc: str) -> bool:
        """Whether a consent may name `uscc`: a bank, guarantor or government department that
        registered with the network."""
        return uscc in self.institutions
