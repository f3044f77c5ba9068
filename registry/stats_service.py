"""The registry's gRPC face for statistics: a thin method over registry.stats.StatisticsRelay,
and the call that relays a signed query to one node."""

from __future__ import annotations

from typing import Callable

import grpc

from xinyi.rpc.auth import caller
from xinyi.rpc.status import RpcFailure, refusal_from_failure, refusals_as_status
from xinyi.telemetry import current_trace_id
from xinyi.v1 import directory_pb2, envelope_pb2, stats_pb2, stats_pb2_grpc

from registry.stats import StatisticsRelay

NODE_TIMEOUT_SECONDS = 10.0


class StatisticsServicer(stats_pb2_grpc.StatisticsServiceServicer):
    def __init__(self, relay: StatisticsRelay) -> None:
        self.relay = relay

    @refusals_as_status
    async def Ask(self, request, context):
        return await self.relay.ask(caller(), request.query, current_trace_id())


async def compute_at_node(
    channel_for: Callable[[directory_pb2.NodeEntry], grpc.aio.Channel],
    node: directory_pb2.NodeEntry,
    envelope: envelope_pb2.SignedEnvelope,
    timeout: float = NODE_TIMEOUT_SECONDS,
) -> stats_pb2.ComputeStatisticsResponse:
    """Relay the signed query unchanged to one node. A node's refusal is raised as a Refusal with
    its code, reason and metadata (e.g. budget_remaining); a node that cannot be reached, times
    out or does not serve statistics yet is raised as Kind.UNAVAILABLE."""
    stub = stats_pb2_grpc.NodeStatisticsServiceStub(channel_for(node))
    try:
        return await stub.Compute(stats_pb2.ComputeStatisticsRequest(query=envelope), timeout=timeout)
    except grpc.aio.AioRpcError as e:
        failure = RpcFailure.from_error(e)
        refusal = refusal_from_failure(failure)  # unknown codes (DEADLINE_EXCEEDED, UNIMPLEMENTED...) -> UNAVAILABLE
        refusal.metadata.update(dict(failure.metadata))
        raise refusal from None
