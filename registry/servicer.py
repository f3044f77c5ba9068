"""The registry's gRPC face: thin methods over the routing, directory and consent handlers."""

from __future__ import annotations

from xinyi.errors import Refusal
from xinyi.identity import Role
from xinyi.policy import Action, Authorizer, Resource
from xinyi.rpc.auth import caller
from xinyi.rpc.status import to_status
from xinyi.telemetry import current_trace_id
from xinyi.v1 import consent_pb2, consent_pb2_grpc, registry_pb2, registry_pb2_grpc

from registry.consents import ConsentDesk
from registry.directory import NetworkDirectory
from registry.routing import Router


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, directory: NetworkDirectory, router: Router, consents: ConsentDesk, authorizer: Authorizer) -> None:
        self.directory = directory
        self.router = router
        self.consents = consents
        self.authorizer = authorizer

    def _require(self, action: Action) -> None:
        decision = self.authorizer.decide(caller(), action, Resource.network())
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)

    async def RegisterNode(self, request, context):
        try:
            self._require(Action.REGISTER_NODE)
            directory = await self.directory.register(caller(), request.endpoint, request.signing_cert, list(request.held_usccs))
            consents = await self.consents.consents_for_node(caller().id)
        except Refusal as r:
            await context.abort_with_status(to_status(r))
        return registry_pb2.RegisterNodeResponse(directory=directory.envelope, consents=consents)

    async def GetDirectory(self, request, context):
        try:
            self._require(Action.READ_DIRECTORY)
        except Refusal as r:
            await context.abort_with_status(to_status(r))
        return registry_pb2.GetDirectoryResponse(directory=self.directory.current.envelope)

    async def RouteQuery(self, request, context):
        try:
            return await self.router.route(
                request.query, caller=caller(), trace_id=current_trace_id(), per_node_timeout_ms=request.per_node_timeout_ms
            )
        except Refusal as r:
            await context.abort_with_status(to_status(r))


class ConsentServicer(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(self, desk: ConsentDesk) -> None:
        self.desk = desk

    async def GrantConsent(self, request, context):
        try:
            record = await self.desk.grant(caller(), request.consent, current_trace_id())
        except Refusal as r:
            await context.abort_with_status(to_status(r))
        return consent_pb2.GrantConsentResponse(consent=record)

    async def RevokeConsent(self, request, context):
        try:
            record = await self.desk.revoke(caller(), request.revocation, current_trace_id())
        except Refusal as r:
            await context.abort_with_status(to_status(r))
        return consent_pb2.RevokeConsentResponse(consent=record)

    async def GetConsentStatus(self, request, context):
        try:
            record = await self.desk.status(caller(), request.consent_id)
        except Refusal as r:
            await context.abort_with_status(to_status(r))
        return consent_pb2.GetConsentStatusResponse(consent=record)

    async def ListConsents(self, request, context):
        try:
            records = await self.desk.list_own(caller())
        except Refusal as r:
            await context.abort_with_status(to_status(r))
        return consent_pb2.ListConsentsResponse(consents=records)
