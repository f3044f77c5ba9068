"""The registry's part in access transparency: check the enterprise's signed request, ask the
nodes that route for it, concurrently, for one page each, and pass the proven pages back
unchanged.

The first call asks every node on the route; later calls name the nodes that have more, each
with the cursor its last page gave. The whole answer stays under gRPC's message limit: each
node is given its share of the budget, and a page over its share is reported, not passed on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

from registry.directory import NetworkDirectory
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.crypto.identity import Principal
from xinyi.errors import Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.privacy.access import (
    MAX_NODE_ID_CHARS,
    MAX_PAGES_PER_CALL,
    AccessCursor,
    check_access_request,
    check_page_size,
)
from xinyi.relay import require_signer
from xinyi.v1 import access_pb2, directory_pb2

AskAccesses = Callable[[directory_pb2.NodeEntry, access_pb2.NodeAccessesRequest], Awaitable[access_pb2.NodeAccesses]]

RESPONSE_BUDGET = 3 * 1024 * 1024  # every node's page together, under gRPC's 4 MiB
PAGE_SLACK = 8 * 1024              # a node's checkpoint note and framing beyond the entries


@dataclass
class AccessRelay:
    directory: NetworkDirectory
    authorizer: Authorizer
    ask: AskAccesses
    audit_log: AuditLog
    clock: Clock

    async def list(self, caller: Principal, request: access_pb2.ListAccessesRequest, trace_id: str) -> list[access_pb2.NodeAccesses]:
        uscc = ""
        try:
            checked = check_access_request(request.request, self.directory.trust, self.clock())
            uscc = checked.message.uscc
            require_signer(caller, checked.signer, "request")
            decision = self.authorizer.decide(caller, Action.READ_ACCESSES, Resource.enterprise(uscc))
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)
            check_page_size(request.page_size)
            route = self.directory.route(uscc)
            cursors = self._cursors(request, route)
        except Refusal as r:
            await self.audit_log.append(AuditEntry.of(self.clock(), caller, str(Action.READ_ACCESSES), r, allowed="",
                                                      uscc=uscc, trace_id=trace_id))
            raise
        nodes = self.directory.current.nodes
        share = RESPONSE_BUDGET // max(len(cursors), 1)
        answers = list(await asyncio.gather(*(
            self._ask_one(nodes[n], access_pb2.NodeAccessesRequest(
                request=request.request, cursor=cursor, page_size=request.page_size,
                oldest_first=request.oldest_first, max_bytes=share - PAGE_SLACK, count_total=request.count_total), share)
            for n, cursor in cursors.items())))
        asked = ",".join(f"{n}{' (next page)' if c else ''}" for n, c in cursors.items())
        await self.audit_log.append(AuditEntry.of(self.clock(), caller, str(Action.READ_ACCESSES), None,
                                                  allowed=f"asked {asked or 'no node'}", uscc=uscc, trace_id=trace_id))
        return answers

    @staticmethod
    def _cursors(request: access_pb2.ListAccessesRequest, route: list[str]) -> dict[str, str]:
        """Which nodes to ask, each with its cursor ("" for a first page)."""
        if not request.pages:
            return {n: "" for n in route}
        if len(request.pages) > MAX_PAGES_PER_CALL:
            raise Refusal.invalid("pages", f"names {len(request.pages)} nodes; at most {MAX_PAGES_PER_CALL} a call")
        out: dict[str, str] = {}
        for i, page in enumerate(request.pages):
            field = f"pages[{i}]"
            if len(page.node_id) > MAX_NODE_ID_CHARS or page.node_id not in route:
                raise Refusal.invalid(f"{field}.node_id", "is not a node that routes for this enterprise")
            if page.node_id in out:
                raise Refusal.invalid(f"{field}.node_id", "names a node a second time")
            if not page.cursor:
                raise Refusal.invalid(f"{field}.cursor", "is empty; give the node's next_cursor")
            AccessCursor.parse(page.cursor, oldest_first=request.oldest_first, field=f"{field}.cursor")
            out[page.node_id] = page.cursor
        return out

    async def _ask_one(self, node: directory_pb2.NodeEntry, request: access_pb2.NodeAccessesRequest,
                       share: int) -> access_pb2.NodeAccesses:
        answer = await self.ask(node, request)
        answer.node_id = node.node_id  # the checkpoint's signature is checked by the enterprise against this node
        if answer.ByteSize() > share:
            return access_pb2.NodeAccesses(node_id=node.node_id,
                                           error=f"the node's page of {answer.ByteSize()} bytes is larger than the {share} asked")
        return answer
