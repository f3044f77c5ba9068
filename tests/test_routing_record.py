"""The registry records a routing before any node sees the query (`forward_query`), and its
outcome after (`route_query`); a routing it cannot record is forwarded to no node. Real servers
on loopback; the failing disk under the registry's audit log is the only thing faked."""

from __future__ import annotations

import errno

import pytest
from harness import BANK, CHENGDU_FIRM, Network

from registry.routing import FORWARD_QUERY
from xinyi.client import ClientError
from xinyi.cli.audit import reconcile
from xinyi.crypto.identity import Role
from xinyi.v1 import audit_pb2


async def _records(network: Network, target: str, expect) -> list[audit_pb2.AuditRecord]:
    return await network.auditor(target, expect).records()


async def test_the_routing_is_recorded_before_the_fan_out_and_its_outcome_after(network: Network):
    consent = await network.grant()
    result = await network.bank().query(CHENGDU_FIRM, ["registration"], "credit_assessment", consent)
    log = [r for r in await _records(network, network.registry_addr, Role.REGISTRY)
           if r.request_hash == result.request_hash]
    assert [(r.action, r.decision) for r in log] == [(FORWARD_QUERY, audit_pb2.DECISION_ALLOW),
                                                     ("route_query", audit_pb2.DECISION_ALLOW)]
    forward, outcome = log
    # Who, under which consent, which request, which nodes: before any node answered.
    assert (forward.caller_role, forward.caller_id, forward.consent_id, forward.uscc) == ("bank", BANK, consent,
                                                                                         CHENGDU_FIRM)
    assert forward.detail.split() == ["510100", "510000"] and forward.trace_id == outcome.trace_id
    assert outcome.detail == "510100=ok 510000=no_data"
    # The nodes' entries were written between the two.
    node_log = await _records(network, network.node_addr("510100"), Role.NODE)
    (answer,) = [r for r in node_log if r.action == "query" and r.request_hash == result.request_hash]
    assert forward.at_ms <= answer.at_ms <= outcome.at_ms
    # The use is counted once, with the outcome.
    status = await network.enterprise().status(consent)
    assert status.uses == 1
    report = await reconcile(network.identity(Role.AUDITOR, "audit-office"), network.registry_addr)
    assert report["missing_on_nodes"] == report["missing_on_registry"] == report["routings_without_outcome"] == []
    assert report["routings_checked"] == 2


async def test_a_routing_the_registry_cannot_record_reaches_no_node(network: Network, monkeypatch):
    consent = await network.grant()
    store = network.registry.store
    before = {n: len(await _records(network, network.node_addr(n), Role.NODE)) for n in ("510100", "510000")}

    def disk_full(rows, extras=()):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "append_audit_batch", disk_full)
    with pytest.raises(ClientError) as refused:
        await network.bank().query(CHENGDU_FIRM, ["registration"], "credit_assessment", consent)
    assert refused.value.failure.code == "UNAVAILABLE", refused.value.failure
    assert "No space" not in str(refused.value) and "OSError" not in str(refused.value)
    monkeypatch.undo()
    # Before this fix the fan-out came first: the nodes had answered before the bank heard the failure.
    for node, size in before.items():
        log = await _records(network, network.node_addr(node), Role.NODE)
        # Only this read of the log and the previous one were added: no query reached the node.
        assert [r.action for r in log[size:] if r.action != "read_audit"] == [], log[size:]
    # The disk has room again: the same bank is routed as ever.
    result = await network.bank().query(CHENGDU_FIRM, ["registration"], "credit_assessment", consent)
    assert result.answered
