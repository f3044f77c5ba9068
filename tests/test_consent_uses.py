"""A consent's use counts only when an answer was sealed and audited, and the enterprise sees,
per node, what was delivered and what was answered. Real registry and nodes on loopback, on
SQLite and PostgreSQL; the full disk is the one thing simulated.

- a query whose one-time answer key cannot be sealed to is refused and leaves the once
  consent usable;
- a node whose audit write fails (ENOSPC) answers nothing and leaves the once consent usable;
- with one node down, a once consent is spent at the node that answered only: the status says
  so per node, and the node that comes back still answers under it;
- the registry remembers which nodes have a consent (push acknowledged, or pulled by the
  node's sync), so its status says so later too.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading

from harness import BANK, CHENGDU_FIRM, Network

from node.server import NodeConfig, NodeServer
from xinyi.clock import now_ms
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Role
from xinyi.v1 import consent_pb2, consent_pb2_grpc, query_pb2, registry_pb2, registry_pb2_grpc

ASK = (CHENGDU_FIRM, ["registration", "tax"], "credit_assessment")
CHENGDU, SICHUAN = "510100", "510000"  # the firm's route: its city and its province


def outcomes(result) -> dict[str, str]:
    return {n.node: n.status for n in result.nodes}


def reasons(result) -> dict[str, str | None]:
    return {n.node: n.reason for n in result.nodes}


def per_node(record: consent_pb2.ConsentRecord) -> dict[str, consent_pb2.ConsentNodeStatus]:
    return {n.node_id: n for n in record.nodes}


async def restart(network: Network, node_id: str, **config) -> NodeServer:
    """The node again, on its own database, at a new port (it registers the new endpoint)."""
    old = network.nodes[node_id]
    node = NodeServer(NodeConfig(network.identity(Role.NODE, node_id), "127.0.0.1:0", old.config.db,
                                 registry=network.registry_addr, **config))
    await node.start()
    await asyncio.wait_for(node.registered.wait(), 10)
    network.nodes[node_id] = node
    return node


async def test_a_query_whose_answer_key_cannot_be_sealed_to_leaves_a_once_consent_usable(network: Network):
    consent = await network.grant(categories=("registration", "tax"))
    bank = network.bank()
    # A signed query whose one-time key is the X25519 point of order 1: nothing can be sealed to it.
    body = query_pb2.QueryBody(uscc=CHENGDU_FIRM, categories=["registration", "tax"], purpose="credit_assessment",
                               consent_id=consent, nonce=os.urandom(16), issued_at_ms=now_ms(), answer_key=bytes(32))
    stub = registry_pb2_grpc.RegistryServiceStub(bank.channel)
    response = await stub.RouteQuery(registry_pb2.RouteQueryRequest(query=sign(network.identity(Role.BANK, BANK), body)),
                                     timeout=30)
    for result in response.results:
        assert result.outcome == query_pb2.NODE_OUTCOME_DENIED, result
        assert result.error_code == "INVALID_ARGUMENT" and "query.answer_key" in result.error_message, result
        assert not result.sealed_answer

    # Nothing was answered, so nothing was spent: the next good query is answered by both nodes.
    status = await network.enterprise().status(consent)
    assert status.status == consent_pb2.CONSENT_STATUS_ACTIVE and status.uses == 0
    assert {n: s.answers for n, s in per_node(status).items()} == {CHENGDU: 0, SICHUAN: 0}
    result = await bank.query(*ASK, consent)
    assert outcomes(result) == {CHENGDU: "ok", SICHUAN: "ok"}
    assert set(reasons(await bank.query(*ASK, consent)).values()) == {"CONSENT_SPENT"}
    status = await network.enterprise().status(consent)
    assert status.status == consent_pb2.CONSENT_STATUS_SPENT and status.uses == 1


async def test_a_failing_audit_write_leaves_a_once_consent_usable(network: Network, monkeypatch):
    consent = await network.grant(categories=("registration", "tax"))
    store = network.nodes[CHENGDU].store
    real = store.append_audit_batch
    failed = []

    def full_disk_once(rows, extras=()):  # the disk is full for the commit of the answer (simulated)
        if not failed and any(table == "consent_uses" for table, _ in extras):
            failed.append(len(rows))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(rows, extras)

    monkeypatch.setattr(store, "append_audit_batch", full_disk_once)
    bank = network.bank()
    first = await bank.query(*ASK, consent)
    assert failed, "the answer's audit commit was never attempted"
    assert outcomes(first)[SICHUAN] == "ok"
    assert outcomes(first)[CHENGDU] != "ok" and not first.nodes[0].records  # unaudited: nothing left the node

    # The disk has room again: Chengdu answers under the same consent; Sichuan, which answered, refuses.
    second = await bank.query(*ASK, consent)
    assert outcomes(second)[CHENGDU] == "ok", reasons(second)
    assert reasons(second)[SICHUAN] == "CONSENT_SPENT"
    nodes = per_node(await network.enterprise().status(consent))
    assert (nodes[CHENGDU].answers, nodes[SICHUAN].answers) == (1, 1)
    uses = await asyncio.to_thread(store.use_stats, consent)
    assert uses[0] == 1  # one use at Chengdu: the answered one


async def test_a_query_cancelled_by_the_node_stopping_is_audited_before_its_log_closes(network: Network, monkeypatch):
    """grpc.aio's stop returns as it cancels the calls still running: the node waits for them to
    write their audit entries before it closes the log, and the consent keeps its use."""
    consent = await network.grant(categories=("registration", "tax"))
    node = network.nodes[CHENGDU]
    fetch, started, go_on = node.store.fetch_records, threading.Event(), threading.Event()

    def slow_disk(*args, **kwargs):  # outside the product: a disk that stalls mid-query
        started.set()
        go_on.wait(10)
        return fetch(*args, **kwargs)

    monkeypatch.setattr(node.store, "fetch_records", slow_disk)
    size = await asyncio.to_thread(node.store.audit_log_size)
    asked = asyncio.create_task(network.bank().query(*ASK, consent))
    try:
        assert await asyncio.to_thread(started.wait, 10)
        await node.stop(0.2)
    finally:
        go_on.set()
    result = await asked
    assert outcomes(result)[CHENGDU] == "unavailable"
    node = await restart(network, CHENGDU)
    entries = [e.record() for e in await asyncio.to_thread(node.store.audit_entries, size, node.store.audit_log_size())]
    cancelled = [e for e in entries if e.action == "query"]
    assert len(cancelled) == 1 and cancelled[0].reason.startswith("CANCELLED: "), entries
    assert cancelled[0].consent_id == consent and cancelled[0].caller_id == BANK
    again = await network.bank().query(*ASK, consent)
    assert outcomes(again)[CHENGDU] == "ok", reasons(again)  # the once consent still had its use


async def test_a_once_consent_is_spent_only_at_the_nodes_that_answered(network: Network):
    consent = await network.grant(categories=("registration", "tax"))
    await network.nodes[SICHUAN].stop(0)  # down; the registry still routes to it

    first = await network.bank().query(*ASK, consent)
    assert outcomes(first) == {CHENGDU: "ok", SICHUAN: "unavailable"}

    status = await network.enterprise().status(consent)
    assert status.status == consent_pb2.CONSENT_STATUS_ACTIVE  # not "spent": Sichuan has answered nothing
    nodes = per_node(status)
    assert list(nodes) == [CHENGDU, SICHUAN]
    chengdu, sichuan = nodes[CHENGDU], nodes[SICHUAN]
    assert (chengdu.status, chengdu.answers, chengdu.last_outcome) == (
        consent_pb2.CONSENT_STATUS_SPENT, 1, query_pb2.NODE_OUTCOME_OK)
    assert chengdu.last_answered_ms > 0 and chengdu.last_asked_ms >= chengdu.last_answered_ms
    assert (sichuan.status, sichuan.answers, sichuan.last_answered_ms, sichuan.last_outcome) == (
        consent_pb2.CONSENT_STATUS_ACTIVE, 0, 0, query_pb2.NODE_OUTCOME_UNAVAILABLE)
    assert sichuan.last_asked_ms > 0
    # The grantee sees the same.
    seen = await consent_pb2_grpc.ConsentServiceStub(network.bank().channel).GetConsentStatus(
        consent_pb2.GetConsentStatusRequest(consent_id=consent), timeout=10)
    assert {n: s.answers for n, s in per_node(seen.consent).items()} == {CHENGDU: 1, SICHUAN: 0}

    # Sichuan is back: it answers under the consent, Chengdu refuses it as spent; now it is spent everywhere.
    await restart(network, SICHUAN)
    second = await network.bank().query(*ASK, consent)
    assert outcomes(second)[SICHUAN] == "ok" and reasons(second)[CHENGDU] == "CONSENT_SPENT"
    status = await network.enterprise().status(consent)
    assert status.status == consent_pb2.CONSENT_STATUS_SPENT
    nodes = per_node(status)
    assert (nodes[CHENGDU].answers, nodes[CHENGDU].last_outcome) == (1, query_pb2.NODE_OUTCOME_DENIED)
    assert (nodes[SICHUAN].answers, nodes[SICHUAN].status) == (1, consent_pb2.CONSENT_STATUS_SPENT)


async def test_the_registry_remembers_which_nodes_have_a_consent(network: Network):
    enterprise = network.enterprise()
    granted = await enterprise.grant(BANK, "credit_assessment", ["registration", "tax"], 30)
    assert (list(granted.delivered_to), list(granted.pending)) == ([CHENGDU, SICHUAN], [])
    status = await enterprise.status(granted.consent_id)
    assert (list(status.delivered_to), list(status.pending)) == ([CHENGDU, SICHUAN], [])  # not forgotten
    assert all(n.delivered for n in status.nodes)
    listed = {c.consent_id: c for c in await enterprise.list()}[granted.consent_id]
    assert list(listed.delivered_to) == [CHENGDU, SICHUAN]

    # Sichuan is down when the consent is paused: Chengdu has the new state, Sichuan does not.
    await network.nodes[SICHUAN].stop(0)
    paused = await enterprise.change(granted.consent_id, "pause")
    assert (list(paused.delivered_to), list(paused.pending)) == ([CHENGDU], [SICHUAN])
    status = await enterprise.status(granted.consent_id)
    assert (list(status.delivered_to), list(status.pending)) == ([CHENGDU], [SICHUAN])
    assert not per_node(status)[SICHUAN].delivered

    # Back, it pulls the change; once its next pull says it applied it, the registry counts it delivered.
    node = await restart(network, SICHUAN, sync_seconds=0.1)
    for _ in range(100):
        status = await enterprise.status(granted.consent_id)
        if not status.pending:
            break
        await asyncio.sleep(0.1)
    assert (list(status.delivered_to), list(status.pending)) == ([CHENGDU, SICHUAN], [])
    assert (await asyncio.to_thread(node.store.get_consent, granted.consent_id)).state == "paused"
