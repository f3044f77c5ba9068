"""The `xinyi` command as a person runs it: a separate process, its exit status, stdout and stderr.

The CLI runs as a subprocess started with asyncio, so the in-process servers of the `network`
fixture keep serving while it runs. Exit status: 0 done, 1 refused or unreachable, 2 usage or
validation error (and `node ingest`: 3 loaded with bad lines left out); a failure is one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import BANK, CHENGDU_FIRM, GUARANTOR, LICENCE, SHANGHAI_FIRM, Network

from node.store import NodeStore
from xinyi.cli.main import build_parser
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, RootCA
from xinyi.records import uscc as uscc_codes

ASK = ["--purpose", "credit_assessment", "--categories", "registration,tax,judicial"]
NO_CONSENT = "0" * 32
CONSENT_ID = re.compile(r"^[0-9a-f]{32}$")


async def xinyi(*args: object, timeout: float = 60) -> tuple[int, str, str]:
    """Run `python -m xinyi.cli ARGS`; return (returncode, stdout, stderr). Never a traceback."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xinyi.cli", *map(str, args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    stdout, stderr = out.decode(), err.decode()
    assert "Traceback" not in stderr, f"xinyi {' '.join(map(str, args))} printed a traceback:\n{stderr}"
    return proc.returncode, stdout, stderr


def one_line(stderr: str) -> str:
    """The single line a failure prints on stderr (asserted to be exactly one)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("xinyi: "), lines[0]
    return lines[0]


# --- pki -------------------------------------------------------------------------------------

EVERY_ROLE = [
    ("registry", "national"),
    ("node", "510100"),
    ("bank", BANK),
    ("guarantor", GUARANTOR),
    ("auditor", "audit-office"),
    ("enterprise", CHENGDU_FIRM),
    ("representative", "zhang-wei"),
]
LICENSED = {"bank", "guarantor"}


async def test_pki_init_and_issue_every_role(tmp_path):
    certs = tmp_path / "certs"
    code, out, err = await xinyi("pki", "init", "--dir", certs)
    assert code == 0, err
    assert "keep ca.key offline" in out
    assert stat.S_IMODE((certs / "ca" / "ca.key").stat().st_mode) == 0o600
    results = await asyncio.gather(
        *(xinyi("pki", "issue", "--dir", certs, "--role", role, "--id", principal_id,
                *(["--licence", LICENCE] if role in LICENSED else []))
          for role, principal_id in EVERY_ROLE)
    )
    for (role, principal_id), (code, out, err) in zip(EVERY_ROLE, results):
        assert code == 0, err
        bundle = certs / f"{role}-{principal_id}"
        assert f"{role}/{principal_id}" in out and str(bundle) in out
        identity = Identity.load(bundle)
        assert identity.principal == Principal(Role(role), principal_id)
        identity.tls_cert.verify_directly_issued_by(RootCA.load(certs, with_key=False).cert)


async def test_pki_issue_days_sets_the_validity(tmp_path):
    assert (await xinyi("pki", "init", "--dir", tmp_path))[0] == 0
    code, _, err = await xinyi("pki", "issue", "--dir", tmp_path, "--role", "auditor", "--id", "pbc", "--days", "2")
    assert code == 0, err
    cert = Identity.load(tmp_path / "auditor-pbc").tls_cert
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 2 * 86400 <= lifetime.total_seconds() <= 2 * 86400 + 600


@pytest.fixture(scope="module")
def initialized(tmp_path_factory) -> Path:
    from xinyi.crypto.pki import init_root

    directory = tmp_path_factory.mktemp("cli-pki")
    init_root(directory)
    return directory


@pytest.mark.parametrize(
    ("role", "bad_id", "problem"),
    [
        ("node", "5101", "6-digit GB/T 2260 area code"),
        ("node", "Chengdu", "6-digit GB/T 2260 area code"),
        ("bank", BANK[:-1] + ("0" if BANK[-1] != "0" else "1"), "check character"),
        ("enterprise", "not-a-uscc", "must be a USCC"),
        ("registry", "National", "lower-case letters"),
    ],
)
async def test_pki_issue_with_a_bad_id_exits_2_with_one_line(initialized, role, bad_id, problem):
    code, out, err = await xinyi("pki", "issue", "--dir", initialized, "--role", role, "--id", bad_id)
    assert code == 2
    line = one_line(err)
    assert "--id" in line and problem in line
    assert out == ""
    assert not (initialized / f"{role}-{bad_id}").exists()


async def test_pki_init_refuses_to_overwrite_a_root(tmp_path):
    assert (await xinyi("pki", "init", "--dir", tmp_path))[0] == 0
    key = (tmp_path / "ca" / "ca.key").read_bytes()
    code, _, err = await xinyi("pki", "init", "--dir", tmp_path)
    assert code == 2
    assert "refusing to overwrite" in one_line(err)
    assert (tmp_path / "ca" / "ca.key").read_bytes() == key


async def test_pki_issue_without_a_root_points_at_pki_init(tmp_path):
    code, _, err = await xinyi("pki", "issue", "--dir", tmp_path, "--role", "node", "--id", "510100")
    assert code == 2
    line = one_line(err)
    assert "ca.crt" in line
    assert "pki init" in line


# --- --help ----------------------------------------------------------------------------------


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _command_paths(sub, (*prefix, name))


COMMANDS = list(_command_paths(build_parser()))


def test_the_help_walk_finds_every_command():
    leaves = {" ".join(p) for p in COMMANDS}
    assert {"pki init", "pki issue", "registry serve", "node serve", "node ingest", "consent grant",
            "consent revoke", "consent list", "consent status", "query", "audit log"} <= leaves


@pytest.mark.slow
async def test_every_command_has_help():
    results = await asyncio.gather(*(xinyi(*path, "--help") for path in COMMANDS))
    for path, (code, out, err) in zip(COMMANDS, results):
        assert code == 0, f"xinyi {' '.join(path)} --help: {err}"
        assert out.startswith(f"usage: xinyi {' '.join(path)}".rstrip()), out[:200]
        assert err == ""


# --- against a running network ---------------------------------------------------------------


@dataclass
class Bundles:
    net: Network
    bank: Path
    enterprise: Path
    auditor: Path

    @property
    def registry(self) -> str:
        return self.net.registry_addr

    def as_bank(self) -> list[str]:
        return ["--identity", str(self.bank), "--registry", self.registry]

    def as_enterprise(self) -> list[str]:
        return ["--identity", str(self.enterprise), "--registry", self.registry]


@pytest.fixture
def bundles(network, tmp_path) -> Bundles:
    """The bank, enterprise and auditor identities of the network, written to disk for the CLI."""
    ids = tmp_path / "ids"
    return Bundles(
        network,
        network.identity(Role.BANK, BANK).save(ids),
        network.identity(Role.ENTERPRISE, CHENGDU_FIRM).save(ids),
        network.identity(Role.AUDITOR, "audit-office").save(ids),
    )


async def grant(b: Bundles) -> str:
    code, out, err = await xinyi("consent", "grant", *b.as_enterprise(), "--grantee", BANK, *ASK, "--days", "30")
    assert code == 0, err
    consent_id = out.strip().splitlines()[0]
    assert CONSENT_ID.match(consent_id), out
    return consent_id


async def test_consent_grant_query_list_revoke(bundles):
    b = bundles
    consent_id = await grant(b)

    # Listed before any query: active.
    code, out, err = await xinyi("consent", "list", *b.as_enterprise(), "--json")
    assert code == 0, err
    listed = {c["consent_id"]: c for c in json.loads(out)}
    assert listed[consent_id]["status"] == "active"
    assert listed[consent_id]["grantee"] == BANK
    assert listed[consent_id]["uscc"] == CHENGDU_FIRM
    assert set(listed[consent_id]["categories"]) == {"registration", "tax", "judicial"}

    code, out, err = await xinyi("query", *b.as_bank(), "--uscc", CHENGDU_FIRM, *ASK, "--consent", consent_id, "--json")
    assert code == 0, err
    result = json.loads(out)  # the whole of stdout is one JSON document
    assert isinstance(result, dict)
    assert {"uscc", "nodes"} <= result.keys()
    assert result["uscc"] == CHENGDU_FIRM
    nodes = {n["node"]: n for n in result["nodes"]}
    for n in result["nodes"]:
        assert set(n) == {"node", "status", "verified", "records", "error"}
    for node_id, categories in (("510100", {"registration", "judicial"}), ("510000", {"tax"})):
        assert nodes[node_id]["status"] == "ok", nodes[node_id]
        assert nodes[node_id]["verified"] is True
        assert nodes[node_id]["error"] is None
        records = nodes[node_id]["records"]
        assert {r["category"] for r in records} == categories
        for r in records:
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["as_of"]), r
            assert r["source"], r

    # Listed after the query: a once consent answered by every node it reached is spent.
    code, out, err = await xinyi("consent", "list", *b.as_enterprise(), "--json")
    assert code == 0, err
    assert {c["consent_id"]: c["status"] for c in json.loads(out)}[consent_id] == "spent"

    code, out, err = await xinyi("consent", "revoke", *b.as_enterprise(), "--consent", consent_id)
    assert code == 0, err
    assert out.strip() == f"{consent_id} is now revoked"

    (code, out, err), status = await asyncio.gather(
        xinyi("query", *b.as_bank(), "--uscc", CHENGDU_FIRM, *ASK, "--consent", consent_id),
        xinyi("consent", "status", *b.as_enterprise(), "--consent", consent_id, "--json"),
    )
    assert status[0] == 0, status[2]
    assert json.loads(status[1])["status"] == "revoked"
    assert code == 1
    line = one_line(err)
    assert "no node answered" in line and "revoked" in line
    assert "verified)" not in out.replace("not verified)", "")  # no node's answer is shown as verified


async def test_consent_status_shows_the_nodes_that_have_it_and_what_each_answered(bundles):
    b = bundles
    consent_id = await grant(b)
    code, out, err = await xinyi("consent", "status", *b.as_enterprise(), "--consent", consent_id, "--json")
    assert code == 0, err
    status = json.loads(out)
    assert (status["delivered_to"], status["pending"]) == (["510100", "510000"], [])  # once: []
    assert [(n["node"], n["delivered"], n["answers"], n["last_outcome"]) for n in status["nodes"]] == [
        ("510100", True, 0, None), ("510000", True, 0, None)]

    await b.net.nodes["510000"].stop(0)  # down: the once consent is answered by Chengdu only
    code, _, err = await xinyi("query", *b.as_bank(), "--uscc", CHENGDU_FIRM, *ASK, "--consent", consent_id)
    assert code == 0, err
    (code, out, err), (text_code, text, text_err) = await asyncio.gather(
        xinyi("consent", "status", *b.as_enterprise(), "--consent", consent_id, "--json"),
        xinyi("consent", "status", *b.as_enterprise(), "--consent", consent_id))
    assert code == 0 and text_code == 0, err + text_err
    status = json.loads(out)
    assert status["status"] == "active" and status["uses"] == 1  # not spent: Sichuan has answered nothing
    nodes = {n["node"]: n for n in status["nodes"]}
    assert (nodes["510100"]["status"], nodes["510100"]["answers"], nodes["510100"]["last_outcome"]) == ("spent", 1, "ok")
    assert nodes["510100"]["last_answered_ms"] > 0
    assert (nodes["510000"]["status"], nodes["510000"]["answers"], nodes["510000"]["last_outcome"]) == (
        "active", 0, "unavailable")
    assert nodes["510000"]["last_answered_ms"] is None
    lines = text.splitlines()
    assert any(line.strip().startswith("node 510100 Chengdu: spent, has the consent, answered 1 query") for line in lines), text
    assert any(line.strip().startswith("node 510000 Sichuan: active, has the consent, has answered nothing")
               and line.endswith(": unavailable") for line in lines), text


async def test_query_refusals(bundles):
    bad = CHENGDU_FIRM[:-1] + ("0" if CHENGDU_FIRM[-1] != "0" else "1")
    assert not uscc_codes.is_valid(bad)
    no_consent, invalid = await asyncio.gather(
        xinyi("query", *bundles.as_bank(), "--uscc", CHENGDU_FIRM, *ASK, "--consent", NO_CONSENT),
        xinyi("query", *bundles.as_bank(), "--uscc", bad, *ASK, "--consent", NO_CONSENT),
    )

    code, out, err = no_consent
    assert code == 1
    line = one_line(err)
    assert "no node answered" in line
    assert NO_CONSENT in line  # the reason names the consent that is missing
    assert "denied" in out

    code, out, err = invalid
    assert code == 2  # caught before anything is signed or sent
    assert "query.uscc" in one_line(err)
    assert out == ""


async def test_consent_with_a_bank_identity_is_a_usage_error(tmp_path):
    bank = RootCA.create().issue(Principal(Role.BANK, BANK)).save(tmp_path)
    code, out, err = await xinyi("consent", "list", "--identity", bank, "--registry", f"127.0.0.1:{_closed_port()}")
    assert code == 2
    line = one_line(err)
    assert "bank identity" in line and "enterprise" in line
    assert out == ""


async def test_audit_log_for_auditors_only(bundles):
    net, b = bundles.net, bundles
    node = net.node_addr("510100")
    consent_id = await grant(b)
    await asyncio.gather(
        *(xinyi("query", *b.as_bank(), "--uscc", CHENGDU_FIRM, *ASK, "--consent", c, "--json") for c in (consent_id, NO_CONSENT))
    )

    (code, out, err), (reg_code, reg_out, reg_err) = await asyncio.gather(
        xinyi("audit", "log", "--identity", b.bank, "--node", node, "--json"),
        xinyi("audit", "log", "--identity", b.auditor, "--registry", b.registry, "--json"),
    )
    assert code == 1
    line = one_line(err)
    assert "PERMISSION_DENIED" in line
    assert "audit-log-is-auditor-only" in line
    error = json.loads(out)["error"]  # with --json, the refusal is JSON on stdout too
    assert (error["code"], error["reason"], error["exit_status"]) == ("PERMISSION_DENIED", "POLICY_DENIED", 1)
    assert error["message"] == "denied by audit-log-is-auditor-only"

    assert reg_code == 0, reg_err
    reg_rows = json.loads(reg_out)
    assert all(r["decision"] in ("allow", "deny") for r in reg_rows)
    assert any(r["caller"] == f"enterprise/{CHENGDU_FIRM}" for r in reg_rows)  # the consent grant
    assert any(r["caller"] == f"bank/{BANK}" for r in reg_rows)  # the routed queries

    code, out, err = await xinyi("audit", "log", "--identity", b.auditor, "--node", node, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert all(r["decision"] in ("allow", "deny") for r in rows)
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    queries = [r for r in rows if r["action"] == "query"]
    assert len(queries) == 2
    assert {r["decision"]: r["consent_id"] for r in queries} == {"allow": consent_id, "deny": NO_CONSENT}
    assert all(r["caller"] == f"bank/{BANK}" and r["uscc"] == CHENGDU_FIRM for r in queries)
    # The bank's refused read is itself on the record.
    refused = [r for r in rows if r["action"] == "read_audit" and r["decision"] == "deny"]
    assert [r["caller"] for r in refused] == [f"bank/{BANK}"]
    assert "audit-log-is-auditor-only" in refused[0]["policy_ids"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a minute of make test's budget between these; CI runs them in make test-slow
async def test_unreachable_registry_suggests_checking_the_address(tmp_path):
    root = RootCA.create()
    bank = root.issue(Principal(Role.BANK, BANK)).save(tmp_path)
    enterprise = root.issue(Principal(Role.ENTERPRISE, SHANGHAI_FIRM)).save(tmp_path)
    target = f"127.0.0.1:{_closed_port()}"
    results = await asyncio.gather(
        xinyi("query", "--identity", bank, "--registry", target, "--uscc", SHANGHAI_FIRM, *ASK, "--consent", NO_CONSENT),
        xinyi("consent", "list", "--identity", enterprise, "--registry", target),
    )
    for code, out, err in results:
        assert code == 1
        line = one_line(err)
        assert "UNAVAILABLE" in line
        assert "is the server running" in line and "right address" in line
        assert out == ""


# --- node ingest -----------------------------------------------------------------------------

GOOD = {"uscc": CHENGDU_FIRM, "category": "tax", "as_of": "2025-06-15", "source": "国家税务总局四川省税务局",
        "period": "2025-05", "tax_paid": "12000.00", "credit_rating": "A"}
BAD = {**GOOD, "credit_rating": "Z"}


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
                            for line in lines), encoding="utf-8")
    return path


def stored_records(db_url: str, uscc: str = CHENGDU_FIRM) -> list:
    store = NodeStore(db_url)
    try:
        return store.fetch_records(uscc, ["tax"])
    finally:
        store.close()


async def test_node_ingest_reports_a_bad_line_and_loads_the_rest_with_exit_3(db_url, tmp_path):
    path = write_jsonl(tmp_path / "tax.jsonl", [GOOD, BAD, "{not json"])
    code, out, err = await xinyi("node", "ingest", "--db", db_url, path)
    assert code == 3, err  # loaded with rejects: not 0, so that a script notices the missing lines
    assert f"{path}:2: credit_rating" in err
    assert f"{path}:3: " in err
    assert f"{path}:1:" not in err
    assert "tax.jsonl: 3 lines, 1 new, 0 already present, 2 bad" in out
    assert err.strip().splitlines()[-1].startswith(f"xinyi: {path}: loaded, but 2 bad lines were not")
    assert len(stored_records(db_url)) == 1
    # Fixed and loaded again: every line is in, exit 0.
    write_jsonl(path, [GOOD, {**BAD, "credit_rating": "B"}])
    code, out, err = await xinyi("node", "ingest", "--db", db_url, path)
    assert code == 0, err
    assert "tax.jsonl: 2 lines, 1 new, 1 already present, 0 bad" in out
    assert len(stored_records(db_url)) == 2


def _with_repeated_key(obj: dict, key_and_value: str) -> str:
    """obj as a JSON line with `"key": value` appended, so the key appears twice."""
    return json.dumps(obj, ensure_ascii=False)[:-1] + ", " + key_and_value + "}"


async def test_node_ingest_refuses_a_line_that_gives_a_key_twice(db_url, tmp_path):
    """{"tax_paid": "100.00", ..., "tax_paid": "999999.00"} once loaded as 999999.00: json keeps the last value."""
    may = {**GOOD, "period": "2025-04", "tax_paid": "100.00"}
    path = write_jsonl(tmp_path / "tax.jsonl", [
        GOOD,
        _with_repeated_key(may, '"tax_paid": "999999.00"'),
        _with_repeated_key({**GOOD, "period": "2025-03"}, '"remark": {"grade": "A", "grade": "D"}'),
        '{"uscc": "%s", "category": "tax", "as_of": "2025-06-15", "source": "x", "period": "2025-02", '
        '"tax_paid": "1.00", "credit_rating": "A", "credit_rating": [{"by": {"who": 1, "who": 2}}]}' % CHENGDU_FIRM,
    ])
    code, out, err = await xinyi("node", "ingest", "--db", db_url, path)
    assert code == 3, err
    assert f"{path}:2: tax_paid: is given more than once in one object" in err
    assert f"{path}:3: remark.grade: is given more than once in one object" in err  # nested
    assert f"{path}:4: credit_rating: is given more than once in one object" in err
    assert "4 lines, 1 new, 0 already present, 3 bad" in out
    [record] = stored_records(db_url)
    assert record.fields["period"] == "2025-05"  # only GOOD: no tax_paid of 999999.00, nor of 100.00
    assert "999999.00" not in {r.fields["tax_paid"] for r in stored_records(db_url)}

    # A file of nothing but such lines: nothing loaded, exit 2.
    only = write_jsonl(tmp_path / "only.jsonl", [_with_repeated_key(may, '"tax_paid": "999999.00"')])
    code, out, err = await xinyi("node", "ingest", "--db", db_url, only)
    assert code == 2, err
    assert f"{only}:1: tax_paid: is given more than once" in err
    assert len(stored_records(db_url)) == 1


async def test_node_ingest_help_documents_the_exit_codes():
    code, out, _ = await xinyi("node", "ingest", "--help")
    assert code == 0
    codes = out[out.index("exit status:"):]
    for line in ("0  every record line loaded", "2  nothing loaded", "3  the good lines loaded, the bad ones did not"):
        assert line in codes, codes


async def test_node_ingest_of_only_bad_lines_exits_2(db_url, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [BAD, {**GOOD, "uscc": "123"}])
    code, out, err = await xinyi("node", "ingest", "--db", db_url, path)
    assert code == 2
    assert f"{path}:1: credit_rating" in err
    assert f"{path}:2: uscc" in err
    assert "2 lines, 0 new, 0 already present, 2 bad" in out
    assert err.strip().splitlines()[-1] == f"xinyi: {path}: no line could be loaded; fix the lines reported above"


async def test_node_ingest_of_a_missing_file_exits_2(db_url, tmp_path):
    code, _, err = await xinyi("node", "ingest", "--db", db_url, tmp_path / "nope.jsonl")
    assert code == 2
    assert "nope.jsonl" in err.strip().splitlines()[-1]


async def test_a_bank_needs_its_licence_number(tmp_path):
    certs = tmp_path / "certs"
    assert (await xinyi("pki", "init", "--dir", certs))[0] == 0
    code, _, err = await xinyi("pki", "issue", "--dir", certs, "--role", "bank", "--id", BANK)
    assert code == 2 and "--licence" in one_line(err)
    assert not (certs / f"bank-{BANK}").exists()


# --- dispute resolve -------------------------------------------------------------------------


async def test_dispute_resolve_refuses_fields_that_give_a_key_twice_and_sends_exact_amounts(network, tmp_path):
    from harness import SEED

    judicial = SEED["510100"][1]
    node = network.identity(Role.NODE, "510100").save(tmp_path / "ids")
    filed = await network.enterprise().dispute("510100", judicial.key, "the amount is wrong")
    resolve = ["dispute", "resolve", "--identity", node, "--node", network.node_addr("510100"),
               "--dispute", filed.dispute_id, "--outcome", "corrected", "--reason", "settled"]
    fields = json.dumps(dict(judicial.fields, status="closed"), ensure_ascii=False)

    # "amount" twice: the CLI would send only the last value; it refuses instead, and sends nothing.
    code, _, err = await xinyi(*resolve, "--fields", fields[:-1] + ', "amount": "999999.00"}')
    assert code == 2
    assert one_line(err) == "xinyi: --fields: amount: is given more than once in one object; each key may appear once"
    [still] = network.nodes["510100"].store.list_disputes()
    assert still["status"] == "open"

    # An amount as a JSON number is read exactly (not through a float) and sent as given.
    code, out, err = await xinyi(*resolve, "--fields", fields[:-1].replace('"50000.00"', "5000.5") + "}", "--json")
    assert code == 0, err
    corrected = network.nodes["510100"].store.get_record(json.loads(out)["corrected_record_id"])
    assert corrected.fields["amount"] == "5000.50"
