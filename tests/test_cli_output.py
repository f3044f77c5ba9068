"""What the `xinyi` command prints, whatever happens: with --json a failure is JSON on stdout too
(and the exit status still says it failed); JSON keeps Chinese readable; operators have a
health check; the README documents every category and that check."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from harness import BANK, CHENGDU_FIRM, XINJIANG_FIRM, Network
from test_cli import xinyi

from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA

ROOT = Path(__file__).resolve().parent.parent
ASK = ["--purpose", "credit_assessment", "--categories", "registration,tax"]


def _error(out: str) -> dict:
    """stdout is exactly one JSON document: the error."""
    doc = json.loads(out)
    assert set(doc) == {"error"} and {"code", "reason", "message", "fields", "exit_status"} <= set(doc["error"]), doc
    return doc["error"]


async def test_with_json_a_routing_failure_is_printed_as_json_and_still_exits_1(network: Network, tmp_path):
    bank = network.identity(Role.BANK, BANK).save(tmp_path / "ids")
    code, out, err = await xinyi("query", "--identity", bank, "--registry", network.registry_addr,
                                 "--uscc", XINJIANG_FIRM, *ASK, "--consent", "0" * 32, "--json")
    assert code == 1 and err.startswith("xinyi: ")
    error = _error(out)
    assert error["code"] == "FAILED_PRECONDITION" and error["reason"] and error["exit_status"] == 1
    assert error["message"] in err and not error["message"].startswith("FAILED_PRECONDITION")
    # A refusal with a field: the field is named in the JSON too.
    code, out, _ = await xinyi("consent", "status", "--identity", network.identity(Role.ENTERPRISE, CHENGDU_FIRM)
                               .save(tmp_path / "ids"), "--registry", network.registry_addr, "--consent", "z", "--json")
    error = _error(out)
    assert code != 0 and error["code"] == "INVALID_ARGUMENT" and error["fields"][0]["field"]


@pytest.mark.slow  # a minute of make test's budget between these; CI runs them in make test-slow
async def test_with_json_usage_and_unreachable_errors_are_json_too(tmp_path):
    bank = RootCA.create().issue(Principal(Role.BANK, BANK)).save(tmp_path)
    # The wrong identity for the command: a usage error, exit 2.
    code, out, err = await xinyi("consent", "list", "--identity", bank, "--registry", "127.0.0.1:1", "--json")
    error = _error(out)
    assert code == 2 and error["code"] == "USAGE" and error["exit_status"] == 2 and "enterprise" in error["message"]
    # A missing argument, caught by the parser.
    code, out, err = await xinyi("query", "--identity", bank, "--json")
    assert code == 2 and _error(out)["code"] == "USAGE" and "--registry" in _error(out)["message"]
    # Nobody listening.
    code, out, err = await xinyi("query", "--identity", bank, "--registry", "127.0.0.1:1", "--uscc", CHENGDU_FIRM, *ASK,
                                 "--consent", "0" * 32, "--json", timeout=90)
    assert code == 1 and _error(out)["code"] == "UNAVAILABLE"
    # Without --json, stdout stays empty as before.
    code, out, _ = await xinyi("consent", "list", "--identity", bank, "--registry", "127.0.0.1:1")
    assert code == 2 and out == ""


async def test_a_commands_own_json_answer_is_not_followed_by_a_second_document(network: Network, tmp_path):
    """A query no node answered prints its answer (which says why) and exits 1: stdout stays one document."""
    bank = network.identity(Role.BANK, BANK).save(tmp_path / "ids")
    code, out, err = await xinyi("query", "--identity", bank, "--registry", network.registry_addr,
                                 "--uscc", CHENGDU_FIRM, *ASK, "--consent", "0" * 32, "--json")
    assert code == 1 and "no node answered" in err
    assert json.loads(out)["uscc"] == CHENGDU_FIRM


def test_every_json_the_cli_prints_keeps_chinese_readable():
    """No json.dumps in xinyi/cli/ may escape non-ASCII: each passes ensure_ascii=False."""
    offenders = []
    for path in sorted((ROOT / "xinyi" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("json.dumps", "json.dump"):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if kw.get("ensure_ascii") != "False":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


async def test_json_output_shows_chinese_as_it_is(tmp_path):
    auditor = RootCA.create().issue(Principal(Role.AUDITOR, "audit-office")).save(tmp_path / "ids")
    # An archive that is not one: the failure names the folder, as it is named.
    bad = tmp_path / "审计档案"
    bad.mkdir()
    code, out, err = await xinyi("audit", "verify", "--identity", auditor, "--offline", bad, "--json")
    assert code == 1 and "审计档案" in out and "\\u" not in out


# --- health --------------------------------------------------------------------------------------
async def test_health_says_serving_for_a_running_node_and_registry(network: Network, tmp_path):
    auditor = network.identity(Role.AUDITOR, "audit-office").save(tmp_path / "ids")
    code, out, err = await xinyi("health", "--identity", auditor, "--node", network.node_addr("510100"))
    assert code == 0 and out.strip().endswith("SERVING"), err
    code, out, err = await xinyi("health", "--identity", auditor, "--registry", network.registry_addr,
                                 "--service", "xinyi.v1.RegistryService", "--json")
    doc = json.loads(out)
    assert code == 0 and doc.pop("certificate")["days_left"] > 30, err
    assert doc == {"target": network.registry_addr, "role": "registry", "service": "xinyi.v1.RegistryService",
                   "status": "SERVING"}, err
    # A service the server does not have: not serving, exit 1.
    code, out, err = await xinyi("health", "--identity", auditor, "--node", network.node_addr("510100"),
                                 "--service", "xinyi.v1.NoSuchService", "--json")
    assert code == 1 and json.loads(out)["status"] == "SERVICE_UNKNOWN"


async def test_health_exits_1_when_nothing_answers_or_the_server_is_not_serving(tmp_path):
    from grpc_health.v1 import health_pb2

    from xinyi.rpc.server import start_server

    root = RootCA.create()
    auditor = root.issue(Principal(Role.AUDITOR, "audit-office")).save(tmp_path / "ids")
    code, out, err = await xinyi("health", "--identity", auditor, "--node", "127.0.0.1:1", "--timeout", 2)
    assert code == 1 and out == "" and "UNAVAILABLE" in err
    # A server of the network that says it is not serving (e.g. while it stops).
    server, port, health = await start_server(root.issue(Principal(Role.NODE, "510100")), "127.0.0.1:0",
                                              lambda s: None, [])
    try:
        await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        code, out, err = await xinyi("health", "--identity", auditor, "--node", f"127.0.0.1:{port}")
        assert code == 1 and out.strip().endswith("NOT_SERVING") and "NOT_SERVING" in err
        code, out, err = await xinyi("health", "--identity", auditor, "--node", f"127.0.0.1:{port}", "--json")
        assert code == 1 and json.loads(out)["status"] == "NOT_SERVING"  # the answer, not a second error document
    finally:
        await server.stop(0)


NODE_SERVICES = ["xinyi.v1.AuditService", "xinyi.v1.NodeAlertService", "xinyi.v1.NodeEvaluationService",
                 "xinyi.v1.NodeService", "xinyi.v1.NodeStatisticsService"]
REGISTRY_SERVICES = ["xinyi.v1.AccessService", "xinyi.v1.AlertService", "xinyi.v1.AuditService",
                     "xinyi.v1.ConsentService", "xinyi.v1.DisputeService", "xinyi.v1.ModelService",
                     "xinyi.v1.RegistryService", "xinyi.v1.StatisticsService", "xinyi.v1.WitnessService"]


async def test_health_target_finds_the_role_and_lists_every_service(network: Network, tmp_path):
    auditor = network.identity(Role.AUDITOR, "audit-office").save(tmp_path / "ids")
    node = network.node_addr("510100")
    code, out, err = await xinyi("health", "--identity", auditor, "--target", node)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[1] == f"node:510100 at {node}:" or lines[1].endswith(f"at {node}:"), lines
    assert lines[2:-1] == ["  (the server as a whole): SERVING", *[f"  {s}: SERVING" for s in NODE_SERVICES]]
    assert lines[-1] == f"node at {node}: SERVING (all 6)"
    code, out, err = await xinyi("health", "--identity", auditor, "--target", network.registry_addr, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["role"] == "registry" and doc["serving"] is True, err
    assert doc["services"] == {"": "SERVING", **{s: "SERVING" for s in REGISTRY_SERVICES}}
    assert doc["certificate"]["days_left"] > 30
    # One service named: only its status.
    code, out, err = await xinyi("health", "--identity", auditor, "--target", node, "--service", "xinyi.v1.NoSuch")
    assert code == 1 and "  xinyi.v1.NoSuch: SERVICE_UNKNOWN" in out and "NOT_SERVING (xinyi.v1.NoSuch)" in out


async def test_health_target_exits_1_when_one_service_is_not_serving_or_the_server_is_not_of_the_network(tmp_path):
    from grpc_health.v1 import health_pb2

    from xinyi.rpc.server import start_server

    root = RootCA.create()
    auditor = root.issue(Principal(Role.AUDITOR, "audit-office")).save(tmp_path / "ids")
    server, port, health = await start_server(root.issue(Principal(Role.REGISTRY, "national")), "127.0.0.1:0",
                                              lambda s: None, ["xinyi.v1.RegistryService", "xinyi.v1.WitnessService"])
    stranger, stranger_port, _ = await start_server(RootCA.create().issue(Principal(Role.NODE, "510100")),
                                                    "127.0.0.1:0", lambda s: None, [])
    try:
        await health.set("xinyi.v1.WitnessService", health_pb2.HealthCheckResponse.NOT_SERVING)
        code, out, err = await xinyi("health", "--identity", auditor, "--target", f"127.0.0.1:{port}")
        assert code == 1, err
        assert "  (the server as a whole): SERVING" in out and "  xinyi.v1.RegistryService: SERVING" in out
        assert "  xinyi.v1.WitnessService: NOT_SERVING" in out
        assert out.strip().splitlines()[-1] == f"registry at 127.0.0.1:{port}: NOT_SERVING (xinyi.v1.WitnessService)"
        assert "xinyi.v1.WitnessService NOT_SERVING" in err
        code, out, err = await xinyi("health", "--identity", auditor, "--target", f"127.0.0.1:{port}", "--json")
        doc = json.loads(out)
        assert code == 1 and doc["serving"] is False and doc["services"]["xinyi.v1.WitnessService"] == "NOT_SERVING"
        # A server whose certificate another root issued: refused, nothing reported as serving.
        code, out, err = await xinyi("health", "--identity", auditor, "--target", f"127.0.0.1:{stranger_port}")
        assert code == 1 and out == "" and f"--target 127.0.0.1:{stranger_port}" in err and "SERVING" not in err
        # A server presenting a bank's certificate: neither a node nor the registry.
        bank_server, bank_port, _ = await start_server(root.issue(Principal(Role.BANK, BANK)), "127.0.0.1:0",
                                                       lambda s: None, [])
        try:
            code, out, err = await xinyi("health", "--identity", auditor, "--target", f"127.0.0.1:{bank_port}")
            assert code == 1 and out == "" and "registry or nodes" in err, err
            code, out, err = await xinyi("health", "--identity", auditor, "--target", f"127.0.0.1:{bank_port}",
                                         "--tls-name", "localhost")
            assert code == 1 and out == "" and "neither a node nor the registry" in err, err
        finally:
            await bank_server.stop(0)
        # Nobody there.
        code, out, err = await xinyi("health", "--identity", auditor, "--target", "127.0.0.1:1", "--timeout", 2)
        assert code == 1 and out == "" and "--target 127.0.0.1:1" in err
    finally:
        await server.stop(0)
        await stranger.stop(0)


async def test_health_target_reads_the_services_of_a_server_without_health_list_from_reflection(tmp_path):
    """A server of an earlier release (the stock health servicer, no List): its services come from
    reflection, each checked on its own."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from xinyi.rpc.channels import server_credentials

    root = RootCA.create()
    auditor = root.issue(Principal(Role.AUDITOR, "audit-office")).save(tmp_path / "ids")
    server = grpc.aio.server()
    stock = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(stock, server)
    reflection.enable_server_reflection(["xinyi.v1.NodeService", "xinyi.v1.AuditService", health.SERVICE_NAME,
                                         reflection.SERVICE_NAME], server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(root.issue(Principal(Role.NODE, "510100"))))
    await server.start()
    try:
        await stock.set("xinyi.v1.NodeService", health_pb2.HealthCheckResponse.SERVING)  # AuditService never set
        code, out, err = await xinyi("health", "--identity", auditor, "--target", f"127.0.0.1:{port}", "--json")
        doc = json.loads(out)
        assert code == 1 and doc["role"] == "node", err
        assert doc["services"] == {"": "SERVING", "xinyi.v1.AuditService": "SERVICE_UNKNOWN",
                                   "xinyi.v1.NodeService": "SERVING"}
    finally:
        await server.stop(0)


# --- the README ----------------------------------------------------------------------------------
def test_the_readme_documents_every_category_with_its_fields_and_the_health_check():
    from xinyi.records.categories import FIELD_SPECS
    from xinyi.records.vocab import CATEGORIES

    readme = (ROOT / "README.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `?([a-z_]+)`? \| (.*) \|$", readme, re.M)}
    for category in CATEGORIES:
        assert category in rows, f"README: no row for category {category}"
        for spec in FIELD_SPECS.get(category, ()):
            assert spec.name in rows[category], f"README: {category} row does not name field {spec.name}"
    assert re.search(r"^xinyi health .*--node", readme, re.M), "README: no health-check command"


@pytest.mark.parametrize("bad", ["", "dns:///", ":7000"])
async def test_a_registry_address_naming_no_host_is_a_usage_error(tmp_path, bad):
    """Found by an attack pass: such an address made a channel that failed every call as UNKNOWN
    and stopped failover to the good replica named after it."""
    bank = RootCA.create().issue(Principal(Role.BANK, BANK)).save(tmp_path)
    code, out, err = await xinyi("query", "--identity", bank, "--registry", bad, "--registry", "127.0.0.1:1",
                                 "--uscc", CHENGDU_FIRM, *ASK, "--consent", "0" * 32, "--json")
    error = _error(out)
    assert code == 2 and error["code"] == "USAGE" and "names no host" in error["message"], out
    code, _, err = await xinyi("node", "serve", "--identity", str(tmp_path), "--listen", "127.0.0.1:0",
                               "--registry", bad, "--db", f"sqlite:///{tmp_path}/n.db")
    assert code == 2 and "names no host" in err and "Traceback" not in err
