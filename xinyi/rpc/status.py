"""Turning refusals into gRPC statuses with google.rpc details, and back again for clients.

A refusal leaves as the fitting status code, a one-line message naming the field and reason,
and google.rpc.Status details (ErrorInfo with a stable reason, BadRequest field violations).
Never a stack trace.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from xinyi.errors import Kind, Refusal

DOMAIN = "xinyi.network"


def to_status(refusal: Refusal) -> grpc.Status:
    details = []
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=refusal.reason,
            domain=DOMAIN,
            metadata={**refusal.metadata, **({"policy_ids": ",".join(refusal.policy_ids)} if refusal.policy_ids else {})},
        )
    )
    details.append(info)
    if refusal.violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in refusal.violations
                ]
            )
        )
        details.append(bad)
    status = status_pb2.Status(code=getattr(code_pb2, refusal.kind.value), message=refusal.message, details=details)
    return rpc_status.to_status(status)


def refusals_as_status(method):
    """Servicer methods raise Refusal; the caller receives it as a status with details."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except Refusal as refusal:
            await context.abort_with_status(to_status(refusal))

    return wrapper


# What BoringSSL says when this side refused the peer's certificate, and what a person should read.
_TLS_FAILURES = (
    ("certificate has expired", "TLS_PEER_CERT_EXPIRED",
     "the server's certificate has expired; its operator must renew it (`xinyi pki renew`)"),
    ("certificate is not yet valid", "TLS_PEER_CERT_NOT_YET_VALID",
     "the server's certificate is not valid yet; check the clocks of both machines"),
    ("unable to get local issuer certificate", "TLS_PEER_CERT_UNTRUSTED",
     "the server's certificate was not issued under the national root this identity trusts "
     "(a server of another network, or an identity from another root)"),
    ("certificate revoked", "TLS_PEER_CERT_REVOKED", "the server's certificate has been revoked"),
    ("Hostname", "TLS_PEER_WRONG_NAME",
     "the server's certificate does not name the server this client expected (another role or id)"),
)


def explain_tls_failure(error: grpc.aio.AioRpcError | grpc.RpcError) -> tuple[str, str] | None:
    """(reason, message) when a call failed because this side refused the peer's certificate;
    None for any other failure. gRPC reports these as UNAVAILABLE, which reads as "is the server
    running?" when the server is running and its certificate is the problem."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    text = f"{error.details() or ''} {error.debug_error_string() or ''}"
    if "CERTIFICATE_VERIFY_FAILED" not in text and "Tls handshake failed" not in text:
        return None
    for marker, reason, message in _TLS_FAILURES:
        if marker in text:
            return reason, f"TLS handshake refused: {message}"
    return "TLS_HANDSHAKE_FAILED", ("TLS handshake refused: the certificates of this client and the server do not "
                                    "verify against each other's root")


@dataclass(frozen=True)
class RpcFailure:
    """What a client learns from a failed call: code name, message, machine reason, fields."""

    code: str
    message: str
    reason: str = ""
    fields: tuple[tuple[str, str], ...] = ()
    policy_ids: tuple[str, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_error(cls, error: grpc.aio.AioRpcError | grpc.RpcError) -> "RpcFailure":
        code = error.code().name if error.code() else "UNKNOWN"
        message = error.details() or ""
        tls = explain_tls_failure(error)
        if tls is not None:
            return cls(code, tls[1], tls[0])
        reason, fields, policy_ids, metadata = "", (), (), ()
        try:
            status = rpc_status.from_call(error)
        except Exception:  # noqa: BLE001 - malformed details from a peer are ignored
            status = None
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                    policy_ids = tuple(p for p in info.metadata.get("policy_ids", "").split(",") if p)
                    metadata = tuple(sorted(info.metadata.items()))
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields = tuple((v.field, v.description) for v in bad.field_violations)
        return cls(code, message, reason, fields, policy_ids, metadata)


def refusal_from_failure(failure: RpcFailure) -> Refusal:
    """Rebuild a refusal from a peer's failure (the registry relays a node's refusal)."""
    from xinyi.errors import Violation

    try:
        kind = Kind(failure.code)
    except ValueError:
        kind = Kind.UNAVAILABLE
    return Refusal(kind, failure.reason or failure.code, failure.message,
                   tuple(Violation(f, d) for f, d in failure.fields), failure.policy_ids)
