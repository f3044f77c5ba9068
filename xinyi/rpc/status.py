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
