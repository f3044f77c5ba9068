"""Running a node: `xinyi node serve --identity D/node-510100 --listen HOST:PORT --registry HOST:PORT --db URL`.

The node serves NodeService and AuditService over mutual TLS, registers itself with the
registry (and keeps re-registering, so a restarted registry finds it again), and catches up on
consents it missed while offline.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from xinyi import telemetry
from xinyi import uscc as uscc_codes
from xinyi.audit import AuditReader
from xinyi.clock import Clock, now_ms
from xinyi.directory import Directory
from xinyi.errors import Refusal
from xinyi.identity import Role
from xinyi.pki import Identity
from xinyi.policy import DEFAULT_POLICY_DIR, Authorizer
from xinyi.rpc.audit_service import AuditServicer
from xinyi.rpc.channels import secure_channel
from xinyi.rpc.server import start_server
from xinyi.v1 import audit_pb2, audit_pb2_grpc, node_pb2, node_pb2_grpc, registry_pb2, registry_pb2_grpc

from node.consents import ConsentInbox
from node.query import QueryHandler
from node.servicer import NodeServicer
from node.store import NodeStore

log = logging.getLogger("xinyi.node")


@dataclass
class NodeConfig:
    identity: Identity
    listen: str
    db: str
    registry: str | None = None
    advertise: str | None = None  # endpoint given to the registry; defaults to the listen address
    policy_dir: Path = DEFAULT_POLICY_DIR
    reregister_seconds: float = 30.0
    clock: Clock = field(default=now_ms)


class NodeServer:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        identity = config.identity
        if identity.principal.role is not Role.NODE:
            raise ValueError(f"--identity must be a node identity, got {identity.principal}")
        self.identity = identity
        self.node_id = identity.principal.id
        self.store = NodeStore(config.db)
        self.authorizer = Authorizer.from_dir(config.policy_dir)
        self.queries = QueryHandler(identity, self.store, self.authorizer, clock=config.clock)
        self.inbox = ConsentInbox(self.store, self.authorizer, identity.trust(), config.clock)
        self.audit = AuditReader(identity.principal, self.store, self.authorizer, config.clock)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.directory: Directory | None = None
        self.registered = asyncio.Event()
        self._register_task: asyncio.Task | None = None

    async def start(self) -> int:
        telemetry.setup(f"xinyi-node-{self.node_id}")
        await asyncio.to_thread(self.store.create_schema)

        def add(server: grpc.aio.Server) -> None:
            node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(self.queries, self.inbox), server)
            audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(self.audit), server)

        names = [node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
                 audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name]
        self.server, self.port, _ = await start_server(self.identity, self.config.listen, add, names)
        if self.config.registry:
            self._register_task = asyncio.create_task(self._keep_registered())
        return self.port

    @property
    def endpoint(self) -> str:
        if self.config.advertise:
            return self.config.advertise
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def register_once(self) -> Directory:
        """Register with the registry, verify the directory it returns, take in missed consents."""
        held = await asyncio.to_thread(self.store.held_usccs)
        # Only enterprises outside this node's own area need declaring; area routing finds the rest.
        outside = [u for u in held if self.node_id not in uscc_codes.route_area_codes(uscc_codes.area_code(u))]
        async with secure_channel(self.identity, self.config.registry, Role.REGISTRY) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            response = await stub.RegisterNode(
                registry_pb2.RegisterNodeRequest(
                    endpoint=self.endpoint, signing_cert=self.identity.signing_cert_der, held_usccs=outside
                ),
                timeout=10,
            )
        directory = Directory.verify(response.directory, self.identity.trust())
        for record in response.consents:
            try:
                await self.inbox.accept(record.consent, record.revocation if record.HasField("revocation") else None)
            except Refusal as r:
                log.warning("consent %s from the registry refused: %s", record.consent_id, r)
        self.directory = directory
        return directory

    async def _keep_registered(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.register_once()
                if not self.registered.is_set():
                    log.info("node %s registered with %s as %s", self.node_id, self.config.registry, self.endpoint)
                self.registered.set()
                delay = self.config.reregister_seconds
            except (grpc.aio.AioRpcError, Refusal) as e:
                detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
                log.warning("registering with %s failed (%s); retrying in %.1f s", self.config.registry, detail, delay)
                delay = min(max(delay * 2, 0.2), self.config.reregister_seconds)
            await asyncio.sleep(delay)

    async def stop(self, grace: float = 1.0) -> None:
        if self._register_task:
            self._register_task.cancel()
        if self.server:
            await self.server.stop(grace)
        self.store.close()
