"""Starting a gRPC server the way every member of the network does: mutual TLS, the tracing,
auth and guard interceptors, gRPC health and reflection."""

from __future__ import annotations

from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from xinyi.audit.entry import AuditEntry
from xinyi.crypto.identity import Principal
from xinyi.crypto.pki import Identity, PKIError
from xinyi.errors import Refusal
from xinyi.rpc.auth import AuthInterceptor
from xinyi.rpc.channels import MAX_MESSAGE_BYTES, MAX_RESPONSE_BYTES, server_credentials
from xinyi.rpc.guard import GuardInterceptor


class ServerStartError(Exception):
    pass


class HealthServicer(health.aio.HealthServicer):
    """grpc.health.v1 with List, which grpcio-health-checking declares but does not implement:
    every service's status in one call (`xinyi health --target`)."""

    async def List(self, request, context):
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status) for name, status in dict(self._server_status).items()})


def server_options(reuse_port: bool = False) -> list[tuple]:
    """Every server's gRPC options (also the benchmark's bare baseline's, bench/echo.py)."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # Larger than a request may be: one audit entry written before entries were bounded
        # must still be servable to an auditor (xinyi.audit.desk pages by bytes).
        ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


async def start_server(
    identity: Identity,
    listen: str,
    add_services: Callable[[grpc.aio.Server], None],
    service_names: Iterable[str],
    *,
    reuse_port: bool = False,
    audit_log=None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Start serving on `listen` (host:port; port 0 picks a free one). Returns server, port, health.

    `reuse_port`: worker processes of one node share the port (SO_REUSEPORT); otherwise a second
    server on a port in use fails instead of silently splitting the traffic.
    `audit_log`: where requests refused before their handler (undecodable, a field over its
    limit) are recorded; the server's own log (an AuditLog, or a worker's RemoteAuditLog)."""

    async def audit(caller: Principal, action: str, refusal: Refusal, trace_id: str) -> None:
        await audit_log.append(AuditEntry.of(audit_log.clock(), caller, action, refusal, allowed="", trace_id=trace_id))

    guard = GuardInterceptor(str(identity.principal.role), audit if audit_log is not None else None)
    # Every call's peer certificate is checked against what this identity trusts, whose
    # revocation lists the signed directory keeps current.
    auth = AuthInterceptor(identity.trust(), audit if audit_log is not None else None)
    server = grpc.aio.server(interceptors=[aio_server_interceptor(), auth, guard], options=server_options(reuse_port))
    add_services(server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        credentials = server_credentials(identity)
    except PKIError as e:
        raise ServerStartError(str(e)) from None
    try:
        port = server.add_secure_port(listen, credentials)
    except RuntimeError as e:
        raise ServerStartError(f"cannot listen on {listen}: {e}; is another process using the port?") from None
    if port == 0:
        raise ServerStartError(f"cannot listen on {listen}; is another process using the port?")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer
