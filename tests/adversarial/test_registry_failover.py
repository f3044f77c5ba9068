"""Clients fail over between the registry's replicas (issue 13, item 4).

Two registry replicas serving one registry store (on SQLite, the second a cold standby); the bank, the enterprise and both nodes know
both addresses (repeated --registry) and use the first. Under a steady query stream the first
replica is killed (kill -9): the bank's later queries are answered through the second, the
nodes move their registry calls to it, and the invariants of every fault hold (every log
verifies, nothing answered is missing, no use without an answer).

A query whose answer was lost is sent again with the same signed envelope (never signed again:
under a once-consent that would be a second use). The second replica knows its nonce from the
shared store and refuses it as QUERY_ALREADY_RECEIVED, saying when it arrived - not as a replay,
and without answering it twice.
"""

from __future__ import annotations

import time

import pytest
from harness import CHENGDU_FIRM
from invariants import Ledger, QueryStream, check_after_fault, verify_logs
from procnet import CATEGORIES, PURPOSE, started

from xinyi.client import QueryAlreadyReceived
from xinyi.clock import now_ms
from xinyi.crypto.envelope import body_hash
from xinyi.query import build_query
from xinyi.v1 import audit_pb2

pytestmark = [pytest.mark.adversarial, pytest.mark.slow, pytest.mark.timeout(180)]


async def test_clients_fail_over_to_another_replica(databases, tmp_path) -> None:
    # Replicas serve together on PostgreSQL; on SQLite (one process owns the file) the second is a
    # cold standby, started on the same file once the first is dead.
    hot = databases.backend == "postgresql"
    net = await started(tmp_path, databases, replicas=2, start_replicas=2 if hot else 1)
    first, second = net.registry_addrs
    ledger = Ledger()
    bank = net.bank()
    async with net.watched():
        many = await net.grant(deliver_to=net.node_ids)
        once = await net.grant(once=True, deliver_to=net.node_ids)
        envelope, key = build_query(net.bank_identity, uscc=CHENGDU_FIRM, categories=CATEGORIES, purpose=PURPOSE,
                                    consent_id=once, now_ms=now_ms())
        answered = await bank.route(envelope, key, CHENGDU_FIRM)
        assert all(v.verified for v in answered.nodes), answered
        async with QueryStream(bank, ledger, many) as stream:
            await stream.until("both nodes answer", lambda lg: all(len(lg.answered[n]) >= 5 for n in net.node_ids), 20)
            net.kill("registry")
            if not hot:
                net.registries[1].start()
            down = time.monotonic()
            took = await stream.until("queries are answered through the second replica",
                                      lambda lg: all(lg.count(n, "ok", down) >= 5 for n in net.node_ids), 40)
            print(f"\n[failover] answered through the second replica {took:.2f} s after the first was killed; "
                  f"{dict(ledger.statuses)}")
        assert bank.target == second and bank.failover.failovers >= 1, (bank.target, bank.failover.failovers)
        for node in net.nodes.values():  # registration, consent sync and directory polls moved too
            await node.wait_for_log(f"now using {second} ({first} was unreachable)", timeout=20)

        # The once-consent's query, sent again exactly as it was: told it was received, not answered again.
        with pytest.raises(QueryAlreadyReceived) as again:
            await bank.route(envelope, key, CHENGDU_FIRM)
        refusal = again.value
        assert refusal.failure.reason == "QUERY_ALREADY_RECEIVED" and refusal.failure.code == "ALREADY_EXISTS", refusal
        assert refusal.request_hash == body_hash(envelope.body).hex() == answered.request_hash
        assert abs(refusal.received_at_ms - now_ms()) < 300_000, refusal.received_at_ms
        assert "already received at" in refusal.failure.message and "sign a new query" in refusal.failure.message

        # A new query under the used once-consent is refused by the nodes for that reason.
        spent = await bank.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, once)
        assert not spent.answered and all(v.status == "denied" for v in spent.nodes), spent
        logs = await verify_logs(net)
        for node in net.node_ids:
            allowed = [r for r in logs[node] if r.request_hash == answered.request_hash
                       and r.action == "query" and r.decision == audit_pb2.DECISION_ALLOW]
            assert len(allowed) == 1, f"node {node} answered the once-consent's query {len(allowed)} times"
        await check_after_fault(net, ledger)

