"""A node that comes back is reached at once, however long it was away.

gRPC backs off between attempts to reach a server that is down, by default up to 120 s. The
registry's channels to a node that was down for half a minute were still backing off when the
node was listening and registered again, so banks were told the node was unavailable. Now the
backoff is bounded (xinyi.rpc.channels) and a node's registration replaces the registry's
channels to it that are not connected (registry.server.NodeChannels.renew).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from harness import BANK, CHENGDU_FIRM, LOAD_TEST_CONSENT, load_test_policies
from processes import NODE, Proc, free_port, network_identities, seed_node, wait_registered

from xinyi.client import BankClient, ClientError, EnterpriseClient
from xinyi.crypto.identity import Principal, Role
from xinyi.rpc.channels import secure_channel

# Real processes started and stopped again and again: run by `make test-slow` and CI, not `make test`.
pytestmark = pytest.mark.slow

CATEGORIES = ["registration", "tax"]
PURPOSE = "credit_assessment"
DOWN_SECONDS = 25.0  # long enough for gRPC's default backoff to pass 10 s between attempts


async def node_status(bank: BankClient, consent_id: str) -> str:
    result = await asyncio.wait_for(bank.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent_id), 15)
    (view,) = [v for v in result.nodes if v.node == NODE]
    return view.status


@pytest.mark.timeout(150)
async def test_the_first_query_after_a_node_registers_again_reaches_it(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    ids, dirs = network_identities(tmp_path / "certs")
    node_db, registry_db = f"sqlite:///{tmp_path}/node.db", f"sqlite:///{tmp_path}/registry.db"
    seed_node(node_db)
    registry, node_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    policies = str(load_test_policies(tmp_path))
    reg = Proc("registry", ["registry", "serve", "--identity", str(dirs["registry"]), "--listen", registry,
                            "--db", registry_db, "--policies", policies], logs)
    node = Proc("node", ["node", "serve", "--identity", str(dirs["node"]), "--listen", node_addr, "--registry", registry,
                         "--db", node_db, "--policies", policies], logs)
    procs = [reg, node]
    try:
        reg.start()
        node.start()
        await wait_registered(ids["bank"], ids["auditor"], registry, node_addr, procs, timeout=60)
        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            consent = await enterprise.grant(BANK, PURPOSE, CATEGORIES, 30, **LOAD_TEST_CONSENT)
        async with BankClient(ids["bank"], registry) as bank:
            assert await node_status(bank, consent.consent_id) == "ok"

            # Down for a while, with banks asking all along: the registry keeps trying to reach it.
            node.kill()
            down_since = time.monotonic()
            while time.monotonic() - down_since < DOWN_SECONDS:
                try:
                    assert await node_status(bank, consent.consent_id) in ("unavailable", "timeout")
                except ClientError:
                    pass
                await asyncio.sleep(0.5)

            # Back: once it has registered again, the next query reaches it.
            node.start()
            await node.wait_for_log("registered with", timeout=60)
            status = await node_status(bank, consent.consent_id)
            assert status == "ok", (f"the first query after node {NODE} registered again was {status!r}: the registry "
                                    f"did not reach the node that was listening and registered")
    except BaseException:
        for p in procs:
            print(p.dump_logs())
        raise
    finally:
        for p in procs:
            p.kill()


async def test_a_peer_that_is_down_is_tried_again_every_few_seconds(tmp_path: Path) -> None:
    """Connection attempts against a port that accepts and hangs up at once (no TLS server there):
    with gRPC's default backoff (1 s, x1.6, up to 120 s) there are 5 in 12 s; bounded, about 10."""
    ids, _ = network_identities(tmp_path / "certs")
    attempts: list[float] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(time.monotonic())
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = secure_channel(ids["registry"], f"127.0.0.1:{port}", Principal(Role.NODE, NODE))
    try:
        start = time.monotonic()
        while time.monotonic() - start < 12:
            channel.get_state(try_to_connect=True)  # as a stream of calls would
            await asyncio.sleep(0.05)
    finally:
        await channel.close()
        server.close()
    gaps = [round(b - a, 2) for a, b in zip(attempts, attempts[1:])]
    assert len(attempts) >= 8, f"{len(attempts)} attempts in 12 s, {gaps} s apart: the backoff is not bounded"


async def until_ready(channel: grpc.aio.Channel) -> None:
    while (state := channel.get_state(try_to_connect=True)) is not grpc.ChannelConnectivity.READY:
        await channel.wait_for_state_change(state)


async def test_a_registration_replaces_the_registrys_channels_that_are_not_connected(network) -> None:
    """What registry.server.NodeChannels.renew does when a node registers: a channel stuck in its
    reconnect backoff is replaced; a connected one is kept (a node re-registers every 30 s)."""
    registry = network.registry
    node = network.nodes["510100"]
    entry = registry.directory.current.nodes["510100"]
    bank = network.bank()
    consent_id = await network.grant()
    await bank.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent_id)
    connected = list(registry.channels._channels["510100"][1])
    for channel in connected:
        await asyncio.wait_for(until_ready(channel), 10)
    await node.register_once()
    assert registry.channels._channels["510100"][1] == connected, "a connected channel was replaced"

    # A channel to where nobody listens, in backoff: the node's registration replaces it.
    dead = free_port()
    registry.channels._channels["510100"] = (f"127.0.0.1:{dead}", [secure_channel(
        registry.identity, f"127.0.0.1:{dead}", Principal(Role.NODE, "510100"), own_connection=True)])
    stuck = registry.channels._channels["510100"][1][0]
    stuck.get_state(try_to_connect=True)
    await asyncio.wait_for(stuck.wait_for_state_change(grpc.ChannelConnectivity.IDLE), 5)
    registry.channels._channels["510100"] = (entry.endpoint, [stuck])
    await node.register_once()
    assert registry.channels._channels["510100"][1][0] is not stuck
    assert await bank.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent_id)
