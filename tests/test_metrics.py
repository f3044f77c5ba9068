"""--metrics-listen: each service's Prometheus metrics, scraped over HTTP after real queries on a
real network (mutual TLS on loopback, both back ends)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import urllib.request

import pytest
from harness import BANK, CHENGDU_FIRM, SEED, XINJIANG_FIRM, Network, start_network
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from processes import Proc, free_port, network_identities, seed_node, wait_registered
from prometheus_client.parser import text_string_to_metric_families
from test_cli import xinyi

from node.query import STEPS as NODE_STEPS
from registry.routing import STEPS as ROUTE_STEPS
from xinyi.client import ClientError, EnterpriseClient
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.metrics import MetricsError, parse_listen

CATEGORIES = ["registration", "tax"]
NO_CONSENT = "0" * 32


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """GET /metrics: {(sample name, its labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
async def measured(databases, tmp_path):
    """The network of the other tests, every server serving its metrics on a free port."""
    net = await start_network(tmp_path, databases, nodes=("510100", "510000"), metrics_listen="127.0.0.1:0")
    yield net
    await net.stop()


async def test_queries_answered_and_refused_move_the_counters_and_the_step_histograms(measured: Network):
    net = measured
    node, registry = net.nodes["510100"], net.registry
    assert node.metrics_port and registry.metrics_port and node.metrics_port != registry.metrics_port
    before = await asyncio.to_thread(scrape, node.metrics_port)
    assert value(before, "xinyi_queries_total", outcome="answered", reason="") is None  # nothing asked yet

    consent = await net.grant()
    bank = net.bank()
    answered = await bank.query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent)
    assert {v.node: v.status for v in answered.nodes}["510100"] == "ok"
    refused = await bank.query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", NO_CONSENT)
    assert {v.node: v.status for v in refused.nodes}["510100"] == "denied"
    with pytest.raises(ClientError) as nowhere:  # refused by the registry itself
        await bank.query(XINJIANG_FIRM, CATEGORIES, "credit_assessment", consent)
    assert nowhere.value.failure.reason == "NO_NODE_FOR_AREA"

    m = await asyncio.to_thread(scrape, node.metrics_port)
    assert value(m, "xinyi_queries_total", outcome="answered", reason="") == 1
    assert value(m, "xinyi_queries_total", outcome="refused", reason="CONSENT_NOT_FOUND") == 1
    assert [k for k in m if k[0] == "xinyi_queries_total" and dict(k[1])["outcome"] not in ("answered", "refused")] == []
    assert value(m, "xinyi_node_query_seconds_count", outcome="answered") == 1
    assert value(m, "xinyi_node_query_seconds_count", outcome="refused") == 1
    # Every step of the answered query ran once; the refused one stopped at check_consent, then was audited.
    for step in NODE_STEPS:
        ran = 2 if NODE_STEPS.index(step) <= NODE_STEPS.index("check_consent") or step == "audit" else 1
        assert value(m, "xinyi_node_query_step_seconds_count", step=step) == ran, step
        assert value(m, "xinyi_node_query_step_seconds_sum", step=step) > 0, step
        assert value(m, "xinyi_node_query_step_seconds_bucket", step=step, le="+Inf") == ran, step
    total = value(m, "xinyi_node_query_seconds_sum", outcome="answered")
    assert 0 < total < 10

    r = await asyncio.to_thread(scrape, registry.metrics_port)
    assert value(r, "xinyi_queries_total", outcome="routed", reason="") == 2  # the node's refusal is that node's outcome
    assert value(r, "xinyi_queries_total", outcome="refused", reason="NO_NODE_FOR_AREA") == 1
    assert value(r, "xinyi_registry_route_seconds_count", outcome="routed") == 2
    assert value(r, "xinyi_registry_route_seconds_count", outcome="refused") == 1
    assert value(r, "xinyi_registry_route_step_seconds_count", step="fan_out") == 2
    assert value(r, "xinyi_registry_route_step_seconds_count", step="choose_nodes") == 3
    # Router._audit, labelled "audit": a routed query's forwarding and outcome entries, the refused one's entry.
    assert value(r, "xinyi_registry_route_step_seconds_count", step="audit") == 2 * 2 + 1
    assert {dict(k[1])["step"] for k in r if k[0] == "xinyi_registry_route_step_seconds_count"} == \
        {s.strip("_") for s in ROUTE_STEPS}
    assert any(k[0] == "target_info" and dict(k[1]).get("service_name") == "xinyi-registry-national" for k in r)
    assert any(k[0] == "target_info" and dict(k[1]).get("service_name") == "xinyi-node-510100" for k in m)


async def test_audit_log_consent_sync_pool_and_certificate_gauges(measured: Network):
    net = measured
    node = net.nodes["510100"]
    consent = await net.grant()
    await net.bank().query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent)
    m = await asyncio.to_thread(scrape, node.metrics_port)

    assert value(m, "xinyi_audit_log_entries") == node.audit_log.tree.size > 0
    assert value(m, "xinyi_audit_commit_seconds_count") >= 1  # at least the query's entry was committed
    assert value(m, "xinyi_audit_commit_seconds_sum") > 0

    lag = value(m, "xinyi_consent_sync_lag_seconds")
    assert lag is not None and 0 <= lag < node.config.consent_freshness_seconds  # synced every 2 s

    pool = node.store.engine.pool
    assert value(m, "xinyi_db_pool_size") == pool.size()
    assert 0 <= value(m, "xinyi_db_pool_checked_out") <= pool.size() + pool._max_overflow

    now = dt.datetime.now(dt.timezone.utc)
    for name, cert in (("tls", node.identity.tls_cert), ("signing", node.identity.signing_cert)):
        expected = (cert.not_valid_after_utc - now).total_seconds() / 86400
        assert value(m, "xinyi_certificate_expiry_days", certificate=name) == pytest.approx(expected, abs=0.01), name

    r = await asyncio.to_thread(scrape, net.registry.metrics_port)
    assert value(r, "xinyi_audit_log_entries") == net.registry.audit_log.tree.size
    assert value(r, "xinyi_consent_sync_lag_seconds") is None  # a node's figure only
    assert value(r, "xinyi_certificate_expiry_days", certificate="tls") == pytest.approx(
        (net.registry.identity.tls_cert.not_valid_after_utc - now).total_seconds() / 86400, abs=0.01)


async def test_a_certificate_near_expiry_shows_its_few_days(databases, tmp_path):
    """The gauge follows the certificate, not a constant: an identity issued for 3 days shows ~3."""
    net = Network(RootCA.create(), tmp_path, databases)
    now = dt.datetime.now(dt.timezone.utc)
    net._ids[Principal(Role.REGISTRY, "national")] = net.root.issue(
        Principal(Role.REGISTRY, "national"), not_before=now - dt.timedelta(hours=1), not_after=now + dt.timedelta(days=3))
    await net.start_registry(metrics_listen="127.0.0.1:0")
    try:
        r = await asyncio.to_thread(scrape, net.registry.metrics_port)
        assert value(r, "xinyi_certificate_expiry_days", certificate="signing") == pytest.approx(3, abs=0.01)
    finally:
        await net.stop()


async def test_without_the_flag_nothing_listens_and_nothing_is_wrapped(network: Network):
    node = network.nodes["510100"]
    assert node.metrics is None and node.metrics_port == 0 and network.registry.metrics is None
    # The steps are the class's own methods, not wrappers.
    assert node.queries.answer.__func__ is type(node.queries).answer
    assert node.queries.fetch.__func__ is type(node.queries).fetch


def test_metrics_listen_values():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", ":9464", "localhost:", "localhost:http", "127.0.0.1:70000", "127.0.0.1:-1", ""):
        with pytest.raises(MetricsError, match="HOST:PORT"):
            parse_listen(bad)


async def test_a_bad_metrics_listen_is_a_usage_error_naming_the_flag(tmp_path):
    root = RootCA.create()
    registry = root.issue(Principal(Role.REGISTRY, "national")).save(tmp_path / "ids")
    node = root.issue(Principal(Role.NODE, "510100")).save(tmp_path / "ids")
    db = f"sqlite:///{tmp_path}/r.db"
    code, out, err = await xinyi("registry", "serve", "--identity", registry, "--listen", "127.0.0.1:0", "--db", db,
                                 "--metrics-listen", "9464")
    assert code == 2 and "--metrics-listen" in err and "'9464' is not HOST:PORT" in err and out == ""
    code, out, err = await xinyi("node", "serve", "--identity", node, "--listen", "127.0.0.1:0", "--db", db,
                                 "--metrics-listen", "localhost:http")
    assert code == 2 and "--metrics-listen" in err and "HOST:PORT" in err
    code, out, err = await xinyi("node", "serve", "--identity", node, "--listen", "127.0.0.1:7000", "--db", db,
                                 "--workers", "2", "--metrics-listen", "127.0.0.1:0")
    assert code == 2 and "--metrics-listen" in err and "--workers" in err
    # A port another process holds: the same flag is named, the registry does not start.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await xinyi("registry", "serve", "--identity", registry, "--listen", "127.0.0.1:0",
                                     "--db", db, "--metrics-listen", f"127.0.0.1:{port}")
    assert code == 2 and f"--metrics-listen: cannot listen on 127.0.0.1:{port}" in err, err
    assert "listening on port" not in out


# --- real processes: `xinyi registry serve` / `xinyi node serve` with --metrics-listen and OTLP ----
class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A tiny OpenTelemetry collector: keeps every span exported to it over OTLP/gRPC."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []  # (service.name, Span)

    async def Export(self, request, context):
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}.get("service.name", "")
            for scope in resource_spans.scope_spans:
                self.spans += [(service, span) for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def of(self, service: str, name_ends: str) -> list:
        return [span for s, span in self.spans if s == service and span.name.endswith(name_ends)]


def attribute_text(span) -> str:
    """Every attribute value of a span and of its events, as text (bytes as hex)."""
    def text(value) -> str:
        kind = value.WhichOneof("value")
        if kind == "array_value":
            return " ".join(text(v) for v in value.array_value.values)
        if kind == "kvlist_value":
            return " ".join(text(kv.value) for kv in value.kvlist_value.values)
        got = getattr(value, kind) if kind else ""
        return got.hex() if isinstance(got, bytes) else str(got)

    attributes = [*span.attributes, *(a for event in span.events for a in event.attributes)]
    return " ".join(f"{a.key}={text(a.value)}" for a in attributes)


@pytest.mark.timeout(120)
async def test_served_processes_expose_metrics_and_send_their_spans_to_an_otlp_collector(tmp_path, monkeypatch):
    import grpc

    logs = tmp_path / "logs"
    logs.mkdir()
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}", "OTEL_BSP_SCHEDULE_DELAY": "200"}

    ids, dirs = network_identities(tmp_path / "certs")
    node_db, registry_db = f"sqlite:///{tmp_path}/node.db", f"sqlite:///{tmp_path}/registry.db"
    seed_node(node_db)
    registry, node_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    node_metrics, registry_metrics = free_port(), free_port()
    reg = Proc("registry", ["registry", "serve", "--identity", str(dirs["registry"]), "--listen", registry,
                            "--db", registry_db, "--metrics-listen", f"127.0.0.1:{registry_metrics}"], logs, env=otlp)
    node = Proc("node", ["node", "serve", "--identity", str(dirs["node"]), "--listen", node_addr, "--registry", registry,
                         "--db", node_db, "--metrics-listen", f"127.0.0.1:{node_metrics}"], logs, env=otlp)
    procs = [reg, node]
    try:
        reg.start()
        node.start()
        await wait_registered(ids["bank"], ids["auditor"], registry, node_addr, procs, timeout=60)
        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            consent = (await enterprise.grant(BANK, "credit_assessment", CATEGORIES, 30)).consent_id
        with monkeypatch.context() as env:  # the bank's `xinyi query` exports its spans too
            for k, v in otlp.items():
                env.setenv(k, v)
            code, out, err = await xinyi("query", "--identity", dirs["bank"], "--registry", registry, "--uscc",
                                         CHENGDU_FIRM, "--purpose", "credit_assessment", "--categories",
                                         ",".join(CATEGORIES), "--consent", consent, "--json")
        assert code == 0, err
        answer = json.loads(out)
        assert [n["status"] for n in answer["nodes"]] == ["ok"]

        m = await asyncio.to_thread(scrape, node_metrics)
        assert value(m, "xinyi_queries_total", outcome="answered", reason="") == 1
        assert value(m, "xinyi_node_query_step_seconds_count", step="sign_and_seal") == 1
        assert value(m, "xinyi_certificate_expiry_days", certificate="tls") == pytest.approx(
            (ids["node"].tls_cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400,
            abs=0.01)
        r = await asyncio.to_thread(scrape, registry_metrics)
        assert value(r, "xinyi_queries_total", outcome="routed", reason="") == 1

        # The spans of that query reach the collector, from each service under its own name, one trace.
        for _ in range(100):
            if (collector.of("xinyi-node-510100", "NodeService/Query")
                    and collector.of("xinyi-registry-national", "RegistryService/RouteQuery")):
                break
            await asyncio.sleep(0.1)
        (node_span,) = collector.of("xinyi-node-510100", "NodeService/Query")
        (route_span,) = collector.of("xinyi-registry-national", "RegistryService/RouteQuery")
        bank_spans = collector.of("xinyi-cli", "RegistryService/RouteQuery")
        assert bank_spans, "the bank's client span was not exported"
        assert node_span.trace_id == route_span.trace_id == bank_spans[0].trace_id
        assert "rpc.method=Query" in attribute_text(node_span)  # the attributes are read, as text
        # Ids, names and status codes; never what was asked for or answered, nor keys.
        record_values = [str(v) for r in SEED["510100"] for v in r.fields.values()] + [r.source for r in SEED["510100"]]
        for service, span in collector.spans:
            text = attribute_text(span)
            assert "-----BEGIN" not in text and "PRIVATE" not in text, (service, span.name)
            assert not [v for v in record_values if v in text], (service, span.name, text)
    except BaseException:
        for p in procs:
            print(p.dump_logs())
        raise
    finally:
        for p in procs:
            p.kill()
        await server.stop(0)


async def test_a_query_the_store_could_not_serve_counts_as_failed_not_refused(tmp_path, private_postgres):
    """The node's PostgreSQL goes away: the query is `failed` with reason STORE_UNAVAILABLE (the
    node's fault, not a refusal of the asker), and the pool gauges still answer."""
    from node.server import NodeConfig, NodeServer
    from testdb import Databases

    from xinyi.clock import now_ms

    net = Network(RootCA.create(), tmp_path, Databases("sqlite", tmp_path))
    await net.start_registry()
    node = NodeServer(NodeConfig(net.identity(Role.NODE, "510100"), "127.0.0.1:0", private_postgres.url(),
                                 registry=net.registry_addr, metrics_listen="127.0.0.1:0"))
    await asyncio.to_thread(node.store.create_schema)
    await asyncio.to_thread(node.store.add_records, list(SEED["510100"]), now_ms())
    await node.start()
    net.nodes["510100"] = node
    try:
        await asyncio.wait_for(node.registered.wait(), 10)
        await net.register_institution(BANK)
        consent = await net.grant(categories=CATEGORIES)
        assert {v.node: v.status for v in (await net.bank().query(CHENGDU_FIRM, CATEGORIES, "credit_assessment",
                                                                  consent)).nodes} == {"510100": "ok"}
        await asyncio.to_thread(private_postgres.stop)
        result = await net.bank().query(CHENGDU_FIRM, CATEGORIES, "credit_assessment", consent)
        assert {v.node: v.status for v in result.nodes} == {"510100": "unavailable"}
        m = await asyncio.to_thread(scrape, node.metrics_port)
        assert value(m, "xinyi_queries_total", outcome="answered", reason="") == 1
        assert value(m, "xinyi_queries_total", outcome="failed", reason="STORE_UNAVAILABLE") == 1
        assert not [k for k in m if k[0] == "xinyi_queries_total" and dict(k[1])["outcome"] == "refused"]
        assert value(m, "xinyi_db_pool_size") == 10  # PostgreSQL's pool (xinyi.db.open_engine)
    finally:
        if not private_postgres.running():
            await asyncio.to_thread(private_postgres.start)  # the node's stop writes its last checkpoint
        await net.stop()
