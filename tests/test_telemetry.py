"""One OpenTelemetry trace follows a query bank -> registry -> nodes."""

from __future__ import annotations

from harness import CHENGDU_FIRM, Network
from opentelemetry import trace

from xinyi.crypto.identity import Role


async def test_the_banks_trace_reaches_the_registry_and_every_node(network: Network):
    consent = await network.grant()
    with trace.get_tracer("test-bank").start_as_current_span("bank-query") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        result = await network.bank().query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent)
    assert trace_id != "0" * 32
    reg = [r for r in await network.auditor(network.registry_addr, Role.REGISTRY).records() if r.action == "route_query"]
    assert [r.trace_id for r in reg] == [trace_id]
    for node in ("510100", "510000"):
        log = await network.auditor(network.node_addr(node), Role.NODE).records()
        assert [r.trace_id for r in log if r.action == "query"] == [trace_id]
        assert [r.request_hash for r in log if r.action == "query"] == [result.request_hash]
