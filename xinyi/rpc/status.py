"""Turning refusals into gRPC statuses with google.rpc details, and back again for clients.

A refusal leaves as the fitting status code, a one-line message naming the field and reason,
and google.rpc.Status details (ErrorInfo with a stable reason, BadRequest field violations).
Never a stack trace. The reasons are the values of ErrorReason (proto/xinyi/v1/errors.proto);
a client reads them as `RpcFailure.error_reason`, a `Reason`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from xinyi.errors import MESSAGE_CHARS, Kind, Reason, Refusal, Violation, bounded, checked_reason, reason_of

DOMAIN = "xinyi.network"
# The codes a refusal leaves with: the server decided no. Anything else is a fault.
REFUSAL_CODES = frozenset(kind.value for kind in Kind) - {Kind.UNAVAILABLE.value}
METADATA_CHARS = 16 * 1024


def _info(reason: str, metadata: dict[str, str]) -> any_pb2.Any:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))
    return info


def fault_status(code: grpc.StatusCode, reason: str | Reason, message: str, metadata: dict[str, str]) -> grpc.Status:
    """A server's fault (not a refusal) as a status: its code, a generic message, ErrorInfo."""
    status = status_pb2.Status(code=code.value[0], message=message, details=[_info(checked_reason(reason), metadata)])
    return rpc_status.to_status(status)


def to_status(refusal: Refusal) -> grpc.Status:
    details = [_info(refusal.reason, {**refusal.metadata,
                                      **({"policy_ids": ",".join(refusal.policy_ids)} if refusal.policy_ids else {})})]
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
    ("certificate has expired", Reason.TLS_PEER_CERT_EXPIRED.name,
     "the server's certificate has expired; its operator must renew it (`xinyi pki renew`)"),
    ("certificate is not yet valid", Reason.TLS_PEER_CERT_NOT_YET_VALID.name,
     "the server's certificate is not valid yet; check the clocks of both machines"),
    ("unable to get local issuer certificate", Reason.TLS_PEER_CERT_UNTRUSTED.name,
     "the server's certificate was not issued under the national root this identity trusts "
     "(a server of another network, or an identity from another root)"),
    ("certificate revoked", Reason.TLS_PEER_CERT_REVOKED.name, "the server's certificate has been revoked"),
    ("Hostname", Reason.TLS_PEER_WRONG_NAME.name,
     "the server's certificate does not name the server this client expected (another role or id, or "
     "a host name it was not issued for)"),
)


def explain_tls_failure(error: grpc.aio.AioRpcError | grpc.RpcError) -> tuple[str, str] | None:
    """(reason, message) when a call failed because this side refused the peer's certificate;
    None for any other failure. gRPC reports these as UNAVAILABLE, which reads as "is the server
    running?" when the server is running and its certificate is the problem."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    text = f"{error.details() or ''} {error.debug_error_string() or ''}"
    if not any(m in text for m in ("CERTIFICATE_VERIFY_FAILED", "Tls handshake failed", "Hostname Verification")):
        return None
    for marker, reason, message in _TLS_FAILURES:
        if marker in text:
            return reason, f"TLS handshake refused: {message}"
    return Reason.TLS_HANDSHAKE_FAILED.name, ("TLS handshake refused: the certificates of this client and the server "
                                              "do not verify against each other's root")


@dataclass(frozen=True)
class RpcFailure:
    """What a client learns from a failed call: code name, message, machine reason, fields."""

    code: str
    message: str
    reason: str = ""
    fields: tuple[tuple[str, str], ...] = ()
    policy_ids: tuple[str, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def error_reason(self) -> Reason:
        """The reason as the contract's enum, to switch on: UNSPECIFIED when the peer sent none
        (a transport failure) or one this version does not know (a newer peer's; `reason` keeps
        its name)."""
        return reason_of(self.reason)

    @property
    def refused(self) -> bool:
        """The peer decided no (a refusal, with its reason), as opposed to failing: its store
        down, an internal error, the transport (which sends no reason)."""
        return self.code in REFUSAL_CODES and bool(self.reason)

    @classmethod
    def from_error(cls, error: grpc.aio.AioRpcError | grpc.RpcError) -> "RpcFailure":
        code = error.code().name if error.code() else "UNKNOWN"
        message = bounded(error.details() or "", MESSAGE_CHARS)  # a peer's text, relayed or logged
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
                    reason = bounded(info.reason)
                    policy_ids = tuple(p for p in info.metadata.get("policy_ids", "").split(",") if p)
                    # Machine-readable (e.g. a signed note, newlines and all): kept exact, only bounded.
                    metadata = tuple(sorted((k[:METADATA_CHARS], v[:METADATA_CHARS]) for k, v in info.metadata.items()))
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields = tuple((bounded(v.field), bounded(v.description, MESSAGE_CHARS)) for v in bad.field_violations)
        return cls(code, message, reason, fields, policy_ids, metadata)


def refusal_from_failure(failure: RpcFailure) -> Refusal:
    """Rebuild a refusal from a node's failure, for the registry to relay: the node's reason as it
    came (a newer node's too), or NODE_UNAVAILABLE, with the call's code in metadata node_code,
    when the node sent none (unreachable, timed out, not serving the RPC)."""
    # Only the peer's own refusal keeps its kind; its fault, or the transport's, is UNAVAILABLE.
    kind = Kind(failure.code) if failure.refused else Kind.UNAVAILABLE
    violations = tuple(Violation(f, d) for f, d in failure.fields)
    if not failure.reason:
        return Refusal(kind, Reason.NODE_UNAVAILABLE.name, failure.message, violations, failure.policy_ids,
                       metadata={"node_code": failure.code})
    return Refusal(kind, failure.reason, failure.message, violations, failure.policy_ids, relayed=True)
