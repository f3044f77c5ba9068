"""The node's gRPC face for statistics: a thin method over node.stats.StatisticsDesk."""

from __future__ import annotations

from xinyi.rpc.auth import caller
from xinyi.rpc.status import refusals_as_status
from xinyi.telemetry import current_trace_id
from xinyi.v1 import stats_pb2_grpc

from node.stats import StatisticsDesk


class NodeStatisticsServicer(stats_pb2_grpc.NodeStatisticsServiceServicer):
    def __init__(self, desk: StatisticsDesk) -> None:
        self.desk = desk

    @refusals_as_status
    async def Compute(self, request, context):
        return await self.desk.compute(caller(), request.query, current_trace_id())
