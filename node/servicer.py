"""The node's gRPC face: thin methods that hand over to the handlers and map refusals."""

from __future__ import annotations

from node.access import AccessDesk
from node.consents import ConsentInbox
from node.disputes import DisputeDesk
from node.evaluation import EvaluationDesk
from node.query import QueryHandler
from node.report import ReportDesk
from xinyi.privacy.consent import STATUS_TO_PROTO
from xinyi.rpc.auth import caller
from xinyi.rpc.report import report_to_proto
from xinyi.rpc.status import refusals_as_status
from xinyi.telemetry import current_trace_id
from xinyi.v1 import access_pb2, dispute_pb2, node_pb2, node_pb2_grpc, query_pb2, scoring_pb2, scoring_pb2_grpc


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, queries: QueryHandler, consents: ConsentInbox, accesses: AccessDesk, disputes: DisputeDesk,
                 reports: ReportDesk | None = None) -> None:
        self.queries = queries
        self.consents = consents
        self.accesses = accesses
        self.disputes = disputes
        self.reports = reports

    @refusals_as_status
    async def Query(self, request, context):
        answer = await self.queries.answer(request.query, caller=caller(), trace_id=current_trace_id())
        return query_pb2.NodeResult(node_id=self.queries.node_id, outcome=answer.outcome, sealed_answer=answer.sealed)

    @refusals_as_status
    async def DeliverConsent(self, request, context):
        consent_id, status = await self.consents.deliver(caller(), request.consent, trace_id=current_trace_id())
        return node_pb2.DeliverConsentResponse(consent_id=consent_id, status=STATUS_TO_PROTO[status])

    @refusals_as_status
    async def ListAccesses(self, request, context):
        accesses = await self.accesses.accesses(caller(), request, current_trace_id())
        return access_pb2.NodeAccessesResponse(accesses=accesses)

    @refusals_as_status
    async def FileDispute(self, request, context):
        dispute = await self.disputes.file(caller(), request.dispute, current_trace_id())
        return dispute_pb2.NodeFileDisputeResponse(dispute=dispute)

    @refusals_as_status
    async def ListDisputes(self, request, context):
        disputes = await self.disputes.list(caller(), open_only=request.open_only, overdue_only=request.overdue_only,
                                            trace_id=current_trace_id())
        return dispute_pb2.ListDisputesResponse(disputes=disputes)

    @refusals_as_status
    async def ResolveDispute(self, request, context):
        dispute = await self.disputes.resolve(caller(), request, current_trace_id())
        return dispute_pb2.ResolveDisputeResponse(dispute=dispute)

    @refusals_as_status
    async def ListMyDisputes(self, request, context):
        answer = await self.disputes.of_enterprise(caller(), request, current_trace_id())
        return dispute_pb2.NodeListMyDisputesResponse(answer=answer)
    async def GetNodeReport(self, request, context):
        report = await self.reports.report(caller(), days=request.days, loads=request.loads,
                                           rejects_per_load=request.rejects_per_load, trace_id=current_trace_id())
        return node_pb2.GetNodeReportResponse(report=report_to_proto(report))


class NodeEvaluationServicer(scoring_pb2_grpc.NodeEvaluationServiceServicer):
    def __init__(self, desk: EvaluationDesk) -> None:
        self.desk = desk

    @refusals_as_status
    async def ComputeFeatures(self, request, context):
        sealed = await self.desk.compute_features(caller(), request.evaluation, request.evaluator, current_trace_id())
        return scoring_pb2.ComputeFeaturesResponse(sealed_bundle=sealed)

    @refusals_as_status
    async def Evaluate(self, request, context):
        sealed = await self.desk.evaluate(caller(), request.evaluation, list(request.sealed_bundles), current_trace_id())
        return scoring_pb2.NodeEvaluateResponse(sealed_result=sealed)
