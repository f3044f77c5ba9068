"""What every RPC goes through around its handler, once for all services of a server.

Before the handler, on the caller's exact request:
- bytes that do not decode as the request message are refused: INVALID_ARGUMENT
  (MALFORMED_REQUEST). grpc.aio would fail before any handler ran and answer UNKNOWN with the
  parser's text, so the request deserializer is wrapped to hand the handler a marker instead;
- a field over its size limit (xinyi.rpc.limits) is refused: INVALID_ARGUMENT (TOO_LARGE),
  naming the field and the limit, before any signature check or store access.
Both refusals are written to the server's audit log (with bounded fields, like every entry).

After it, whatever escaped:
- a Refusal becomes its status (servicers normally do that themselves);
- the store being unavailable (the database gone, the disk full) becomes UNAVAILABLE with a
  short, generic message: no host, port, class name or SQL reaches the caller;
- anything else becomes INTERNAL with a generic message and a trace id.
What happened goes to the operator's log, with the exception, under that trace id.
"""

from __future__ import annotations

import logging
import uuid
import grpc
from google.protobuf.message import Message

from xinyi.errors import Refusal, bounded, is_store_unavailable
from xinyi.rpc.auth import AuditRefusal, action_of, caller
from xinyi.rpc.limits import check_request
from xinyi.rpc.status import fault_status, to_status
from xinyi.telemetry import current_trace_id

log = logging.getLogger("xinyi.rpc")



class _Undecodable:
    """Stands in for a request whose bytes did not decode; the guard refuses it."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _tolerant(deserializer, type_name: str):
    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any parser complaint means malformed input
            return _Undecodable(type_name)

    return deserialize


def _type_name(deserializer) -> str:
    cls = getattr(deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "request"


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Install after AuthInterceptor (so the caller is known). `who` names the server in
    messages ("node", "registry"); `audit` records refusals made here."""

    def __init__(self, who: str, audit: AuditRefusal | None = None) -> None:
        self.who = who
        self.audit = audit

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler  # no streaming-request RPCs are served but reflection's, which has no store
        method = handler_call_details.method
        deserializer = handler.request_deserializer
        if deserializer is not None:
            deserializer = _tolerant(deserializer, _type_name(deserializer))
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=deserializer, response_serializer=handler.response_serializer)
        return grpc.unary_stream_rpc_method_handler(
            self._wrap_stream(handler.unary_stream, method),
            request_deserializer=deserializer, response_serializer=handler.response_serializer)

    def _wrap_unary(self, behavior, method: str):
        async def wrapper(request, context):
            trace_id = current_trace_id() or uuid.uuid4().hex
            try:
                await self._admit(request, method, trace_id)
                return await behavior(request, context)
            except Exception as error:  # noqa: BLE001 - every failure leaves as a status
                await self._fail(error, context, method, trace_id)

        return wrapper

    def _wrap_stream(self, behavior, method: str):
        async def wrapper(request, context):
            trace_id = current_trace_id() or uuid.uuid4().hex
            try:
                await self._admit(request, method, trace_id)
                async for item in behavior(request, context):
                    yield item
            except Exception as error:  # noqa: BLE001 - every failure leaves as a status
                await self._fail(error, context, method, trace_id)

        return wrapper

    async def _admit(self, request, method: str, trace_id: str) -> None:
        """Refuse (and audit) a request that did not decode or has a field over its limit."""
        try:
            if isinstance(request, _Undecodable):
                raise Refusal.invalid("request", f"is not a valid {request.type_name} message (the bytes do not decode)",
                                      "MALFORMED_REQUEST")
            if isinstance(request, Message):  # (a raw-bytes handler, like the benchmark's echo, has nothing to check)
                check_request(request)
        except Refusal as refusal:
            if self.audit is not None:
                await self.audit(caller(), action_of(method), refusal, trace_id)
            raise

    async def _fail(self, error: Exception, context, method: str, trace_id: str) -> None:
        if isinstance(error, grpc.aio.AbortError):
            raise error  # the handler already chose its status
        if isinstance(error, Refusal):
            await context.abort_with_status(to_status(error))
        if is_store_unavailable(error):
            log.error("%s failed (trace %s): the store is unavailable", method, trace_id, exc_info=error)
            await context.abort_with_status(fault_status(
                grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE",
                f"the {self.who}'s store is unavailable; try again later", {"trace_id": trace_id}))
        log.error("%s failed (trace %s): %s", method, trace_id, bounded(error.__class__.__name__), exc_info=error)
        await context.abort_with_status(fault_status(
            grpc.StatusCode.INTERNAL, "INTERNAL_ERROR",
            f"the {self.who} could not complete the request; the operator can find what happened under trace id "
            f"{trace_id}", {"trace_id": trace_id}))
