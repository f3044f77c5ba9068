"""Running the registry: `xinyi registry serve --identity D/registry-ID --listen HOST:PORT --db URL`.

It serves RegistryService, ConsentService and AuditService over mutual TLS, and talks to nodes
through one cached channel per node.

Any number of these processes (replicas) may share one PostgreSQL database. Every fact one of
them decides on is in the database (README, "Running the registry as replicas", lists each and
its table): the directory (its version row, locked by every change and by the signing of a
version; the signed bytes in signed_directory), registrations, addresses, holdings,
institutions, models, revocation lists, consents and changes (a conditional UPDATE), consent
events (numbered under their counter's row lock), deliveries, delegations (an upsert keeping the
newer), consent uses, nonces, the audit log and the witness's state. What stays in memory is a
cache that follows the database (RegistryServer._follow, every FOLLOW_INTERVAL_S): the verified
directory (reloaded when the version row moves) and the consents (dropped when another replica
changed them, unused after CACHE_TRUSTED_S without a successful look), plus the connections to
nodes and the policy files, which are configuration.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from registry.access import AccessRelay
from registry.alerts import AlertRelay
from registry.alerts_service import AlertServicer, NodeAlertChannels
from registry.consents import ConsentDesk
from registry.directory import NetworkDirectory
from registry.disputes import DisputeRelay
from registry.membership import Membership
from registry.models import ModelDesk
from registry.revocations import RevocationDesk
from registry.routing import Router, failed_outcome, failure_message
from registry.servicer import (
    AccessServicer,
    ConsentServicer,
    DisputeServicer,
    ModelServicer,
    RegistryServicer,
    WitnessServicer,
)
from registry.stats import StatisticsRelay
from registry.stats_service import StatisticsServicer, compute_at_node
from registry.store import RegistryStore
from registry.witness import Witness
from xinyi import telemetry
from xinyi.audit.desk import AuditDesk
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock, now_ms
from xinyi.compute.features import Catalogue
from xinyi.compute.stats import StatsConfig
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity
from xinyi.errors import bounded
from xinyi.policy import DEFAULT_POLICY_DIR, Authorizer
from xinyi.privacy.fairuse import FairUse
from xinyi.rpc.audit_service import AuditServicer
from xinyi.rpc.channels import secure_channel
from xinyi.metrics import MetricsError, ServiceMetrics
from xinyi.rpc.server import ServerStartError, start_server
from xinyi.rpc.status import RpcFailure, refusal_from_failure
from xinyi.v1 import (
    access_pb2,
    access_pb2_grpc,
    alerts_pb2,
    alerts_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    consent_pb2,
    consent_pb2_grpc,
    directory_pb2,
    dispute_pb2,
    dispute_pb2_grpc,
    envelope_pb2,
    node_pb2,
    node_pb2_grpc,
    query_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
)

log = logging.getLogger("xinyi.registry")

CONNECTIONS_PER_NODE = 2
# Replicas follow one another through the database (RegistryServer._follow): how often each looks,
# and how long a cached consent is used after the last look that succeeded.
FOLLOW_INTERVAL_S = 0.2
FOLLOW_PAGE = 1000
CACHE_TRUSTED_S = 1.0
RENEW_GRACE_SECONDS = 5.0  # calls still on a replaced channel may finish within this


@dataclass
class RegistryConfig:
    identity: Identity
    listen: str
    db: str
    policy_dir: Path = DEFAULT_POLICY_DIR
    clock: Clock = field(default=now_ms)
    identity_dir: Path | None = None  # --identity: read again on SIGHUP (a renewed bundle)
    metrics_listen: str | None = None  # --metrics-listen HOST:PORT: Prometheus metrics at /metrics (xinyi.metrics)


class NodeChannels:
    """A few mutual-TLS connections per node, used in turn, replaced when the node's endpoint
    changes. Several, because a node run with --workers N serves each connection from one
    worker process: one connection would keep all the registry's traffic on one worker."""

    def __init__(self, identity: Identity, per_node: int = CONNECTIONS_PER_NODE) -> None:
        self.identity = identity
        self.per_node = per_node
        self._channels: dict[str, tuple[str, list[grpc.aio.Channel]]] = {}
        self._generation = identity.generation  # of the identity the channels were made with
        self._turn = itertools.count()

    def channel(self, node: directory_pb2.NodeEntry) -> grpc.aio.Channel:
        if self._generation != self.identity.generation:  # a renewed identity: new TLS keys for new channels
            self._generation = self.identity.generation
            for _, old_channels in self._channels.values():
                for old in old_channels:
                    asyncio.ensure_future(old.close(grace=RENEW_GRACE_SECONDS))
            self._channels.clear()
        known = self._channels.get(node.node_id)
        if known is None or known[0] != node.endpoint:
            if known is not None:
                for old in known[1]:
                    asyncio.ensure_future(old.close())
            expect = Principal(Role.NODE, node.node_id)
            known = (node.endpoint, [secure_channel(self.identity, node.endpoint, expect, own_connection=True)
                                     for _ in range(self.per_node)])
            self._channels[node.node_id] = known
        channels = known[1]
        return channels[next(self._turn) % len(channels)]

    def renew(self, node_id: str) -> None:
        """The node registered (again): replace the channels to it that are not connected. A node
        back from a restart is then reached at once, not when a channel's reconnect backoff ends;
        a connected channel is kept, so re-registering every 30 s disturbs no call."""
        known = self._channels.get(node_id)
        if known is None:
            return
        endpoint, channels = known
        for i, old in enumerate(channels):
            if old.get_state() is not grpc.ChannelConnectivity.READY:
                asyncio.ensure_future(old.close(grace=RENEW_GRACE_SECONDS))
                channels[i] = secure_channel(self.identity, endpoint, Principal(Role.NODE, node_id), own_connection=True)

    def stub(self, node: directory_pb2.NodeEntry) -> node_pb2_grpc.NodeServiceStub:
        return node_pb2_grpc.NodeServiceStub(self.channel(node))

    async def compute_features(self, node, evaluation: envelope_pb2.SignedEnvelope, evaluator: str) -> bytes:
        stub = scoring_pb2_grpc.NodeEvaluationServiceStub(self.channel(node))
        try:
            response = await stub.ComputeFeatures(
                scoring_pb2.ComputeFeaturesRequest(evaluation=evaluation, evaluator=evaluator), timeout=10)
        except grpc.aio.AioRpcError as e:
            raise refusal_from_failure(RpcFailure.from_error(e)) from None
        return response.sealed_bundle

    async def evaluate(self, node, evaluation: envelope_pb2.SignedEnvelope, bundles: list[bytes]) -> bytes:
        stub = scoring_pb2_grpc.NodeEvaluationServiceStub(self.channel(node))
        try:
            response = await stub.Evaluate(
                scoring_pb2.NodeEvaluateRequest(evaluation=evaluation, sealed_bundles=bundles), timeout=15)
        except grpc.aio.AioRpcError as e:
            raise refusal_from_failure(RpcFailure.from_error(e)) from None
        return response.sealed_result

    async def ask(self, node: directory_pb2.NodeEntry, query: envelope_pb2.SignedEnvelope, timeout: float) -> query_pb2.NodeResult:
        """Relay the signed query unchanged; turn any failure into this node's outcome."""
        try:
            result = await self.stub(node).Query(query_pb2.QueryRequest(query=query), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            failure = RpcFailure.from_error(e)
            outcome = failed_outcome(failure.code, failure.refused)
            return query_pb2.NodeResult(
                node_id=node.node_id, outcome=outcome, error_code=failure.code,
                error_message=failure_message(outcome, failure.message, bool(failure.reason)),
                error_reason=failure.reason,
            )
        if result.node_id != node.node_id:
            # The answer's signature is checked by the bank; this only keeps the outcome list honest.
            result.node_id = node.node_id
        return result

    async def deliver(self, node, record: consent_pb2.ConsentRecord, timeout: float) -> bool:
        try:
            await self.stub(node).DeliverConsent(node_pb2.DeliverConsentRequest(consent=record), timeout=timeout)
            return True
        except grpc.aio.AioRpcError as e:
            log.warning("delivering consent to node %s failed: %s %s", node.node_id, e.code().name, bounded(e.details()))
            return False

    async def accesses(self, node: directory_pb2.NodeEntry, request: access_pb2.NodeAccessesRequest) -> access_pb2.NodeAccesses:
        """Relay an enterprise's signed access request (one page); a node that fails is reported, not fatal."""
        try:
            response = await self.stub(node).ListAccesses(request, timeout=10)
        except grpc.aio.AioRpcError as e:
            failure = RpcFailure.from_error(e)
            return access_pb2.NodeAccesses(node_id=node.node_id, error=f"{failure.code}: {failure.message}")
        return response.accesses

    async def file_dispute(self, node: directory_pb2.NodeEntry, dispute: envelope_pb2.SignedEnvelope) -> dispute_pb2.Dispute:
        """Relay a dispute; the node's refusal reaches the enterprise as it is."""
        try:
            response = await self.stub(node).FileDispute(dispute_pb2.NodeFileDisputeRequest(dispute=dispute), timeout=10)
        except grpc.aio.AioRpcError as e:
            raise refusal_from_failure(RpcFailure.from_error(e)) from None
        return response.dispute

    async def my_disputes(self, node: directory_pb2.NodeEntry,
                          request: dispute_pb2.NodeListMyDisputesRequest) -> dispute_pb2.NodeDisputes:
        """Relay an enterprise's signed request for its disputes; a node that fails is reported, not fatal."""
        try:
            response = await self.stub(node).ListMyDisputes(request, timeout=10)
        except grpc.aio.AioRpcError as e:
            failure = RpcFailure.from_error(e)
            # As for queries: the node's own text when it refused, a plain sentence for the transport's.
            message = failure_message(failed_outcome(failure.code, failure.refused), failure.message, bool(failure.reason))
            return dispute_pb2.NodeDisputes(node_id=node.node_id, error=f"{failure.code}: {message}",
                                            error_code=failure.code, error_reason=failure.reason)
        return dispute_pb2.NodeDisputes(node_id=node.node_id, answer=response.answer)

    async def close(self) -> None:
        for _, channels in self._channels.values():
            for channel in channels:
                await channel.close()
        self._channels.clear()


class RegistryServer:
    def __init__(self, config: RegistryConfig) -> None:
        identity = config.identity
        if identity.principal.role is not Role.REGISTRY:
            raise ValueError(f"--identity must be a registry identity, got {identity.principal}")
        self.config = config
        self.identity = identity
        self.store = RegistryStore(config.db)
        self.authorizer = Authorizer.from_dir(config.policy_dir)
        self.directory = NetworkDirectory(identity, self.store, config.clock)
        self.channels = NodeChannels(identity)
        self._resigning: asyncio.Future | None = None  # the directory re-signed after a renewed identity
        self.directory.on_registered = self.channels.renew
        self.audit_log = AuditLog(self.store, identity, config.clock)
        self.router = Router(self.directory, self.store, self.authorizer, self.channels.ask, self.audit_log, config.clock)
        self.fair_use = FairUse.from_dir(config.policy_dir)
        self.router.self_access = self.fair_use.self_access
        self.consents = ConsentDesk(self.directory, self.store, self.authorizer, self.channels.deliver, self.audit_log,
                                    self.fair_use, config.clock)
        self.membership = Membership(identity, self.directory, self.store, self.authorizer, self.audit_log, config.clock,
                                     self.consents.announce_route)
        self.disputes = DisputeRelay(self.directory, self.channels.file_dispute, self.audit_log, config.clock,
                                     authorizer=self.authorizer, ask_disputes=self.channels.my_disputes)
        self.audit = AuditDesk(self.audit_log, self.authorizer)
        self.accesses = AccessRelay(self.directory, self.authorizer, self.channels.accesses, self.audit_log, config.clock)
        self.alerts = AlertRelay(self.directory, self.store, self.authorizer, NodeAlertChannels(self.channels.channel),
                                 self.audit_log, config.clock)
        self.models = ModelDesk(identity, self.directory, self.store, self.authorizer, Catalogue.from_dir(config.policy_dir),
                                self.audit_log, config.clock, self.channels.compute_features, self.channels.evaluate)
        self.statistics = StatisticsRelay(
            self.directory, self.store, self.authorizer,
            lambda node, envelope: compute_at_node(self.channels.channel, node, envelope),
            self.audit_log, StatsConfig.from_dir(config.policy_dir), config.clock,
        )
        self.revocations = RevocationDesk(self.directory, self.store, self.audit_log, config.clock)
        self.witness = Witness(identity, self.directory, self.store, self.authorizer, self.audit_log, config.clock)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._follower: asyncio.Task | None = None
        self.metrics: ServiceMetrics | None = None
        self.metrics_port = 0

    async def start(self) -> int:
        telemetry.setup(f"xinyi-registry-{self.identity.principal.id}")
        if self.config.metrics_listen:
            self._start_metrics()
        await asyncio.to_thread(self.store.create_schema)
        await self.audit_log.open()
        self.router.replay.load(await asyncio.to_thread(self.store.live_nonces, self.config.clock()))
        await self.directory.load()
        self.store.cache_valid_until = 0.0  # no cached consent is used before the follower's first look
        self._follower = asyncio.create_task(self._follow())

        def add(server: grpc.aio.Server) -> None:
            registry_pb2_grpc.add_RegistryServiceServicer_to_server(
                RegistryServicer(self.directory, self.router, self.consents, self.authorizer, self.membership,
                                 self.revocations), server
            )
            consent_pb2_grpc.add_ConsentServiceServicer_to_server(ConsentServicer(self.consents), server)
            registry_pb2_grpc.add_WitnessServiceServicer_to_server(WitnessServicer(self.witness), server)
            access_pb2_grpc.add_AccessServiceServicer_to_server(AccessServicer(self.accesses), server)
            dispute_pb2_grpc.add_DisputeServiceServicer_to_server(DisputeServicer(self.disputes), server)
            scoring_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.models), server)
            alerts_pb2_grpc.add_AlertServiceServicer_to_server(AlertServicer(self.alerts), server)
            stats_pb2_grpc.add_StatisticsServiceServicer_to_server(StatisticsServicer(self.statistics), server)
            audit_pb2_grpc.add_AuditServiceServicer_to_server(
                AuditServicer(self.audit, lambda: self.directory.current.envelope), server
            )

        names = [
            registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
            consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name,
            registry_pb2.DESCRIPTOR.services_by_name["WitnessService"].full_name,
            access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
            dispute_pb2.DESCRIPTOR.services_by_name["DisputeService"].full_name,
            scoring_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
            alerts_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name,
            stats_pb2.DESCRIPTOR.services_by_name["StatisticsService"].full_name,
            audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
        ]
        self.server, self.port, _ = await start_server(self.identity, self.config.listen, add, names,
                                                       audit_log=self.audit_log)
        return self.port

    def _start_metrics(self) -> None:
        """--metrics-listen: routed queries' outcomes, the whole routing and each of its steps,
        the audit log, the database pool and the identity's certificates (see xinyi.metrics)."""
        from registry.routing import STEPS

        m = ServiceMetrics(f"xinyi-registry-{self.identity.principal.id}", self.config.metrics_listen)
        m.count_queries(self.router, "route", "xinyi_registry_route_seconds", answered="routed")
        m.time_steps(self.router, STEPS, "xinyi_registry_route_step_seconds")
        m.watch_audit_log(self.audit_log)
        m.watch_pool(self.store.engine)
        m.watch_certificates(self.identity)
        try:
            self.metrics_port = m.start()
        except MetricsError as e:
            m.stop()
            raise ServerStartError(f"--metrics-listen: {e}") from None
        self.metrics = m

    def reload_policies(self) -> None:
        """SIGHUP: re-read the Cedar policies and the fair-use rules; an invalid set is refused
        and the old one kept."""
        fair_use = FairUse.from_dir(self.config.policy_dir)  # check every file before changing any
        stats_config = StatsConfig.from_dir(self.config.policy_dir)
        self.authorizer.reload(self.config.policy_dir)
        self.consents.fair_use = fair_use
        self.router.self_access = fair_use.self_access
        self.statistics.config = stats_config
        log.info("registry reloaded its policies from %s", self.config.policy_dir)

    def reload_identity(self) -> None:
        """SIGHUP: take over a renewed bundle from --identity (`xinyi pki renew`): the directory,
        witness cosignatures and the audit log's checkpoints are signed with the new key at once,
        new TLS handshakes and new channels to nodes use the new certificate. The replaced key is
        published in the directory (registry_keys), so what it signed still verifies. A bundle
        that cannot be used is refused (PKIError) and the old one stays."""
        if self.config.identity_dir is None:
            return
        before = self.identity.signing_cert_der
        self.identity.adopt(Identity.load(self.config.identity_dir))
        if self.identity.signing_cert_der != before:
            log.info("registry took over the renewed identity in %s", self.config.identity_dir)
            self._resigning = asyncio.ensure_future(self.directory.load())  # re-signed, listing the replaced key

    async def _follow(self) -> None:
        """What other replicas change in the shared database reaches this one within
        FOLLOW_INTERVAL_S: a newer directory version (loaded, as they signed it) and every
        consent changed (dropped from the cache of consents). Should the database not answer,
        cached consents stop being used CACHE_TRUSTED_S after the last look that succeeded."""
        seen = await asyncio.to_thread(self.store.last_consent_event)
        failing = False
        while True:
            looked_at = time.monotonic()
            try:
                await self.directory.follow()
                while True:
                    head, changed = await asyncio.to_thread(self.store.consent_ids_changed_after, seen, FOLLOW_PAGE)
                    self.store.forget_consents(changed, looked_at + CACHE_TRUSTED_S)
                    seen = head
                    if len(changed) < FOLLOW_PAGE:
                        break
                if failing:
                    log.info("registry follows the shared database again")
                failing = False
            except Exception as e:  # noqa: BLE001 - the database away: logged once, tried again
                if not failing:
                    log.warning("registry cannot follow the shared database (%s); cached consents expire",
                                bounded(f"{e.__class__.__name__}: {e}"))
                failing = True
            await asyncio.sleep(max(0.0, FOLLOW_INTERVAL_S - (time.monotonic() - looked_at)))

    async def stop(self, grace: float = 1.0) -> None:
        if self._follower is not None:
            self._follower.cancel()
        if self.server:
            await self.server.stop(grace)
        await self.channels.close()
        await self.audit_log.close()
        if self.metrics is not None:
            self.metrics.stop()
        self.store.close()
