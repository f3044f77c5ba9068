"""The signed directory of nodes and routing by area code.

The registry signs a DirectoryBody (like X-Road's global configuration). Banks and nodes
verify it against the national root, cache it, and use it to check which key each node signs
with. Routing reads the same directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xinyi.crypto.envelope import verify
from xinyi.crypto.identity import Role
from xinyi.crypto.pki import TrustAnchor
from xinyi.errors import Refusal
from xinyi.records import uscc as uscc_codes
from xinyi.v1 import directory_pb2, envelope_pb2


@dataclass(frozen=True)
class Directory:
    """A verified directory: node id -> entry."""

    version: int
    issued_at_ms: int
    registry_id: str
    nodes: dict[str, directory_pb2.NodeEntry]
    models: tuple = ()  # approved scoring models (scoring_pb2.ModelApproval)
    envelope: envelope_pb2.SignedEnvelope = field(repr=False, compare=False, default_factory=envelope_pb2.SignedEnvelope)

    @classmethod
    def verify(cls, envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor) -> "Directory":
        v = verify(envelope, directory_pb2.DirectoryBody, trust, roles={Role.REGISTRY}, field="directory")
        body = v.message
        if v.signer.id != body.registry_id:
            raise Refusal.unauthenticated("directory.registry_id", f"names {body.registry_id} but was signed by {v.signer}")
        return cls(body.version, body.issued_at_ms, body.registry_id, {n.node_id: n for n in body.nodes},
                   tuple(body.models), envelope)

    def route(self, uscc: str, holders: frozenset[str] = frozenset()) -> list[str]:
        """Node ids to ask about an enterprise: its county, city and province nodes, plus holders.

        510104... -> 510104 (if it runs a node), 510100 Chengdu, 510000 Sichuan.
        """
        area = uscc_codes.area_code(uscc)
        by_area = [n for n in uscc_codes.route_area_codes(area) if n in self.nodes]
        extra = sorted(n for n in holders if n in self.nodes and n not in by_area)
        return by_area + extra
