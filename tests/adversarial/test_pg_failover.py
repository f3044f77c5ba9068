"""The registry's, then a node's, PostgreSQL primary fails and its standby is promoted (issue 13, item 5).

The test starts its own primary and a synchronous streaming standby (tests/faults.py
`postgres_pair`); the registry is given both in one multi-host URL (`host=A,B&
target_session_attrs=read-write`). Under a steady query stream the primary is stopped as a crash
would (`pg_ctl stop -m immediate`) and the standby promoted (`pg_ctl promote`). Required:

- while no primary is there, the bank's queries are refused with UNAVAILABLE STORE_UNAVAILABLE
  (or, for a query the registry had recorded before the primary went and whose retry reached it
  after, ALREADY_EXISTS QUERY_ALREADY_RECEIVED) - nothing else, and nothing internal in them;
- once the standby is promoted the registry answers again, without a restart;
- every query the bank got an answer to is in the promoted database's registry log (its
  `route_query` allow entry, written before the answer left) and in the answering node's log;
  every log verifies, and the invariants of every fault hold.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from invariants import Ledger, QueryStream, check_after_fault
from procnet import started

from registry.store import RegistryStore
from xinyi.v1 import audit_pb2

pytestmark = [pytest.mark.adversarial, pytest.mark.slow, pytest.mark.timeout(180)]

ALLOWED = {("UNAVAILABLE", "STORE_UNAVAILABLE"), ("ALREADY_EXISTS", "QUERY_ALREADY_RECEIVED")}


def routed_in(url: str) -> set[str]:
    """Request hashes of the routings the registry's database holds as answered (route_query allow)."""
    store = RegistryStore(url)
    try:
        size = store.audit_log_size()
        records = [audit_pb2.AuditRecord.FromString(e.leaf_input) for e in store.audit_entries(0, size)]
    finally:
        store.close()
    return {r.request_hash for r in records if r.action == "route_query" and r.decision == audit_pb2.DECISION_ALLOW}


async def test_registry_keeps_answering_after_its_standby_is_promoted(postgres_pair, tmp_path) -> None:
    pair = postgres_pair
    url = pair.create_database("registry")
    net = await started(tmp_path, db_urls={"registry": url, "510100": f"sqlite:///{tmp_path / 'node510100.db'}",
                                           "510000": f"sqlite:///{tmp_path / 'node510000.db'}"})
    ledger = Ledger()
    bank = net.bank()
    async with net.watched():
        many = await net.grant(deliver_to=net.node_ids)
        async with QueryStream(bank, ledger, many, workers=8) as stream:
            await stream.until("both nodes answer", lambda lg: all(len(lg.answered[n]) >= 10 for n in net.node_ids), 20)
            pair.primary.stop("immediate")
            down = time.monotonic()
            await stream.until("queries are refused while there is no primary",
                               lambda lg: lg.count("call", ("UNAVAILABLE", "ALREADY_EXISTS"), down) >= 3, 30)
            await asyncio.to_thread(pair.standby.promote)
            promoted = time.monotonic()
            took = await stream.until("the registry answers again once the standby is promoted",
                                      lambda lg: all(lg.count(n, "ok", promoted) >= 5 for n in net.node_ids), 30)
            print(f"\n[failover] answering {took:.2f} s after the standby was promoted; {dict(ledger.statuses)}")
        net.registry.check_alive()
        refused = {(code, reason) for at, where, code, reason in ledger.refusals if where == "call" and at >= down}
        assert refused and refused <= ALLOWED, f"during the failover the bank was told {refused}"
        ledger.assert_no_leaks()

        answered = set().union(*ledger.answered.values())
        missing = answered - await asyncio.to_thread(routed_in, pair.url("registry"))
        assert not missing, (f"{len(missing)} of {len(answered)} answered queries are not in the promoted database's "
                             f"registry log: {sorted(missing)[:3]}")
        await check_after_fault(net, ledger)


def answered_in(url: str) -> set[str]:
    """Request hashes of the queries a node's database holds as answered (query allow)."""
    from node.store import NodeStore

    store = NodeStore(url)
    try:
        records = [audit_pb2.AuditRecord.FromString(e.leaf_input) for e in store.audit_entries(0, store.audit_log_size())]
    finally:
        store.close()
    return {r.request_hash for r in records if r.action == "query" and r.decision == audit_pb2.DECISION_ALLOW}


async def test_a_node_keeps_answering_after_its_standby_is_promoted(postgres_pair, tmp_path) -> None:
    """The same for a node: the Chengdu node's store is the pair (one multi-host URL), the registry
    and the Sichuan node on SQLite. While there is no primary the Chengdu node's result is
    UNAVAILABLE STORE_UNAVAILABLE (the call itself, and the Sichuan node, answer); once the
    standby is promoted it answers again without a restart, and every answer it gave is in the
    promoted database's log."""
    pair, node = postgres_pair, "510100"
    url = pair.create_database("node510100")
    net = await started(tmp_path, db_urls={"registry": f"sqlite:///{tmp_path / 'registry.db'}", node: url,
                                           "510000": f"sqlite:///{tmp_path / 'node510000.db'}"})
    ledger = Ledger()
    bank = net.bank()
    async with net.watched():
        many = await net.grant(deliver_to=net.node_ids)
        async with QueryStream(bank, ledger, many, workers=8) as stream:
            await stream.until("both nodes answer", lambda lg: all(len(lg.answered[n]) >= 10 for n in net.node_ids), 20)
            pair.primary.stop("immediate")
            down = time.monotonic()
            await stream.until("the node refuses while there is no primary",
                               lambda lg: lg.count(node, "unavailable", down) >= 3, 30)
            await asyncio.to_thread(pair.standby.promote)
            promoted = time.monotonic()
            took = await stream.until("the node answers again once the standby is promoted",
                                      lambda lg: lg.count(node, "ok", promoted) >= 5, 30)
            print(f"\n[failover] node answering {took:.2f} s after the standby was promoted; {dict(ledger.statuses)}")
        net.nodes[node].check_alive()
        assert not ledger.failed_calls, f"{len(ledger.failed_calls)} calls through the registry failed"
        refused = {(status, reason) for at, where, status, reason in ledger.refusals if where == node and at >= down}
        assert refused == {("unavailable", "STORE_UNAVAILABLE")}, f"during the failover node {node} said {refused}"
        assert {s for at, n, s in ledger.events if n == "510000" and at >= down} == {"ok"}
        ledger.assert_no_leaks()

        missing = ledger.answered[node] - await asyncio.to_thread(answered_in, pair.url("node510100"))
        assert not missing, (f"{len(missing)} of {len(ledger.answered[node])} answers of node {node} are not in the "
                             f"promoted database's log: {sorted(missing)[:3]}")
        await check_after_fault(net, ledger)
