"""kill -9 of the registry while a query is in flight: one node has answered (its log holds the
relayed query), the other is stalled (SIGSTOP), so the registry is waiting for it and has not
written the outcome. The registry recorded the routing (`forward_query`) before it forwarded the
query, so after the crash the node's answer is in the registry's log: `reconcile` passes and lists
the routing as one without an outcome; the query's nonce was taken with that record, so the
restarted registry refuses the same query again as QUERY_ALREADY_RECEIVED.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import pytest
from harness import BANK, CHENGDU_FIRM
from invariants import Ledger, check_after_fault, verify_logs
from procnet import CATEGORIES, PURPOSE, started
from test_cli import xinyi

from registry.routing import FORWARD_QUERY
from xinyi.cli.audit import fetch_log, reconcile
from xinyi.client import AuditClient
from xinyi.clock import now_ms
from xinyi.crypto.envelope import body_hash
from xinyi.crypto.identity import Principal, Role
from xinyi.query import build_query
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import audit_pb2, registry_pb2

pytestmark = [pytest.mark.adversarial, pytest.mark.slow, pytest.mark.timeout(120)]

ANSWERING, STALLED = "510100", "510000"  # both route the Chengdu firm
# The registry waits this long for the stalled node: far longer than the test needs.
PER_NODE_TIMEOUT_MS = 30000


async def _node_answered(net, node: str, request_hash: str, timeout: float = 20.0) -> audit_pb2.AuditRecord:
    """Until the node's own log holds its allowed answer to this request (read straight from the node)."""
    deadline = time.monotonic() + timeout
    async with AuditClient(net.auditor, net.node_addrs[node], Principal(Role.NODE, node)) as client:
        while True:
            _, _, entries = await asyncio.wait_for(fetch_log(client), 10)
            for _, leaf in entries:
                r = audit_pb2.AuditRecord.FromString(leaf)
                if r.action == "query" and r.request_hash == request_hash and r.decision == audit_pb2.DECISION_ALLOW:
                    return r
            assert time.monotonic() < deadline, f"node {node} did not answer request {request_hash[:16]}…"
            await asyncio.sleep(0.1)


async def test_kill9_registry_after_a_node_answered_before_the_outcome(databases, tmp_path) -> None:
    net = await started(tmp_path, databases)
    ledger = Ledger()
    bank = net.bank()
    async with net.watched():
        consent = await net.grant(deliver_to=net.node_ids)
        await verify_logs(net)  # the restarted registry's log must extend what was signed here
        envelope, _ = build_query(bank.identity, uscc=CHENGDU_FIRM, categories=list(CATEGORIES), purpose=PURPOSE,
                                  consent_id=consent, now_ms=now_ms())
        request_hash = body_hash(envelope.body).hex()
        stalled = net.nodes[STALLED].proc
        os.kill(stalled.pid, signal.SIGSTOP)
        try:
            call = asyncio.ensure_future(bank.registry.RouteQuery(
                registry_pb2.RouteQueryRequest(query=envelope, per_node_timeout_ms=PER_NODE_TIMEOUT_MS), timeout=60))
            answer = await _node_answered(net, ANSWERING, request_hash)
            assert answer.relayed_by == "national"
            assert not call.done(), "the registry answered the bank while a node was stalled"
            net.kill("registry")  # the node's answer is in hand, the outcome not yet written
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await call
        ledger.record_failure(request_hash, consent, RpcFailure.from_error(lost.value), "RouteQuery")

        net.start_again("registry")
        for node in net.node_ids:
            await net.wait_registered(node)
        logs = await verify_logs(net)
        # The routing, as the registry recorded it before it forwarded the query.
        recorded = [r for r in logs["registry"] if r.request_hash == request_hash]
        assert len(recorded) == 1, f"the registry's log holds {len(recorded)} records of a query node {ANSWERING} answered"
        forward = recorded[0]
        assert (forward.action, forward.decision) == (FORWARD_QUERY, audit_pb2.DECISION_ALLOW), forward
        assert (forward.caller_id, forward.consent_id, forward.uscc) == (BANK, consent, CHENGDU_FIRM)
        assert set(forward.detail.split()) == set(net.node_ids)

        report = await reconcile(net.auditor, net.registry_addr)
        assert report["missing_on_registry"] == [] and report["missing_on_nodes"] == [], report
        assert [(m["request_hash"], set(m["nodes"])) for m in report["routings_without_outcome"]] == [
            (request_hash, set(net.node_ids))]
        # The command says so, and passes: nothing is missing.
        code, out, err = await xinyi("audit", "reconcile", "--identity", net.auditor.save(net.certs),
                                     "--registry", net.registry_addr)
        assert code == 0, err
        assert f"request {request_hash[:16]}… was forwarded to" in out and "has no outcome record" in out, out

        # The nonce was taken with the forwarding record: the same signed query (a client's retry
        # after its answer was lost) is not handled again, and is told when it was received.
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await bank.registry.RouteQuery(registry_pb2.RouteQueryRequest(query=envelope), timeout=20)
        failure = RpcFailure.from_error(again.value)
        assert failure.reason == "QUERY_ALREADY_RECEIVED" and dict(failure.metadata)["request_hash"] == request_hash, failure
        # Forwarded, with no outcome on record: the bank is not told an answer went back.
        assert "forwarded to the nodes" in failure.message and "no outcome on record" in failure.message, failure
        assert "went back" not in failure.message, failure

        await check_after_fault(net, ledger)
