"""The registry's gRPC face: thin methods over the routing, directory and consent handlers."""

from __future__ import annotations

from xinyi.errors import Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.rpc.auth import caller, peer_licence
from xinyi.rpc.status import refusals_as_status
from xinyi.telemetry import current_trace_id
from xinyi.v1 import (
    access_pb2,
    access_pb2_grpc,
    consent_pb2,
    consent_pb2_grpc,
    dispute_pb2,
    dispute_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)

from registry.access import AccessRelay
from registry.consents import ConsentDesk
from registry.disputes import DisputeRelay
from registry.models import ModelDesk
from registry.directory import NetworkDirectory
from registry.membership import Membership
from registry.revocations import RevocationDesk
from registry.routing import Router
from registry.witness import Witness


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, directory: NetworkDirectory, router: Router, consents: ConsentDesk, authorizer: Authorizer,
                 membership: Membership, revocations: RevocationDesk | None = None) -> None:
        self.revocations = revocations
        self.directory = directory
        self.router = router
        self.consents = consents
        self.authorizer = authorizer
        self.membership = membership

    def _require(self, action: Action) -> None:
        decision = self.authorizer.decide(caller(), action, Resource.network())
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)

    @refusals_as_status
    async def RegisterNode(self, request, context):
        directory, change = await self.membership.register_node(caller(), request, current_trace_id())
        address = change.address
        return registry_pb2.RegisterNodeResponse(directory=directory.envelope, previous_endpoint=address.previous_endpoint,
                                                 endpoint_changed_at_ms=address.changed_at_ms, conflict=change.conflict)

    @refusals_as_status
    async def RegisterInstitution(self, request, context):
        entry, version = await self.membership.register_institution(caller(), peer_licence(context), current_trace_id())
        return registry_pb2.RegisterInstitutionResponse(institution=entry, directory_version=version)

    @refusals_as_status
    async def ListHoldingClaims(self, request, context):
        claims = await self.membership.list_claims(caller(), request.node_id, request.state)
        return registry_pb2.ListHoldingClaimsResponse(claims=claims)

    @refusals_as_status
    async def ReviewHoldingClaim(self, request, context):
        claim, version = await self.membership.review_claim(caller(), request.node_id, request.uscc, request.approve,
                                                            current_trace_id())
        return registry_pb2.ReviewHoldingClaimResponse(claim=claim, directory_version=version)

    @refusals_as_status
    async def ListNodes(self, request, context):
        return registry_pb2.ListNodesResponse(nodes=await self.membership.list_nodes(caller()))

    @refusals_as_status
    async def SyncConsents(self, request, context):
        self._require(Action.REGISTER_NODE)  # nodes only
        records, last, head = await self.consents.changes_since(caller().id, request.after)
        return registry_pb2.SyncConsentsResponse(consents=records, last=last, head=head)

    @refusals_as_status
    async def GetDirectory(self, request, context):
        self._require(Action.READ_DIRECTORY)
        current = self.directory.current
        if request.if_newer_than and current.version <= request.if_newer_than:
            return registry_pb2.GetDirectoryResponse()  # the poll of nodes: nothing new, nothing sent
        return registry_pb2.GetDirectoryResponse(directory=current.envelope)

    @refusals_as_status
    async def PublishRevocations(self, request, context):
        return await self.revocations.publish(caller(), request, current_trace_id())

    @refusals_as_status
    async def RouteQuery(self, request, context):
        return await self.router.route(
            request.query, caller=caller(), trace_id=current_trace_id(), per_node_timeout_ms=request.per_node_timeout_ms
        )


class ConsentServicer(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(self, desk: ConsentDesk) -> None:
        self.desk = desk

    @refusals_as_status
    async def GrantConsent(self, request, context):
        record = await self.desk.grant(caller(), request.consent, current_trace_id())
        return consent_pb2.GrantConsentResponse(consent=record)

    @refusals_as_status
    async def ChangeConsent(self, request, context):
        record = await self.desk.change(caller(), request.change, current_trace_id())
        return consent_pb2.ChangeConsentResponse(consent=record)

    @refusals_as_status
    async def Delegate(self, request, context):
        return await self.desk.delegate(caller(), request.delegation, current_trace_id())

    @refusals_as_status
    async def GetConsentStatus(self, request, context):
        record = await self.desk.status(caller(), request.consent_id)
        return consent_pb2.GetConsentStatusResponse(consent=record)

    @refusals_as_status
    async def ListConsents(self, request, context):
        records = await self.desk.list_own(caller())
        return consent_pb2.ListConsentsResponse(consents=records)


class WitnessServicer(registry_pb2_grpc.WitnessServiceServicer):
    def __init__(self, witness: Witness) -> None:
        self.witness = witness

    @refusals_as_status
    async def AddCheckpoint(self, request, context):
        line = await self.witness.add_checkpoint(caller(), request.checkpoint, request.old_size, list(request.consistency))
        return registry_pb2.AddCheckpointResponse(cosignature=line)


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, relay: AccessRelay) -> None:
        self.relay = relay

    @refusals_as_status
    async def ListAccesses(self, request, context):
        nodes = await self.relay.list(caller(), request, current_trace_id())
        return access_pb2.ListAccessesResponse(nodes=nodes)


class DisputeServicer(dispute_pb2_grpc.DisputeServiceServicer):
    def __init__(self, relay: DisputeRelay) -> None:
        self.relay = relay

    @refusals_as_status
    async def FileDispute(self, request, context):
        dispute = await self.relay.file(caller(), request.dispute, current_trace_id())
        return dispute_pb2.FileDisputeResponse(dispute=dispute)

    @refusals_as_status
    async def ListMyDisputes(self, request, context):
        nodes = await self.relay.of_enterprise(caller(), request, current_trace_id())
        return dispute_pb2.ListMyDisputesResponse(nodes=nodes)


class ModelServicer(scoring_pb2_grpc.ModelServiceServicer):
    def __init__(self, desk: ModelDesk) -> None:
        self.desk = desk

    @refusals_as_status
    async def SubmitModel(self, request, context):
        return await self.desk.submit(caller(), request.model, request.onnx, current_trace_id())

    @refusals_as_status
    async def ApproveModel(self, request, context):
        approval, version = await self.desk.approve(caller(), request.sha256, current_trace_id())
        return scoring_pb2.ApproveModelResponse(approval=approval, directory_version=version)

    @refusals_as_status
    async def ListModels(self, request, context):
        return scoring_pb2.ListModelsResponse(models=await self.desk.list())

    @refusals_as_status
    async def GetModel(self, request, context):
        return scoring_pb2.GetModelResponse(onnx=await self.desk.onnx(caller(), request.sha256))

    @refusals_as_status
    async def Evaluate(self, request, context):
        return await self.desk.evaluate(caller(), request.evaluation, current_trace_id())
