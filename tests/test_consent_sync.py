"""A node learns every consent change before it answers under any consent.

The registry pushes each change to the nodes at once; a node that was down misses the push and
must pull. The node keeps how far it has read the registry's changes in its own store, resumes
there after a restart, pulls page after page until it reaches the registry's present, and only
then confirms its consents. Until then it answers nothing.

The attack (real processes, `python -m xinyi.cli`): a registry with a long consent history, a
node with many consents, the node SIGKILLed, consents revoked while it is down, the node started
again and asked under the revoked consents from the moment it listens. Not one of those queries
may be answered; and the node must be answering a consent still in force within seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from harness import BANK, CHENGDU_FIRM, LOAD_TEST_CONSENT, load_test_policies
from processes import NODE, Proc, free_port, network_identities, seed_node, wait_registered
from sqlalchemy import insert

from registry.store import RegistryStore
from xinyi.client import EnterpriseClient
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity
from xinyi.query import build_query
from xinyi.rpc.channels import secure_channel
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import node_pb2_grpc, query_pb2

# Real processes started and stopped again and again: run by `make test-slow` and CI, not `make test`.
pytestmark = pytest.mark.slow

CATEGORIES = ["registration", "tax"]
PURPOSE = "credit_assessment"
HISTORY_EVENTS = 20_000   # the registry has served the network for a while: old grants and changes
CONSENTS = 30
REVOKED = 20              # revoked while the node is down
CAUGHT_UP_WITHIN = 20.0   # seconds after the restart; generous: the point is seconds, not minutes
WATCH_AFTER = 2.0         # keep asking under the revoked consents this long once the node answers


def seed_history(registry_db: str) -> None:
    """A registry database holding a long consent history from before this test's consents."""
    store = RegistryStore(registry_db)
    try:
        store.create_schema()
        with store.engine.begin() as conn:
            conn.execute(insert(store.consent_events),
                         [{"consent_id": f"{i % 2000:032x}"} for i in range(HISTORY_EVENTS)])
    finally:
        store.close()


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def running(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


async def ask(channel: grpc.aio.Channel, bank: Identity, consent_id: str) -> str:
    """One signed query straight to the node: "answered", the refusal's reason, or UNAVAILABLE."""
    envelope, _ = build_query(bank, uscc=CHENGDU_FIRM, categories=CATEGORIES, purpose=PURPOSE, consent_id=consent_id,
                              now_ms=now_ms())
    try:
        await node_pb2_grpc.NodeServiceStub(channel).Query(query_pb2.QueryRequest(query=envelope), timeout=5)
        return "answered"
    except grpc.aio.AioRpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return "UNAVAILABLE"
        return RpcFailure.from_error(e).reason or e.code().name


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "workers"])
async def test_a_restarted_node_answers_nothing_under_consents_revoked_while_it_was_down(
        databases, tmp_path: Path, workers: int) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    ids, dirs = network_identities(tmp_path / "certs")
    bank = ids["bank"]
    node_db, registry_db = databases.new(f"node{NODE}"), databases.new("registry")
    seed_node(node_db)
    seed_history(registry_db)

    registry, node_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    policies = str(load_test_policies(tmp_path))  # periodic consents: each may be asked many times
    reg = Proc("registry", ["registry", "serve", "--identity", str(dirs["registry"]), "--listen", registry,
                            "--db", registry_db, "--policies", policies], logs)
    node = Proc("node", ["node", "serve", "--identity", str(dirs["node"]), "--listen", node_addr, "--registry", registry,
                         "--db", node_db, "--policies", policies, *(["--workers", str(workers)] if workers else [])], logs)
    procs = [reg, node]
    try:
        reg.start()
        node.start()
        await wait_registered(bank, ids["auditor"], registry, node_addr, procs, timeout=60)

        # 1. Many consents, each with a history of its own (paused and resumed); all delivered.
        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            granted = [await enterprise.grant(BANK, PURPOSE, CATEGORIES, 30, **LOAD_TEST_CONSENT)
                       for _ in range(CONSENTS)]
            for consent in granted[::3]:
                await enterprise.change(consent.consent_id, "pause")
                await asyncio.sleep(0.005)  # changes apply in signed-time order: one per millisecond at most
                await enterprise.change(consent.consent_id, "resume")
        assert all(NODE in c.delivered_to for c in granted), [list(c.delivered_to) for c in granted]
        ids_ = [c.consent_id for c in granted]
        revoked, valid = ids_[:REVOKED], ids_[REVOKED:]
        channel = secure_channel(bank, node_addr, Principal(Role.NODE, NODE))
        try:
            assert {await ask(channel, bank, c) for c in ids_} == {"answered"}
        finally:
            await channel.close()

        # 2. kill -9; with --workers the workers stop once their sequencer is gone.
        kids = children_of(node.proc.pid)
        node.kill()
        deadline = time.monotonic() + 20
        while any(running(pid) for pid in kids) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not any(running(pid) for pid in kids), "the node's workers outlived it"

        # 3. Revoked while the node is down: the registry cannot push the revocations to it.
        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            for consent_id in revoked:
                record = await enterprise.revoke(consent_id)
                assert NODE not in record.delivered_to

        # 4. Started again; asked under every revoked consent from the moment it listens.
        outcomes: Counter[str] = Counter()
        answered_revoked: list[tuple[float, str]] = []
        caught_up_at: float | None = None
        started = time.monotonic()
        node.start()

        async def asker(lane: int) -> None:
            nonlocal caught_up_at
            channel: grpc.aio.Channel | None = None
            turn = lane
            try:
                while True:
                    elapsed = time.monotonic() - started
                    if caught_up_at is not None and elapsed > caught_up_at + WATCH_AFTER:
                        return
                    if elapsed > CAUGHT_UP_WITHIN + WATCH_AFTER:
                        return
                    node.check_alive()
                    if channel is None:  # a fresh channel until the node listens: no reconnect backoff
                        channel = secure_channel(bank, node_addr, Principal(Role.NODE, NODE), own_connection=True)
                    consent_id = revoked[turn % len(revoked)]
                    outcome = await ask(channel, bank, consent_id)
                    if outcome == "answered":
                        answered_revoked.append((time.monotonic() - started, consent_id))
                    outcomes[outcome] += 1
                    if outcome == "UNAVAILABLE":
                        await channel.close()
                        channel = None
                        await asyncio.sleep(0.02)
                        continue
                    turn += 1
                    if turn % 4 == 0 and await ask(channel, bank, valid[turn % len(valid)]) == "answered":
                        if caught_up_at is None:
                            caught_up_at = time.monotonic() - started
            finally:
                if channel is not None:
                    await channel.close()

        await asyncio.gather(*(asker(lane) for lane in range(4)))
        print(f"\n[{databases.backend}, workers={workers}] after the restart: {dict(outcomes)}; "
              f"a valid consent answered {caught_up_at if caught_up_at is None else round(caught_up_at, 2)} s after start")
        assert not answered_revoked, (
            f"{len(answered_revoked)} queries under consents revoked while the node was down were answered after its "
            f"restart, the first {answered_revoked[0][0]:.2f} s after it started: {answered_revoked[:5]}")
        assert caught_up_at is not None, (
            f"the restarted node answered no query under a consent in force within {CAUGHT_UP_WITHIN:.0f} s: {outcomes}")
        # It refused them because it knew they were revoked, not only because it was not yet sure.
        assert outcomes["CONSENT_REVOKED"] > 0, outcomes
        assert set(outcomes) <= {"UNAVAILABLE", "CONSENT_STATUS_UNCONFIRMED", "CONSENT_REVOKED"}, outcomes
    except BaseException:
        for p in procs:
            print(p.dump_logs())
        raise
    finally:
        for p in procs:
            p.kill()


# -- the pages themselves (in-process network) ------------------------------------------------
async def test_sync_pages_give_each_consent_once_in_its_present_state_up_to_the_head(network, monkeypatch) -> None:
    enterprise = network.enterprise()
    consent_ids = [await network.grant() for _ in range(7)]
    for consent_id in consent_ids[:3]:
        await enterprise.change(consent_id, "pause")
    await enterprise.revoke(consent_ids[0])
    desk = network.registry.consents

    # Pages of 2 consents: every consent arrives, once, as it is now; the last page reaches the head.
    monkeypatch.setattr("registry.consents.SYNC_PAGE_CONSENTS", 2)
    seen, after, pages = {}, 0, 0
    while True:
        records, last, head = await desk.changes_since("510100", after)
        pages += 1
        assert last > after or last >= head
        for record in records:
            assert record.consent_id not in seen, "a consent was sent twice while catching up"
            seen[record.consent_id] = record
        after = last
        if last >= head:
            break
    assert set(seen) == set(consent_ids)
    assert pages == 4  # 7 consents, 2 a page: the history of 11 events is not replayed event by event
    states = {c: network.registry.store.get_consent(c).state for c in consent_ids}
    assert {c: len(seen[c].changes) for c in consent_ids} == {c: (2 if c == consent_ids[0] else 1 if c in consent_ids[:3]
                                                                   else 0) for c in consent_ids}
    assert states[consent_ids[0]] == "revoked" and states[consent_ids[1]] == "paused"

    # Bounded by bytes too: a page that would pass the budget stops before the consent that passes it.
    monkeypatch.setattr("registry.consents.SYNC_PAGE_CONSENTS", 2000)
    monkeypatch.setattr("registry.consents.SYNC_PAGE_BYTES", 1)
    records, last, head = await desk.changes_since("510100", 0)
    assert len(records) == 1 and last < head
    # A node the consents are not routed to gets none of them, and is caught up all the same.
    records, last, head = await desk.changes_since("310000", 0)
    assert records == [] and last >= head


async def test_a_node_keeps_its_place_and_reads_a_new_registry_history_from_the_start(network, monkeypatch) -> None:
    consent_ids = [await network.grant() for _ in range(5)]
    node = network.nodes["510100"]
    monkeypatch.setattr("registry.consents.SYNC_PAGE_CONSENTS", 2)
    await node.sync_consents()
    head = network.registry.store.consents_changed_after(0, 1)[0]
    assert node.store.consent_sync_position() == head > 0  # kept in the node's store for its next start

    # A position past the registry's whole history (the registry's database was replaced): the node
    # reads the history again from the start rather than confirm consents it never read.
    await asyncio.to_thread(node.store.set_consent_sync_position, head + 1000)
    node._consent_cursor = head + 1000
    node.inbox.synced_at_ms = 0
    received = await node.sync_consents()
    assert received == len(consent_ids)
    assert node.store.consent_sync_position() == head and node.inbox.synced_at_ms > 0
