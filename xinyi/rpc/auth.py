"""Authentication: the caller is whoever its mutual-TLS certificate names.

The interceptor reads the peer certificate that the TLS handshake verified against the
national root, takes the principal from its xinyi:// subjectAltName, and makes it available to
handlers through `caller()`. No request field ever says who the caller is.

On every call it also checks that certificate against the server's trust anchor: a certificate
revoked (or whose issuing CA was revoked) since the connection was made is refused from the
next call on, UNAUTHENTICATED with reason CERTIFICATE_REVOKED and the revocation's time, and the
refusal is audited. (The TLS stack knows no revocation lists; connections outlive revocations.)
"""

from __future__ import annotations

import contextvars
import functools
import uuid
from typing import Awaitable, Callable

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from xinyi.crypto.identity import Principal
from xinyi.crypto.pki import CertificateRevoked, PKIError, TrustAnchor, licence_of, principal_of
from xinyi.errors import Kind, Refusal
from xinyi.rpc.status import to_status
from xinyi.telemetry import current_trace_id

_caller: contextvars.ContextVar[Principal] = contextvars.ContextVar("xinyi_caller")


def caller() -> Principal:
    """The authenticated caller of the RPC being served."""
    return _caller.get()


# audit(caller, action, refusal, trace id): record a refusal made before the handler ran.
AuditRefusal = Callable[[Principal, str, Refusal, str], Awaitable[None]]


def action_of(method: str) -> str:
    """"/xinyi.v1.NodeService/Query" -> "Node/Query", as the audit entry's action."""
    service, _, name = method.strip("/").rpartition("/")
    return f"{service.rpartition('.')[2].removesuffix('Service')}/{name}"


@functools.lru_cache(maxsize=4096)
def _cert_from_pem(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


@functools.lru_cache(maxsize=4096)
def _principal_from_pem(pem: bytes) -> Principal:
    return principal_of(_cert_from_pem(pem))


def peer_principal(context: grpc.aio.ServicerContext) -> Principal | None:
    certs = context.auth_context().get("x509_pem_cert")
    if not certs:
        return None
    try:
        return _principal_from_pem(certs[0])
    except (PKIError, ValueError):
        return None


def peer_licence(context: grpc.aio.ServicerContext) -> str:
    """The financial licence number in the caller's verified mutual-TLS certificate ("" when none)."""
    certs = context.auth_context().get("x509_pem_cert")
    return _licence_from_pem(certs[0]) if certs else ""


@functools.lru_cache(maxsize=4096)
def _licence_from_pem(pem: bytes) -> str:
    return licence_of(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a xinyi certificate, or with one `trust` finds revoked or out of
    its validity (audited through `audit`); binds the caller for the handler."""

    def __init__(self, trust: TrustAnchor | None = None, audit: AuditRefusal | None = None) -> None:
        self.trust = trust
        self.audit = audit

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no streaming-request RPCs are served

    async def _authenticate(self, context, method: str) -> contextvars.Token:
        principal = peer_principal(context)
        if principal is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no xinyi client certificate: connect with mutual TLS using an identity from `xinyi pki issue`",
            )
        if self.trust is not None:
            try:
                self.trust.check_peer(_cert_from_pem(context.auth_context()["x509_pem_cert"][0]))
            except PKIError as e:
                reason = "CERTIFICATE_REVOKED" if isinstance(e, CertificateRevoked) else "CERTIFICATE_NOT_VALID"
                refusal = Refusal(Kind.UNAUTHENTICATED, reason, str(e))
                if self.audit is not None:
                    await self.audit(principal, action_of(method), refusal, current_trace_id() or uuid.uuid4().hex)
                await context.abort_with_status(to_status(refusal))
        return _caller.set(principal)

    def _wrap_unary(self, behavior, method: str):
        async def wrapper(request, context):
            token = await self._authenticate(context, method)
            try:
                return await behavior(request, context)
            finally:
                _caller.reset(token)

        return wrapper

    def _wrap_stream(self, behavior, method: str):
        async def wrapper(request, context):
            token = await self._authenticate(context, method)
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                _caller.reset(token)

        return wrapper
