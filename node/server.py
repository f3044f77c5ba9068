"""Running a node: `xinyi node serve --identity D/node-510100 --listen HOST:PORT --registry HOST:PORT --db URL`.

The node serves NodeService and AuditService over mutual TLS, registers itself with the
registry (and keeps re-registering, so a restarted registry finds it again), and catches up on
consents it missed while offline.

With `--workers N` (node/workers.py) one node runs as N+1 processes on one store:

    sequencer  the audit log, nonces and consent uses (node.sequencer); registers, syncs
               consents, has checkpoints cosigned. Serves no public port.
    worker x N the public port, shared (SO_REUSEPORT); the whole query path, except that the
               log, the nonce and the consent use are taken from the sequencer.

On PostgreSQL a node may also run as several independent processes on several hosts, one
store, one advertised address: the database orders the log (xinyi.audit.log), takes each nonce
once and counts each consent use once (xinyi.query.SharedReplayGuard, SharedUseLedger).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import grpc
from cryptography import x509

from node.access import AccessDesk
from node.alerts import AlertDesk
from node.alerts import register_tables as register_alert_tables
from node.alerts_service import NodeAlertServicer
from node.consents import ConsentFreshness, ConsentInbox
from node.disputes import DisputeDesk
from node.evaluation import EvaluationDesk
from node.quality import CONSENTS_CONFIRMED_AT, REGISTERED_AT, LiveState
from node.query import QueryHandler
from node.report import ReportDesk
from node.sequencer import RemoteAuditLog, RemoteReplayGuard, RemoteUseLedger, Sequencer, SequencerLink
from node.servicer import NodeEvaluationServicer, NodeServicer
from node.stats import StatisticsDesk
from node.stats import register_tables as register_stats_tables
from node.stats_service import NodeStatisticsServicer
from node.store import NodeStore
from xinyi import telemetry
from xinyi.audit.checkpoint import NoteError, verify_cosignature
from xinyi.audit.desk import AuditDesk
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock, now_ms
from xinyi.compute.alerts import AlertRules
from xinyi.compute.features import Catalogue
from xinyi.compute.models import LoadedModel
from xinyi.compute.models import load as load_model
from xinyi.compute.models import sha256 as model_sha256
from xinyi.compute.stats import StatsConfig
from xinyi.crypto.identity import Role
from xinyi.crypto.pki import Identity, PKIError, tls_role_name
from xinyi.directory import Directory
from xinyi.errors import Kind, Reason, Refusal, bounded
from xinyi.policy import DEFAULT_POLICY_DIR, Authorizer
from xinyi.privacy.fairuse import self_access_rule
from xinyi.privacy.minimize import MinimizationRules
from xinyi.records import uscc as uscc_codes
from xinyi.registration import build_registration
from xinyi.rpc.audit_service import AuditServicer
from xinyi.rpc.channels import FailoverChannel, hangs_up_on
from xinyi.metrics import MetricsError, ServiceMetrics
from xinyi.rpc.server import ServerStartError, start_server
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    envelope_pb2,
    node_pb2,
    node_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
)

log = logging.getLogger("xinyi.node")
NOTE_EVERY_MS = 10_000  # how often the last registration and consent confirmation are written down
# A renewed key is used once the registry lists it, or after this long without an answer.
RENEWAL_WAIT_SECONDS = 15.0


@dataclass
class NodeConfig:
    identity: Identity
    listen: str
    db: str
    # The registry's replicas, HOST:PORT each (a single string is one address); calls fail over
    # from one that is unreachable to the next (xinyi.rpc.channels.FailoverChannel).
    registry: str | Sequence[str] | None = None
    advertise: str | None = None  # endpoint given to the registry; defaults to the listen address
    policy_dir: Path = DEFAULT_POLICY_DIR
    reregister_seconds: float = 30.0
    cosign_seconds: float = 1.0  # how often a new checkpoint is sent to the witness
    sync_seconds: float = 2.0  # how often consent changes are pulled from the registry
    # How often the registry is asked for a newer directory (revocation lists reach the node so).
    directory_seconds: float = 2.0
    # A node refuses queries when the registry has not confirmed its consents for this long.
    consent_freshness_seconds: float = 30.0
    clock: Clock = field(default=now_ms)
    # --workers: the sequencer's Unix socket, and which side of it this process is.
    sequencer: Path | None = None
    worker: bool = False
    status_seconds: float = 0.5  # how often a worker asks the sequencer for consent and directory news
    # A node the registry does not trust (another root, revoked, UNAUTHENTICATED) stops after this many
    # refusals in a row instead of serving unregistered forever; `identity_dir` (the bundle's folder)
    # lets it tell a registry that hangs up on its certificate from one that is down.
    untrusted_tries: int = 5
    identity_dir: Path | None = None  # --identity: read again on SIGHUP (a renewed bundle)
    metrics_listen: str | None = None  # --metrics-listen HOST:PORT: Prometheus metrics at /metrics (xinyi.metrics)

    @property
    def mode(self) -> str:
        """"single" (one process), "sequencer" or "worker" (--workers)."""
        return "single" if self.sequencer is None else "worker" if self.worker else "sequencer"


class NodeServer:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        identity = config.identity
        if identity.principal.role is not Role.NODE:
            raise ValueError(f"--identity must be a node identity, got {identity.principal}")
        self.identity = identity
        self.node_id = identity.principal.id
        self.store = NodeStore(config.db)
        register_alert_tables(self.store)
        self.privacy_budgets = register_stats_tables(self.store)
        self.authorizer = Authorizer.from_dir(config.policy_dir)
        self.link = SequencerLink(config.sequencer) if config.mode == "worker" else None
        self.audit_log = (RemoteAuditLog(self.link, self.store, identity, config.clock) if self.link
                          else AuditLog(self.store, identity, config.clock))
        self.rules = MinimizationRules.from_dir(config.policy_dir)
        self.inbox = ConsentInbox(self.store, self.authorizer, identity.trust(), self.audit_log, config.clock)
        # Consents are confirmed by the registry's sync; a worker follows its sequencer's and asks it again before refusing.
        freshness = ConsentFreshness(lambda: self.inbox.synced_at_ms, int(config.consent_freshness_seconds * 1000),
                                     self._follow_sequencer if self.link else None) if config.registry else None
        self.queries = QueryHandler(
            identity, self.store, self.authorizer, self.audit_log, self.rules, clock=config.clock, freshness=freshness,
            self_access=self_access_rule(config.policy_dir),
        )
        if self.link:  # one count of nonces and consent uses for all workers: the sequencer's
            self.queries.replay, self.queries.uses = RemoteReplayGuard(self.link), RemoteUseLedger(self.link)
        if config.mode != "single" or self.store.shared:  # other processes write consents too: no copy can be trusted
            self.store.cache_consents = False
        self.alerts = AlertDesk(identity, self.store, self.authorizer, self.audit_log, AlertRules.from_dir(config.policy_dir),
                                clock=config.clock, freshness=freshness)
        self.evaluations = EvaluationDesk(
            identity, self.store, self.authorizer, self.audit_log, Catalogue.from_dir(config.policy_dir), self.rules,
            config.clock, self._current_directory, self._load_model, self.queries._held_categories, self.queries.uses,
        )
        self._models: dict[bytes, object] = {}
        self.disputes = DisputeDesk(identity.principal, self.store, self.authorizer, self.audit_log, config.clock)
        self.reports = ReportDesk(identity.principal, self.store, self.authorizer, self.audit_log, config.clock,
                                  self.live_state)
        self.audit = AuditDesk(self.audit_log, self.authorizer)
        self.accesses = AccessDesk(self.node_id, self.audit_log, self.authorizer, config.clock)
        self.statistics = StatisticsDesk(self.node_id, self.store, self.privacy_budgets, self.authorizer,
                                         self.audit_log, StatsConfig.from_dir(config.policy_dir), config.clock)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.directory: Directory | None = None
        self.registered = asyncio.Event()
        self.refused = asyncio.Event()  # set, with refused_reason, when the registry will never accept this node
        self.refused_reason = ""
        self._address_seen: tuple = ()  # what the registry last said about this node's address
        self._tasks: list[asyncio.Task] = []
        self.cosigned_size = 0  # the size of the last checkpoint the witness cosigned
        self._registry_channel: FailoverChannel | None = None
        self._registry_generation = 0  # the identity generation the registry channel was made with
        self._renewing: Identity | None = None  # a renewed identity whose key is registered but not used yet
        self._consent_cursor = 0  # read from the store at start: where the last pull stopped
        self._sync_lock = asyncio.Lock()  # one pull at a time (registration and the timer both pull)
        self._claims_waiting = 0  # out-of-area holding claims the operator has not approved (logged on change)
        self.sequencer: Sequencer | None = None
        self._directory_digest = b""
        self.metrics: ServiceMetrics | None = None
        self.metrics_port = 0
        self._noted: dict[str, int] = {}  # node_state keys last written by _note_state

    async def start(self) -> int:
        mode = self.config.mode
        telemetry.setup(f"xinyi-node-{self.node_id}" + ("-worker" if mode == "worker" else ""))
        if self.config.metrics_listen:
            self._start_metrics()
        if mode == "worker":
            await self.link.open()  # the sequencer created the schema before opening its socket
        else:
            await asyncio.to_thread(self.store.create_schema)
            self._consent_cursor = await asyncio.to_thread(self.store.consent_sync_position)
            await self.audit_log.open()
            self.queries.replay.load(await asyncio.to_thread(self.store.live_nonces, self.config.clock()))
        if mode == "sequencer":
            self.sequencer = Sequencer(self.audit_log, self.queries.replay, self.queries.uses, self._status)
            await self.sequencer.serve(self.config.sequencer)
            self.port = int(self.config.listen.rsplit(":", 1)[1])  # the workers' port
            self._start_background()
            return self.port

        def add(server: grpc.aio.Server) -> None:
            node_pb2_grpc.add_NodeServiceServicer_to_server(
                NodeServicer(self.queries, self.inbox, self.accesses, self.disputes, self.reports), server)
            scoring_pb2_grpc.add_NodeEvaluationServiceServicer_to_server(NodeEvaluationServicer(self.evaluations), server)
            alerts_pb2_grpc.add_NodeAlertServiceServicer_to_server(NodeAlertServicer(self.alerts), server)
            stats_pb2_grpc.add_NodeStatisticsServiceServicer_to_server(NodeStatisticsServicer(self.statistics), server)
            audit_pb2_grpc.add_AuditServiceServicer_to_server(
                AuditServicer(self.audit, lambda: self.directory.envelope if self.directory else None), server
            )

        names = [node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
                 scoring_pb2.DESCRIPTOR.services_by_name["NodeEvaluationService"].full_name,
                 alerts_pb2.DESCRIPTOR.services_by_name["NodeAlertService"].full_name,
                 stats_pb2.DESCRIPTOR.services_by_name["NodeStatisticsService"].full_name,
                 audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name]
        self.server, self.port, _ = await start_server(self.identity, self.config.listen, add, names,
                                                       reuse_port=mode == "worker", audit_log=self.audit_log)
        if mode == "worker":
            await self._follow_sequencer()
            self._tasks = [asyncio.create_task(self._keep_following()), asyncio.create_task(self._stop_when_orphaned())]
        else:
            self._start_background()
        return self.port

    def _start_metrics(self) -> None:
        """--metrics-listen: the query path's outcomes and steps, the audit log, the consent
        sync, the database pool and the identity's certificates (see xinyi.metrics)."""
        from node.query import STEPS

        m = ServiceMetrics(f"xinyi-node-{self.node_id}", self.config.metrics_listen)
        m.count_queries(self.queries, "answer", "xinyi_node_query_seconds")
        m.time_steps(self.queries, STEPS, "xinyi_node_query_step_seconds")
        if isinstance(self.audit_log, AuditLog):
            m.watch_audit_log(self.audit_log)
        m.watch_pool(self.store.engine)
        m.watch_certificates(self.identity)
        if self.config.registry:
            started = self.config.clock()

            def lag() -> float:  # before the first sync: since the node started
                return (self.config.clock() - (self.inbox.synced_at_ms or started)) / 1000

            m.gauge("xinyi_consent_sync_lag_seconds", "seconds since the registry last confirmed this node's consents",
                    lag, unit="s")
        try:
            self.metrics_port = m.start()
        except MetricsError as e:
            m.stop()
            raise ServerStartError(f"--metrics-listen: {e}") from None
        self.metrics = m

    def _start_background(self) -> None:
        if self.config.registry:
            self._tasks = [asyncio.create_task(self._keep_registered()), asyncio.create_task(self._keep_cosigned()),
                           asyncio.create_task(self._keep_synced()), asyncio.create_task(self._keep_directory_current())]

    # -- workers: what the sequencer knows that the query path needs --------------------------
    def _status(self, known_digest: bytes) -> dict:
        """For a worker: when consents were last confirmed, and the directory if it changed."""
        envelope = self.directory.envelope.SerializeToString(deterministic=True) if self.directory else b""
        digest = hashlib.sha256(envelope).digest() if envelope else b""
        return {"synced_at_ms": self.inbox.synced_at_ms, "registered": self.registered.is_set(), "digest": digest,
                "directory": envelope if digest != known_digest else None}

    async def _follow_sequencer(self) -> None:
        status = await self.link.call("status", self._directory_digest)
        self.inbox.synced_at_ms = status["synced_at_ms"]
        if status["directory"]:
            envelope = envelope_pb2.SignedEnvelope.FromString(status["directory"])
            self.directory = Directory.verify(envelope, self.identity.trust())
            self._directory_digest = status["digest"]
        if status["registered"]:
            self.registered.set()

    async def _stop_when_orphaned(self) -> None:
        """Without its sequencer a worker can answer nothing (no audit log): it stops, freeing
        the port for the node's next start, instead of refusing every query."""
        await self.link.lost.wait()
        log.error("worker %d lost its sequencer; stopping", os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)  # the same graceful stop as an operator's kill

    async def _keep_following(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_seconds)
            try:
                await self._follow_sequencer()
            except Exception as e:  # noqa: BLE001 - the next poll tries again; queries fail closed meanwhile
                log.warning("worker could not reach the sequencer: %s", e)

    @property
    def endpoint(self) -> str:
        if self.config.advertise:
            return self.config.advertise
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def _registry(self) -> FailoverChannel:
        """Mutual-TLS channels to the registry's replicas, kept for the node's life: a call moves
        from a replica that is unreachable to the next, with bounded retries."""
        if self._registry_channel is not None and self._registry_generation != self.identity.generation:
            # A renewed identity: new calls go over a channel with the new TLS key; the old one
            # is closed once the calls on it had time to finish.
            old, self._registry_channel = self._registry_channel, None
            self._tasks.append(asyncio.create_task(old.close(grace=30)))
        if self._registry_channel is None:
            self._registry_channel = FailoverChannel(self.identity, self.config.registry, Role.REGISTRY)
            self._registry_generation = self.identity.generation
        return self._registry_channel

    async def register_once(self, signer: Identity | None = None) -> Directory:
        """Register with the registry, verify the directory it returns, catch up on consents.
        `signer`: a renewed identity whose key is registered before it is used (reload_identity);
        the registry takes the key from the signed registration, so that key signs it."""
        signer = signer or self._renewing or self.identity
        held = await asyncio.to_thread(self.store.held_usccs)
        # Only enterprises outside this node's own area need declaring; area routing finds the rest.
        outside = [u for u in held if not uscc_codes.in_area_of(self.node_id, u)]
        stub = self._registry().stub(registry_pb2_grpc.RegistryServiceStub)
        registration = build_registration(signer, self.endpoint, outside, self.config.clock())
        response = await stub.RegisterNode(
            registry_pb2.RegisterNodeRequest(endpoint=self.endpoint, signing_cert=signer.signing_cert_der,
                                             held_usccs=outside, registration=registration),
            timeout=10,
        )
        self.directory = Directory.verify(response.directory, self.identity.trust())
        self._report_address(response)
        waiting = sum(self.node_id not in self.directory.holdings.get(u, ()) for u in outside)
        if waiting != self._claims_waiting:
            log.log(logging.WARNING if waiting else logging.INFO,
                    "%d enterprises outside this node's area are not routed here: the platform operator has not "
                    "approved this node's claim to hold their records (xinyi registry claims list)", waiting)
        self._claims_waiting = waiting
        await self.sync_consents()
        return self.directory

    def _report_address(self, response: registry_pb2.RegisterNodeResponse) -> None:
        """Tell the operator what the registry saw: this node moved, or another process holding
        its certificate registers it elsewhere. Logged when it changes, not every 30 s."""
        seen = (response.previous_endpoint, response.endpoint_changed_at_ms, response.conflict)
        last, self._address_seen = self._address_seen, seen
        if seen == last or not (response.endpoint_changed_at_ms or response.conflict):
            return
        if response.conflict:
            log.warning("the registry reports a conflict for node %s: %s", self.node_id, bounded(response.conflict, 1000))
        else:
            log.warning("the registry recorded node %s moving from %s to %s: if this node's operator did not move it, "
                        "another process holds its certificate", self.node_id, bounded(response.previous_endpoint),
                        self.endpoint)

    async def _current_directory(self, refresh: bool) -> Directory:
        """The signed directory: the one from the last registration, or fetched again."""
        if refresh or self.directory is None:
            stub = self._registry().stub(registry_pb2_grpc.RegistryServiceStub)
            response = await stub.GetDirectory(registry_pb2.GetDirectoryRequest(), timeout=10)
            self.directory = Directory.verify(response.directory, self.identity.trust())
        return self.directory

    async def _keep_directory_current(self) -> None:
        """Ask for a newer directory every few seconds (an empty answer when there is none):
        verifying it teaches this node's trust anchor the revocation lists just published."""
        while True:
            await asyncio.sleep(self.config.directory_seconds)
            if self.directory is None:
                continue
            try:
                stub = self._registry().stub(registry_pb2_grpc.RegistryServiceStub)
                response = await stub.GetDirectory(
                    registry_pb2.GetDirectoryRequest(if_newer_than=self.directory.version), timeout=10)
                if response.HasField("directory"):
                    directory = Directory.verify(response.directory, self.identity.trust())
                    if directory.version > self.directory.version:
                        self.directory = directory
            except (grpc.aio.AioRpcError, Refusal) as e:
                detail = bounded(e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e))
                log.warning("fetching the directory from %s failed: %s", self._registry().target, detail)

    async def _load_model(self, approval) -> "LoadedModel":
        """An approved model, fetched once from the registry; its bytes must hash to the approval."""
        model = self._models.get(approval.sha256)
        if model is None:
            stub = self._registry().stub(scoring_pb2_grpc.ModelServiceStub)
            response = await stub.GetModel(scoring_pb2.GetModelRequest(sha256=approval.sha256), timeout=30)
            if model_sha256(response.onnx) != approval.sha256:
                raise Refusal.unauthenticated("model", "the bytes served do not hash to the approved sha256; not run",
                                              "MODEL_HASH_MISMATCH")
            model = await asyncio.to_thread(load_model, response.onnx, list(approval.features), approval.output_min,
                                            approval.output_max, self.evaluations.catalogue)
            self._models[approval.sha256] = model
        return model

    async def sync_consents(self) -> int:
        """Pull every consent change up to the registry's present, page after page, resuming
        where the last pull (or the last run) stopped. Only once the registry's head is reached
        are the consents confirmed, as of the start of that last page's request: a restarted
        node answers nothing under a consent it may have missed a change of."""
        async with self._sync_lock:
            stub = self._registry().stub(registry_pb2_grpc.RegistryServiceStub)
            received = 0
            while True:
                started = self.config.clock()
                after = self._consent_cursor
                response = await stub.SyncConsents(registry_pb2.SyncConsentsRequest(after=after), timeout=10)
                if response.head < after:
                    # The registry's history is shorter than what this node has read: a new registry
                    # database. Read it again from the start; confirm nothing on the old position.
                    log.warning("the registry's consent history ends at %d, before this node's position %d; "
                                "reading it again from the start", response.head, after)
                    await self._set_consent_cursor(0)
                    continue
                for record in response.consents:
                    try:
                        await self.inbox.accept(record)
                    except Refusal as r:
                        log.warning("consent %s from the registry refused: %s", bounded(record.consent_id, 40), r)
                received += len(response.consents)
                if response.last >= response.head:
                    await self._set_consent_cursor(response.last)
                    self.inbox.synced_at_ms = started
                    await self._note_state(CONSENTS_CONFIRMED_AT, started)
                    return received
                if response.last <= after:
                    raise Refusal(Kind.UNAVAILABLE, "CONSENT_SYNC_STALLED",
                                  f"the registry's consent changes did not advance past {after} "
                                  f"(head {response.head}); consents stay unconfirmed")
                await self._set_consent_cursor(response.last)

    async def _note_state(self, key: str, at_ms: int) -> None:
        """Keep in the store when the node last registered or had its consents confirmed, for
        `xinyi node quality` run beside it; at most every NOTE_EVERY_MS per key (a sync runs
        every 2 s). A store that fails here fails the next query too: only logged."""
        if at_ms - self._noted.get(key, 0) < NOTE_EVERY_MS:
            return
        try:
            await asyncio.to_thread(self.store.set_state_value, key, at_ms)
            self._noted[key] = at_ms
        except Exception as e:  # noqa: BLE001 - a report's figure, not a reason to stop syncing
            log.warning("could not note %s in the store: %s", key, bounded(str(e)))

    def live_state(self) -> LiveState:
        """What the operator's report says of this process: registration and consent sync."""
        return LiveState(registry_configured=bool(self.config.registry),
                         registered=self.registered.is_set(), refused_reason=self.refused_reason,
                         consents_confirmed_at_ms=self.inbox.synced_at_ms,
                         consent_freshness_ms=int(self.config.consent_freshness_seconds * 1000),
                         directory_version=self.directory.version if self.directory else 0)

    async def _set_consent_cursor(self, position: int) -> None:
        if position != self._consent_cursor:
            await asyncio.to_thread(self.store.set_consent_sync_position, position)
            self._consent_cursor = position

    async def _keep_synced(self) -> None:
        while True:
            await asyncio.sleep(self.config.sync_seconds)
            if not self.registered.is_set():
                continue
            try:
                await self.sync_consents()
            except grpc.aio.AioRpcError as e:
                log.warning("consent sync with %s failed: %s %s", self._registry().target, e.code().name, bounded(e.details()))
            except Exception as e:  # noqa: BLE001 - the next pull tries again; queries fail closed meanwhile
                log.warning("consent sync with %s failed: %s", self._registry().target, bounded(str(e)))

    async def _keep_registered(self) -> None:
        delay = 0.2
        refusals = 0  # in a row: the registry does not trust this node
        while True:
            try:
                await self.register_once()
                await self._note_state(REGISTERED_AT, self.config.clock())
                if not self.registered.is_set():
                    log.info("node %s registered with %s as %s", self.node_id, self._registry().target, self.endpoint)
                self.registered.set()
                delay = self.config.reregister_seconds
                refusals = 0
            except (grpc.aio.AioRpcError, Refusal, PKIError) as e:
                untrusted = await self._untrusted(e)
                refusals = refusals + 1 if untrusted else 0
                if untrusted and refusals >= self.config.untrusted_tries:
                    self.refused_reason = (f"node {self.node_id} cannot register with {self._registry().target}: "
                                           f"{untrusted} (refused {refusals} times in a row); stopping")
                    log.error("%s", self.refused_reason)
                    self.refused.set()
                    return
                detail = untrusted or bounded(e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e))
                log.warning("registering with %s failed (%s); retrying in %.1f s", self._registry().target, detail, delay)
                delay = min(max(delay * 2, 0.2), self.config.reregister_seconds)
            await asyncio.sleep(delay)

    async def _untrusted(self, error: Exception) -> str:
        """Why the registry will never accept this node as it is ("" when the failure may pass):
        this side refused the registry's certificate (another root), its own certificate is
        unusable, the registry answered UNAUTHENTICATED, or it hangs up after every handshake."""
        if isinstance(error, PKIError):
            return str(error)
        if not isinstance(error, grpc.aio.AioRpcError):
            return ""
        failure = RpcFailure.from_error(error)
        if failure.reason.startswith("TLS_"):
            return failure.message
        if failure.code == "UNAUTHENTICATED":
            return f"the registry refused this node's identity: {failure.message}"
        if (failure.code == "UNAVAILABLE" and self.config.identity_dir is not None
                and "Socket closed" in (error.details() or "")
                and await asyncio.to_thread(hangs_up_on, self.identity, self.config.identity_dir,
                                            self._registry().target, tls_role_name(Role.REGISTRY))):
            return ("the registry closes every connection right after the TLS handshake: it does not trust this "
                    "node's certificate (issued under another root, or revoked)")
        return ""

    async def cosign_once(self) -> bool:
        """Send the latest checkpoint to the witness (the registry); keep its cosignature.

        Returns True when a new cosignature was added. The witness tells the size it last
        cosigned when ours is out of date (after a restart), and the next call uses it.
        """
        latest, _ = await self.audit_log.checkpoints()  # other processes of this node append too
        size = latest.checkpoint.size
        if size == 0 or size == self.cosigned_size or not self.registered.is_set():
            return False
        old = self.cosigned_size
        proof = await self.audit_log.consistency_proof(old, size) if 0 < old < size else []
        stub = self._registry().stub(registry_pb2_grpc.WitnessServiceStub)
        try:
            response = await stub.AddCheckpoint(
                registry_pb2.AddCheckpointRequest(checkpoint=latest.note, old_size=old, consistency=proof), timeout=10
            )
        except grpc.aio.AioRpcError as e:
            failure = RpcFailure.from_error(e)
            if failure.error_reason is Reason.OLD_SIZE_MISMATCH:  # a restart, or another process of this node had it cosigned
                self.cosigned_size = int(dict(failure.metadata).get("last_size", "0"))
                return False
            raise
        cosigned = latest.note + response.cosignature
        if not self._witness_key_listed(cosigned):
            # The registry renewed its key: fetch the directory listing it, which auditors are
            # served beside this cosigned checkpoint.
            await self._current_directory(True)
        await self.audit_log.add_cosignature(latest.checkpoint, cosigned)
        self.cosigned_size = size
        return True

    def _witness_key_listed(self, cosigned_note: str) -> bool:
        directory = self.directory
        if directory is None:
            return False
        keys = [x509.load_der_x509_certificate(der).public_key() for der in directory.registry_certs()]
        try:
            verify_cosignature(cosigned_note, f"xinyi/{directory.registry_id}", keys)
            return True
        except NoteError:
            return False

    async def _keep_cosigned(self) -> None:
        while True:
            await asyncio.sleep(self.config.cosign_seconds)
            try:
                await self.cosign_once()
            except grpc.aio.AioRpcError as e:
                log.warning("the witness did not cosign checkpoint: %s %s", e.code().name, bounded(e.details()))

    def reload_policies(self) -> None:
        """SIGHUP: re-read the Cedar policies; an invalid set is refused and the old one kept."""
        rules = MinimizationRules.from_dir(self.config.policy_dir)  # check every file before changing any
        self_access = self_access_rule(self.config.policy_dir)
        alert_rules = AlertRules.from_dir(self.config.policy_dir)
        stats_config = StatsConfig.from_dir(self.config.policy_dir)
        self.authorizer.reload(self.config.policy_dir)
        self.statistics.config = stats_config
        self.queries.rules = rules
        self.queries.self_access = self_access
        self.evaluations.rules = rules
        self.alerts.rules = alert_rules
        log.info("node %s reloaded its policies from %s", self.node_id, self.config.policy_dir)

    def reload_identity(self) -> None:
        """SIGHUP: take over a renewed bundle from --identity (`xinyi pki renew`). A bundle that
        cannot be used is refused here (PKIError) and the old one stays. Otherwise the new
        signing key is registered first, so that the directory lists it (the old one as replaced)
        before anything is signed with it; then answers, checkpoints, alerts and all else this
        node signs use it, and new TLS handshakes the new certificate."""
        if self.config.identity_dir is None:
            return
        renewed = Identity.load(self.config.identity_dir)
        self.identity.check_renewal(renewed)
        if renewed.signing_cert_der != self.identity.signing_cert_der:
            self._tasks.append(asyncio.create_task(self._take_over(renewed)))

    async def _take_over(self, renewed: Identity) -> None:
        self._renewing = renewed  # every registration from now on is signed with, and names, the new key
        cert = renewed.signing_cert_der
        try:
            if self.config.mode == "worker":  # the sequencer registers it: wait until its directory lists it
                for _ in range(int(RENEWAL_WAIT_SECONDS / self.config.status_seconds)):
                    entry = self.directory.nodes.get(self.node_id) if self.directory else None
                    if entry is not None and entry.signing_cert == cert:
                        break
                    await asyncio.sleep(self.config.status_seconds)
            elif self.config.registry:
                await asyncio.wait_for(self.register_once(signer=renewed), RENEWAL_WAIT_SECONDS)
        except (grpc.aio.AioRpcError, Refusal, TimeoutError) as e:  # signing goes on with the new key; readers refresh
            log.warning("the registry did not confirm the renewed key before its use: %s", bounded(str(e)))
        try:
            self.identity.adopt(renewed)
        except PKIError as e:  # it expired while waiting: the old identity stays
            log.error("identity NOT reloaded, the old one stays in use: %s", e)
            return
        finally:
            self._renewing = None
        log.info("node %s took over the renewed identity in %s", self.node_id, self.config.identity_dir)

    async def stop(self, grace: float = 1.0) -> None:
        for task in self._tasks:
            task.cancel()
        if self._registry_channel is not None:
            await self._registry_channel.close()
        if self.server:
            await self.server.stop(grace)
        # grpc.aio's stop returns as it cancels the calls still running; a cancelled query still
        # writes its audit entry, through the log (and, on a worker, the link) closed below.
        await self.queries.drain(timeout=grace + 5)
        if self.sequencer:
            await self.sequencer.close()
        await self.audit_log.close()
        if self.link:
            await self.link.close()
        if self.metrics is not None:
            self.metrics.stop()
        self.store.close()
