"""Authentication: the caller is whoever its mutual-TLS certificate names.

The interceptor reads the peer certificate that the TLS handshake verified against the
national root, takes the principal from its xinyi:// subjectAltName, and makes it available to
handlers through `caller()`. No request field ever says who the caller is.
"""

from __future__ import annotations

import contextvars
import functools

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from xinyi.crypto.identity import Principal
from xinyi.crypto.pki import PKIError, licence_of, principal_of

_caller: contextvars.ContextVar[Principal] = contextvars.ContextVar("xinyi_caller")


def caller() -> Principal:
    """The authenticated caller of the RPC being served."""
    return _caller.get()


@functools.lru_cache(maxsize=4096)
def _principal_from_pem(pem: bytes) -> Principal:
    return principal_of(x509.load_pem_x509_certificate(pem))


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
    """Rejects calls without a xinyi certificate; binds the caller for the handler."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no streaming-request RPCs are served

    @staticmethod
    async def _authenticate(context) -> contextvars.Token:
        principal = peer_principal(context)
        if principal is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no xinyi client certificate: connect with mutual TLS using an identity from `xinyi pki issue`",
            )
        return _caller.set(principal)

    def _wrap_unary(self, behavior):
        async def wrapper(request, context):
            token = await self._authenticate(context)
            try:
                return await behavior(request, context)
            finally:
                _caller.reset(token)

        return wrapper

    def _wrap_stream(self, behavior):
        async def wrapper(request, context):
            token = await self._authenticate(context)
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                _caller.reset(token)

        return wrapper
