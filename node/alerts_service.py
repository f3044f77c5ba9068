"""The node's gRPC face for alerts: NodeAlertService, thin methods over node.alerts.AlertDesk."""

from __future__ import annotations

from xinyi.rpc.auth import caller
from xinyi.rpc.status import refusals_as_status
from xinyi.telemetry import current_trace_id
from xinyi.v1 import alerts_pb2, alerts_pb2_grpc

from node.alerts import AlertDesk


class NodeAlertServicer(alerts_pb2_grpc.NodeAlertServiceServicer):
    def __init__(self, desk: AlertDesk) -> None:
        self.desk = desk

    @refusals_as_status
    async def Subscribe(self, request, context):
        subscription = await self.desk.subscribe(caller(), request.subscribe, current_trace_id())
        return alerts_pb2.NodeSubscribeResponse(subscription=subscription)

    @refusals_as_status
    async def Poll(self, request, context):
        alerts = await self.desk.poll(caller(), request.poll, current_trace_id())
        return alerts_pb2.NodePollResponse(alerts=alerts)
