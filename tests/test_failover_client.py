"""Several registry addresses (issue 13, item 4): a client moves from an address that does not
answer to the next, resending the same request, and never resends one that was refused.

The processes' failover (a replica killed under a query stream, the retried query told it was
already received) is tests/adversarial/test_registry_failover.py.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from harness import BANK, CHENGDU_FIRM, SEED, XINJIANG_FIRM
from processes import free_port

from node.server import NodeConfig, NodeServer
from xinyi.client import BankClient, ClientError
from xinyi.clock import now_ms
from xinyi.crypto.identity import Role
from xinyi.rpc.channels import FailoverChannel
from xinyi.v1 import audit_pb2, registry_pb2, registry_pb2_grpc

CATEGORIES = ["registration", "tax"]


def dead_address() -> str:
    """An address where nothing listens (connections are refused)."""
    return f"127.0.0.1:{free_port()}"


def silent_address() -> tuple[socket.socket, str]:
    """An address that accepts TCP connections and never speaks (a hung host): only the connect
    timeout gets a client past it. The socket must be kept open."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_client_passes_over_unreachable_addresses(network) -> None:
    hung, silent = silent_address()
    try:
        consent = await network.grant()
        bank = network._track(BankClient(network.identity(Role.BANK, BANK), [dead_address(), silent,
                                                                            network.registry_addr]))
        bank.failover.connect_timeout = 0.5
        result = await asyncio.wait_for(bank.query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent), 30)
        assert result.answered and all(v.verified for v in result.nodes if v.status == "ok"), result
        assert bank.target == network.registry_addr and bank.failover.failovers == 1
        # Later calls go straight to the address that answered.
        await bank.query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent)
        assert bank.failover.failovers == 1
    finally:
        hung.close()


async def test_a_refusal_is_never_sent_again(network) -> None:
    """A refusal is an answer: the query is not resent to another address, and the registry's
    log holds it once."""
    bank = network._track(BankClient(network.identity(Role.BANK, BANK), [network.registry_addr, dead_address()]))
    with pytest.raises(ClientError) as refused:  # no node serves the firm's area
        await bank.query(XINJIANG_FIRM, CATEGORIES, "credit_assessment", "0" * 32)
    assert refused.value.failure.reason == "NO_NODE_FOR_AREA", refused.value.failure
    assert bank.failover.failovers == 0 and bank.target == network.registry_addr
    entries = await asyncio.to_thread(network.registry.store.find_audit, uscc=XINJIANG_FIRM, limit=1000)
    denied = [r for r in (audit_pb2.AuditRecord.FromString(e.leaf_input) for e in entries) if r.action == "route_query"]
    assert len(denied) == 1, f"the refused query reached the registry {len(denied)} times"


async def test_every_address_unreachable_is_unavailable_after_bounded_tries(network) -> None:
    addresses = [dead_address(), dead_address()]
    channel = FailoverChannel(network.identity(Role.BANK, BANK), addresses, Role.REGISTRY, rounds=3)
    calls = []

    def invoke(ch):
        calls.append(ch)
        return registry_pb2_grpc.RegistryServiceStub(ch).GetDirectory(registry_pb2.GetDirectoryRequest(), timeout=5)

    try:
        with pytest.raises(Exception) as failed:
            await asyncio.wait_for(channel.call(invoke), 30)
        assert failed.value.code().name == "UNAVAILABLE", failed.value
        assert len(calls) == 6, f"{len(calls)} tries: every address once per round, 3 rounds"
    finally:
        await channel.close()


async def test_a_node_registers_through_the_second_address(network, databases) -> None:
    node = NodeServer(NodeConfig(network.identity(Role.NODE, "440300"), "127.0.0.1:0", databases.new("node440300"),
                                 registry=[dead_address(), network.registry_addr]))
    await asyncio.to_thread(node.store.create_schema)
    await asyncio.to_thread(node.store.add_records, SEED["510100"][:1], now_ms())
    await node.start()
    try:
        await asyncio.wait_for(node.registered.wait(), 20)
        assert node._registry().target == network.registry_addr
        bank = network.bank()
        directory = await bank.directory(refresh=True)
        assert "440300" in directory.nodes
        assert await node.sync_consents() >= 0  # consent sync goes through the same address
    finally:
        await node.stop(0)


async def test_one_address_naming_several_servers_is_tried_server_by_server(network) -> None:
    """`--registry ipv4:A:P,B:P` (as a DNS name with several addresses resolves): gRPC's
    resolver gives the channel every address, and a query gets through the one that answers."""
    consent = await network.grant()
    port = network.registry_addr.rsplit(":", 1)[1]
    several = f"ipv4:127.0.0.1:{free_port()},127.0.0.1:{port}"  # the first refuses connections
    bank = network._track(BankClient(network.identity(Role.BANK, BANK), [several]))
    result = await asyncio.wait_for(bank.query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent), 30)
    assert result.answered and all(v.verified for v in result.nodes if v.status == "ok"), result
    assert bank.target == several and bank.failover.failovers == 0
