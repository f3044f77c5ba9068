"""Infrastructure failures are not refusals, and tell the caller nothing of the internals.

Malformed bytes are INVALID_ARGUMENT; a store that went away (a PostgreSQL stopped under a
running node, a full disk) is UNAVAILABLE with a short, generic message, and the bank sees the
node as `unavailable`, never `denied`; any other failure is INTERNAL with a trace id. What
happened goes to the operator's log. Real servers, a real private PostgreSQL the test starts
and stops itself, a real (tiny) filesystem that fills up."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
import sqlalchemy.exc
from harness import BANK, CHENGDU_FIRM, SEED, Network

from testdb import Databases
from node.server import NodeConfig, NodeServer
from registry.routing import failed_outcome
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.rpc.channels import secure_channel
from xinyi.rpc.server import start_server
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import consent_pb2, query_pb2

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# What must never reach a caller: Python's and the drivers' vocabulary, paths, SQL.
INTERNALS = ("Traceback", "Error", "Exception", "sqlalchemy", "psycopg", "sqlite", ".py", "SELECT", "INSERT",
             "connection to server", "errno", "No space")


def _assert_nothing_internal(text: str, *also: str) -> None:
    for word in (*INTERNALS, *also):
        assert word.lower() not in text.lower(), f"{word!r} leaked into {text!r}"


# --- malformed input ------------------------------------------------------------------------------
UNDECODABLE = [
    b"\xff\xff\xff\xff",              # a field tag that is no varint
    b"\x0a\x40abc",                   # a length-delimited field longer than the message
]
INVALID_UTF8 = {  # a string field holding bytes that are no UTF-8
    "/xinyi.v1.ConsentService/GetConsentStatus": b"\x0a\x02\xc3\x28",
    "/xinyi.v1.AuditService/ListAuditRecords": b"\x1a\x02\xc3\x28",
}


async def test_undecodable_requests_are_invalid_argument_and_audited(network: Network):
    node = ("510100", network.node_addr("510100"), Principal(Role.NODE, "510100"), network.nodes["510100"].store,
            ["/xinyi.v1.NodeService/Query", "/xinyi.v1.NodeService/DeliverConsent", "/xinyi.v1.AuditService/GetEntries",
             "/xinyi.v1.AuditService/ListAuditRecords", "/xinyi.v1.NodeStatisticsService/Compute"])
    registry = ("registry", network.registry_addr, Role.REGISTRY, network.registry.store,
                ["/xinyi.v1.RegistryService/RouteQuery", "/xinyi.v1.ConsentService/GrantConsent",
                 "/xinyi.v1.ConsentService/GetConsentStatus", "/xinyi.v1.ModelService/SubmitModel"])
    for _, target, expect, store, methods in (node, registry):
        channel = network.channel(Role.BANK, BANK, target, expect).channel
        for method in methods:
            for raw in [*UNDECODABLE, *([INVALID_UTF8[method]] if method in INVALID_UTF8 else [])]:
                size = await asyncio.to_thread(store.audit_log_size)
                call = channel.unary_unary(method)  # no serializer: the bytes go out exactly as given
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(raw, timeout=10)
                f = RpcFailure.from_error(info.value)
                assert (f.code, f.reason) == ("INVALID_ARGUMENT", "MALFORMED_REQUEST"), (method, raw, f)
                assert f.fields[0][0] == "request" and "do not decode" in f.message
                _assert_nothing_internal(f.message)
                # Refused before its handler, and written to the log like any refusal.
                assert await asyncio.to_thread(store.audit_log_size) == size + 1
                (entry,) = await asyncio.to_thread(store.audit_entries, size, size + 1)
                assert "MALFORMED_REQUEST" in entry.record().reason


# --- a failure that is no refusal, on a real server ----------------------------------------------------
async def test_an_unexpected_failure_is_internal_and_an_unavailable_store_is_unavailable(tmp_path, caplog):
    root = RootCA.create()
    server_identity = root.issue(Principal(Role.NODE, "510100"))
    secret = "postgresql://xinyi:s3cret@db.internal.example:6543/credit"

    async def broken(request, context):
        raise RuntimeError(f"could not use {secret}")

    async def store_gone(request, context):
        raise sqlalchemy.exc.OperationalError("SELECT * FROM consents", {}, Exception(f"connection to {secret} refused"))

    def add(server: grpc.aio.Server) -> None:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                behavior, request_deserializer=consent_pb2.GetConsentStatusRequest.FromString,
                response_serializer=consent_pb2.GetConsentStatusResponse.SerializeToString)
            for name, behavior in (("Broken", broken), ("StoreGone", store_gone))
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Faults", handlers),))

    server, port, _ = await start_server(server_identity, "127.0.0.1:0", add, [])
    channel = secure_channel(root.issue(Principal(Role.BANK, BANK)), f"127.0.0.1:{port}", Principal(Role.NODE, "510100"))
    try:
        caplog.set_level(logging.ERROR, logger="xinyi.rpc")
        request = consent_pb2.GetConsentStatusRequest(consent_id="a" * 32).SerializeToString()
        failures = {}
        for name in ("Broken", "StoreGone"):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(f"/test.Faults/{name}")(request, timeout=10)
            failures[name] = RpcFailure.from_error(info.value)
        broken_failure, gone = failures["Broken"], failures["StoreGone"]
        assert (broken_failure.code, broken_failure.reason) == ("INTERNAL", "INTERNAL_ERROR")
        trace_id = dict(broken_failure.metadata)["trace_id"]
        assert len(trace_id) == 32 and trace_id in broken_failure.message
        assert (gone.code, gone.reason) == ("UNAVAILABLE", "STORE_UNAVAILABLE")
        assert gone.message == "the node's store is unavailable; try again later"
        for f in (broken_failure, gone):
            _assert_nothing_internal(f.message, "s3cret", "db.internal", "6543", "RuntimeError")
        # The operator's log has what happened, under the trace id.
        logged = "\n".join(r.getMessage() + "\n" + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
                           for r in caplog.records)
        assert trace_id in logged and secret in logged and "OperationalError" in logged
    finally:
        await channel.close()
        await server.stop(0)


def test_a_nodes_fault_is_unavailable_for_the_bank_and_only_its_refusal_is_denied():
    assert failed_outcome("PERMISSION_DENIED", refused=True) == query_pb2.NODE_OUTCOME_DENIED
    assert failed_outcome("INVALID_ARGUMENT", refused=True) == query_pb2.NODE_OUTCOME_DENIED
    for code in ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED", "RESOURCE_EXHAUSTED",
                 "PERMISSION_DENIED", "CANCELLED"):
        # Without the node's own reason (a transport failure, a proxy, a crash), nobody refused.
        assert failed_outcome(code, refused=False) == query_pb2.NODE_OUTCOME_UNAVAILABLE, code
    assert failed_outcome("DEADLINE_EXCEEDED", refused=False) == query_pb2.NODE_OUTCOME_TIMEOUT


# --- the node's store goes away ------------------------------------------------------------------------
async def _network_with_node_on(tmp_path, node_url: str) -> Network:
    """Registry and the Sichuan node on SQLite; the Chengdu node on `node_url`."""
    net = Network(RootCA.create(), tmp_path, Databases("sqlite", tmp_path))
    await net.start_registry()
    node = NodeServer(NodeConfig(net.identity(Role.NODE, "510100"), "127.0.0.1:0", node_url, registry=net.registry_addr))
    await asyncio.to_thread(node.store.create_schema)
    await asyncio.to_thread(node.store.add_records, list(SEED["510100"]), now_ms())
    await node.start()
    await asyncio.wait_for(node.registered.wait(), 10)
    net.nodes["510100"] = node
    await net.start_node("510000", SEED["510000"])
    await net.register_institution(BANK)  # consents may name only known institutions
    return net


def _statuses(result) -> dict[str, tuple[str, str | None]]:
    return {n.node: (n.status, n.error) for n in result.nodes}


async def test_a_node_whose_postgresql_goes_away_is_unavailable_not_denied(tmp_path, caplog, private_postgres):
    url, port, stop, start = private_postgres.url(), private_postgres.port, private_postgres.stop, private_postgres.start
    net = await _network_with_node_on(tmp_path, url)
    try:
        consent = await net.grant(categories=("registration", "tax"))
        result = await net.bank().query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent)
        assert _statuses(result)["510100"][0] == "ok"

        await asyncio.to_thread(stop)  # the node's database goes away under it
        caplog.set_level(logging.ERROR, logger="xinyi.rpc")
        consent = await net.grant(categories=("registration", "tax"))
        result = await net.bank().query(CHENGDU_FIRM, ["registration", "tax"], "credit_assessment", consent)
        status, error = _statuses(result)["510100"]
        assert status == "unavailable", result.to_json()
        assert error == "the node's store is unavailable; try again later"
        _assert_nothing_internal(error, "127.0.0.1", str(port), "postgres")
        assert _statuses(result)["510000"][0] == "ok"  # the other node answered as ever
        # Asked directly, the node says the same: UNAVAILABLE, nothing of its internals.
        from xinyi.client import ClientError

        with pytest.raises(ClientError) as info:
            await net.bank().query_node(net.node_addr("510100"), "510100", CHENGDU_FIRM, ["registration"],
                                        "credit_assessment", consent)
        assert (info.value.failure.code, info.value.failure.reason) == ("UNAVAILABLE", "STORE_UNAVAILABLE")
        _assert_nothing_internal(str(info.value), "127.0.0.1", str(port))
        # The operator's log says what happened.
        assert any(r.exc_info and "OperationalError" in repr(r.exc_info[1]) for r in caplog.records)

        await asyncio.to_thread(start)  # back: the node answers again, nothing to restart
        consent = await net.grant(categories=("registration",))
        for _ in range(50):
            result = await net.bank().query(CHENGDU_FIRM, ["registration"], "credit_assessment", consent)
            if _statuses(result)["510100"][0] == "ok":
                break
            consent = await net.grant(categories=("registration",))
            await asyncio.sleep(0.2)
        assert _statuses(result)["510100"][0] == "ok", result.to_json()
    finally:
        await net.stop()


async def test_a_node_whose_disk_is_full_is_unavailable_not_denied(tmp_path, small_disk):
    disk = small_disk.path
    net = await _network_with_node_on(tmp_path, f"sqlite:///{disk / 'node.db'}")
    try:
        consent = await net.grant(categories=("registration",))
        small_disk.fill()
        result = await net.bank().query(CHENGDU_FIRM, ["registration"], "credit_assessment", consent)
        status, error = _statuses(result)["510100"]
        assert status == "unavailable", result.to_json()
        assert error == "the node's store is unavailable; try again later"
        _assert_nothing_internal(error, str(disk))
        small_disk.free()  # space again: the node answers, nothing to restart
        consent = await net.grant(categories=("registration",))
        result = await net.bank().query(CHENGDU_FIRM, ["registration"], "credit_assessment", consent)
        assert _statuses(result)["510100"][0] == "ok", result.to_json()
    finally:
        await net.stop()
