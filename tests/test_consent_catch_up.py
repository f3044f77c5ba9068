"""A restarted node that must pull several pages of consent changes answers nothing until the
last one (issue 11, item 1: "confirmed" means caught up with the registry's present, not "a
page arrived").

tests/test_consent_sync.py and tests/adversarial/test_revoked_while_down.py restart a node as a
process, but what it missed fits in one of the registry's pages (2000 consents), so a node that
confirmed its consents after its first page passed them too. Here the registry's pages are made
small and the node is asked, straight, under a consent still in force while it is between pages.
"""

from __future__ import annotations

import asyncio

import grpc
from harness import BANK, CHENGDU_FIRM, Network

from node.server import NodeConfig, NodeServer
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.query import build_query
from xinyi.rpc.channels import secure_channel
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import node_pb2_grpc, query_pb2

NODE = "510100"
CATEGORIES = ["registration"]
PURPOSE = "credit_assessment"


async def ask(channel: grpc.aio.Channel, bank, consent_id: str) -> str:
    """One signed query straight to the node: "answered" or the refusal's reason."""
    envelope, _ = build_query(bank, uscc=CHENGDU_FIRM, categories=CATEGORIES, purpose=PURPOSE, consent_id=consent_id,
                              now_ms=now_ms())
    try:
        await node_pb2_grpc.NodeServiceStub(channel).Query(query_pb2.QueryRequest(query=envelope), timeout=5)
        return "answered"
    except grpc.aio.AioRpcError as e:
        return RpcFailure.from_error(e).reason or e.code().name


async def test_a_restarted_node_answers_nothing_between_pages_of_its_catch_up(network: Network, monkeypatch) -> None:
    net = network
    bank = net.identity(Role.BANK, BANK)
    in_force = await net.grant()  # delivered while the node is up; never changed afterwards
    old = net.nodes[NODE]
    db = old.config.db
    await old.stop(0)

    # While the node is down: four grants and a revocation it misses, five consents changed.
    enterprise = net.enterprise()
    for _ in range(4):
        await net.grant()
    revoked = await net.grant()
    await enterprise.revoke(revoked)

    # Pages of two consents: the node needs three pages to reach the registry's present.
    monkeypatch.setattr("registry.consents.SYNC_PAGE_CONSENTS", 2)
    desk = net.registry.consents
    pull = desk.changes_since
    pages: list[tuple[int, int, int, int]] = []  # (after, last, head, the node's confirmation time when asked)
    between: list[str] = []
    node: NodeServer | None = None
    channel: grpc.aio.Channel | None = None

    async def observed(node_id: str, after: int):
        records, last, head = await pull(node_id, after)
        if node_id == NODE and node is not None:
            pages.append((after, last, head, node.inbox.synced_at_ms))
            if len(pages) == 2 and last < head and channel is not None:
                # The node has applied one page and not yet the one with the revocation.
                between.append(await ask(channel, bank, in_force))
                between.append(await ask(channel, bank, revoked))
        return records, last, head

    monkeypatch.setattr(desk, "changes_since", observed)
    node = NodeServer(NodeConfig(net.identity(Role.NODE, NODE), "127.0.0.1:0", db, registry=net.registry_addr))
    net.nodes[NODE] = node  # stopped with the network
    await node.start()
    channel = secure_channel(bank, f"127.0.0.1:{node.port}", Principal(Role.NODE, NODE), own_connection=True)
    try:
        await asyncio.wait_for(node.registered.wait(), 20)
        catch_up = [p for p in pages if p[0] < p[2]]
        assert len(catch_up) >= 3 and catch_up[-1][1] >= catch_up[-1][2], pages  # pages before the last one
        assert all(confirmed == 0 for *_, confirmed in catch_up), (
            f"the node confirmed its consents before it reached the registry's head: {pages}")
        assert between == ["CONSENT_STATUS_UNCONFIRMED", "CONSENT_STATUS_UNCONFIRMED"], between
        assert node.inbox.synced_at_ms > 0
        # Caught up: the consent in force is answered, the revoked one refused as revoked.
        assert await ask(channel, bank, revoked) == "CONSENT_REVOKED"
        assert await ask(channel, bank, in_force) == "answered"
    finally:
        await channel.close()
