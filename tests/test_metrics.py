"""--metrics-listen: each service's Prometheus metrics, scraped over HTTP after real queries on a
real network (mutual TLS on loopback, both back ends)."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import urllib.request

import pytest
from harness import CHENGDU_FIRM, XINJIANG_FIRM, Network, start_network
from prometheus_client.parser import text_string_to_metric_families
from test_cli import xinyi

from node.query import STEPS as NODE_STEPS
from registry.routing import STEPS as ROUTE_STEPS
from xinyi.client import ClientError
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
