"""The registry's gRPC face for alerts: AlertService for banks, and the link that relays to each
node's NodeAlertService over the registry's mutual-TLS channel to it."""

from __future__ import annotations

from typing import Callable

import grpc

from xinyi.rpc.auth import caller
from xinyi.rpc.status import RpcFailure, refusals_as_status
from xinyi.telemetry import current_trace_id
from xinyi.v1 import alerts_pb2, alerts_pb2_grpc, directory_pb2, envelope_pb2

from registry.alerts import AlertRelay

ChannelFor = Callable[[directory_pb2.NodeEntry], grpc.aio.Channel]


class AlertServicer(alerts_pb2_grpc.AlertServiceServicer):
    def __init__(self, relay: AlertRelay) -> None:
        self.relay = relay

    @refusals_as_status
    async def Subscribe(self, request, context):
        nodes = await self.relay.subscribe(caller(), request.subscribe, current_trace_id())
        return alerts_pb2.SubscribeResponse(nodes=nodes)

    @refusals_as_status
    async def Poll(self, request, context):
        nodes = await self.relay.poll(caller(), request.poll, current_trace_id())
        return alerts_pb2.PollResponse(nodes=nodes)


class NodeAlertChannels:
    """registry.alerts.NodeAlertLink over gRPC: each node under its own deadline; a failure is
    that node's outcome (code, message, reason), never the whole call's."""

    def __init__(self, channel_for: ChannelFor, timeout_s: float = 10.0) -> None:
        self.channel_for = channel_for
        self.timeout_s = timeout_s

    def _stub(self, node: directory_pb2.NodeEntry) -> alerts_pb2_grpc.NodeAlertServiceStub:
        return alerts_pb2_grpc.NodeAlertServiceStub(self.channel_for(node))

    async def subscribe(self, node: directory_pb2.NodeEntry,
                        envelope: envelope_pb2.SignedEnvelope) -> alerts_pb2.AlertSubscription:
        try:
            response = await self._stub(node).Subscribe(alerts_pb2.NodeSubscribeRequest(subscribe=envelope),
                                                        timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            f = RpcFailure.from_error(e)
            return alerts_pb2.AlertSubscription(node_id=node.node_id, error=f"{f.code}: {f.message}", error_code=f.code,
                                                error_reason=f.reason)
        return response.subscription

    async def poll(self, node: directory_pb2.NodeEntry, envelope: envelope_pb2.SignedEnvelope) -> alerts_pb2.NodeAlerts:
        try:
            response = await self._stub(node).Poll(alerts_pb2.NodePollRequest(poll=envelope), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            f = RpcFailure.from_error(e)
            return alerts_pb2.NodeAlerts(node_id=node.node_id, error=f"{f.code}: {f.message}", error_code=f.code,
                                         error_reason=f.reason)
        return response.alerts
