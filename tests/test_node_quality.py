"""The node operator's data-quality report: node.quality.node_quality over a store a real file
was loaded into (node.ingest keeps each load and its rejected lines), `xinyi node quality`, and
NodeService.GetNodeReport over mutual TLS (OperatorClient.report) for the node's own identity
only; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import grpc
import pytest
from alembic import command
from harness import BANK, CHENGDU_FIRM, SEED, Network

from node.ingest import MAX_ERROR_DETAILS, ingest_file
from node.quality import MAX_REPORT_REJECTS, node_quality
from node.store import NodeStore
from registry.store import RegistryStore
from xinyi import migrations
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.cli import common as cli_common
from xinyi.cli.main import main
from xinyi.client import ClientError, OperatorClient
from xinyi.clock import DAY_MS, now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.privacy.consent import CHINA
from xinyi.quality import DataQuality
from xinyi.records import uscc as uscc_codes
from xinyi.rpc.report import report_from_proto, report_to_proto
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import node_pb2, node_pb2_grpc

TODAY = dt.date(2026, 7, 1)
# Noon in Beijing on TODAY: the report's clock.
NOW = int(dt.datetime.combine(TODAY, dt.time(12), CHINA).timestamp() * 1000)
FIRMS = [uscc_codes.with_check_character(f"9151010{i}MA6C1234X") for i in range(4)]
A, B, C, D = FIRMS
PERSON = "王建华"  # a legal representative: must never reach the rejects table

REG = {"name": "成都测试有限公司", "legal_representative": PERSON, "registered_capital": "1000.00",
       "established": "2010-05-04", "status": "active"}


def _line(uscc: str, category: str, as_of: str, source: str, **fields) -> str:
    return json.dumps({"uscc": uscc, "category": category, "as_of": as_of, "source": source, **fields},
                      ensure_ascii=False)


def tax(period: str, rating: str = "A") -> dict:
    return {"period": period, "tax_paid": "100.00", "credit_rating": rating}


def make_lines(today: dt.date) -> list[str | None]:
    """The file: (line text, or None for a blank line); line numbers count blank lines too.
    Dates are days before `today`, so that the same lines are fresh or stale alike on any day."""
    ago = lambda days: (today - dt.timedelta(days=days)).isoformat()  # noqa: E731
    fresh = ago(1)
    return [
        _line(A, "registration", fresh, "市场监管局", **REG),                                # 1
        _line(B, "registration", fresh, "市场监管局", **REG),                                # 2
        None,                                                                                 # 3 blank
        _line(C, "registration", fresh, "市场监管局", **REG),                                # 4
        _line(D, "registration", fresh, "市场监管局", **REG),                                # 5
        "this is not json " + PERSON,                                                         # 6 bad: line
        _line(A, "tax", fresh, "税务局", **tax("2026-05")),                                   # 7
        _line(B, "tax", fresh, "税务局", **tax("2026-05")),                                   # 8
        _line(A, "tax", ago(151), "旧税务系统", **tax("2025-12")),                            # 9 stale source
        _line(B, "tax", fresh, "税务局", **tax("2026-05", rating="Z")),                       # 10 bad: credit_rating
        _line(C, "social_security", ago(92), "社保局", period="2026-02", insured_headcount=12,
              contributions_paid="900.00"),                                                   # 11 stale category
        _line(A, "judicial", ago(30), "法院", case_no="(2026)川01民初1号", court="成都中院", filed="2026-05-01",
              role="defendant", amount="5.00", status="pending"),                             # 12
        _line(B, "registration", fresh, "市场监管局", **dict(REG, legal_representative=12345678)),  # 13 bad
        _line(A[:-1] + ("0" if A[-1] != "0" else "1"), "registration", fresh, "市场监管局", **REG),  # 14 bad: uscc
        _line(A, "horoscope", fresh, "星象局"),                                               # 15 bad: category
        _line(A, "tax", fresh, "税务局", **tax("2026-05")),                                   # 16 duplicate of 7
    ]


LINES = make_lines(TODAY)  # as_of 2026-06-30, 2026-01-31, 2026-03-31, 2026-06-01
BAD = {6: "line", 10: "credit_rating", 13: "legal_representative", 14: "uscc", 15: "category"}


def write(path: Path, lines=LINES) -> Path:
    path.write_text("".join((text or "") + "\n" for text in lines), encoding="utf-8")
    return path


@pytest.fixture
def store(db_url: str):
    s = NodeStore(db_url)
    s.create_schema()
    yield s
    s.close()


def check_holdings(q: DataQuality) -> None:
    """What LINES hold, as the report must show it."""
    assert (q.enterprises, q.records) == (4, 9)
    cats = {c.category: c for c in q.categories}
    assert [c.category for c in q.categories][:3] == ["registration", "tax", "social_security"]
    counts = {name: (c.records, c.enterprises, c.share) for name, c in cats.items()}
    assert counts == {"registration": (4, 4, 1.0), "tax": (3, 2, 0.5), "social_security": (1, 1, 0.25),
                      "judicial": (1, 1, 0.25), "admin_penalty": (0, 0, 0.0), "dishonesty_list": (0, 0, 0.0)}
    # Tax's newest as_of is fresh, but one of its sources stopped in January: flagged, the category not.
    assert (cats["tax"].latest_as_of, cats["tax"].stale, cats["tax"].stale_sources) == ("2026-06-30", False, 1)
    assert (cats["tax"].cadence, cats["tax"].stale_after_days) == ("monthly", 45)
    # Social insurance is monthly; 2026-03-31 is 92 days before TODAY.
    assert (cats["social_security"].stale, cats["social_security"].stale_sources) == (True, 1)
    assert not cats["judicial"].stale and cats["judicial"].cadence == "event-driven"
    assert not cats["admin_penalty"].stale and cats["admin_penalty"].latest_as_of == ""
    sources = {(s.category, s.source): (s.records, s.latest_as_of, s.age_days, s.stale) for s in q.sources}
    assert sources == {
        ("judicial", "法院"): (1, "2026-06-01", 30, False),
        ("registration", "市场监管局"): (4, "2026-06-30", 1, False),
        ("social_security", "社保局"): (1, "2026-03-31", 92, True),
        ("tax", "旧税务系统"): (1, "2026-01-31", 151, True),
        ("tax", "税务局"): (2, "2026-06-30", 1, False),
    }
    assert [(s.category, s.source) for s in q.stale] == [("social_security", "社保局"), ("tax", "旧税务系统")]


def check_load(q: DataQuality, file_name: str) -> None:
    (load,) = q.loads
    assert (load.file_name, load.category, load.failure) == (file_name, "", "")
    assert (load.lines_read, load.accepted, load.inserted, load.duplicates, load.rejected, load.rejects_kept) == \
        (15, 10, 9, 1, 5, 5)
    assert {r.line_no: r.field for r in load.rejects} == BAD
    reasons = {r.line_no: r.reason for r in load.rejects}
    assert reasons[6].startswith("is not valid JSON")
    assert reasons[10] == "must be one of A, B, M, C, D, got '…'"
    assert reasons[13] == "must be non-empty text, got '…'"
    assert reasons[14].startswith("'…' ") and "check" in reasons[14]
    assert reasons[15].startswith("unknown category '…'")
    # No value of a bad line is kept: not the person's name, not the number, not the code.
    kept = json.dumps([dict(line_no=r.line_no, field=r.field, reason=r.reason) for r in load.rejects],
                      ensure_ascii=False)
    for value in (PERSON, "12345678", "horoscope", "'Z'", A[:-1]):
        assert value not in kept, value
    assert load.started_at_ms <= load.finished_at_ms


async def write_audit(store: NodeStore, entries: list[tuple[int, str, str]]) -> None:
    """Audit entries (at_ms, action, decision) through the node's own AuditLog, in time order."""
    identity = RootCA.create().issue(Principal(Role.NODE, "510100"))
    log = AuditLog(store, identity, lambda: NOW)
    await log.open()
    for at_ms, action, decision in entries:
        await log.append(AuditEntry(at_ms=at_ms, caller_role="bank", caller_id=BANK, action=action, decision=decision,
                                    uscc=A))
    await log.close()


# --- the report from a store --------------------------------------------------------------------

async def test_a_loaded_file_shows_its_counts_rejects_freshness_and_shares(store: NodeStore, tmp_path: Path):
    report = ingest_file(write(tmp_path / "dept-2026-06.jsonl"), store, today=TODAY)
    assert (report.inserted, report.duplicates, report.error_count) == (9, 1, 5)
    q = node_quality(store, NOW)
    check_holdings(q)
    check_load(q, "dept-2026-06.jsonl")
    assert q.today == "2026-07-01" and q.generated_at_ms == NOW and q.node_id == ""
    assert q.disputes.open == 0 and q.disputes.disputes == ()
    # Never registered, never synced: said so, not invented.
    assert (q.sync.live, q.sync.registered, q.sync.registered_at_ms, q.sync.consent_sync_lag_ms,
            q.sync.consents_fresh) == (False, False, 0, -1, False)
    # The dataclass survives JSON and the wire unchanged.
    assert DataQuality.from_json(json.loads(json.dumps(q.to_json()))) == q
    wire = node_pb2.NodeReport.FromString(report_to_proto(q).SerializeToString())
    assert report_from_proto(wire) == q


async def test_queries_per_day_count_answered_and_refused_in_the_window(store: NodeStore):
    day = lambda n: NOW - n * DAY_MS  # noqa: E731 - noon Beijing, n days before TODAY
    await write_audit(store, [
        (day(40), "query", "allow"),             # before the 30-day window
        (day(29), "query", "deny"),              # the window's first day
        (day(2), "query", "allow"), (day(2), "query", "allow"), (day(2), "query", "deny"),
        (day(2), "list_disputes", "deny"),       # not a query
        (NOW - 11 * 3_600_000, "query", "allow"),  # 01:00 Beijing today, 17:00 UTC yesterday
        (NOW, "query", "deny"),
    ])
    q = node_quality(store, NOW)
    assert len(q.queries) == 30 and q.queries[0].day == "2026-06-02" and q.queries[-1].day == "2026-07-01"
    by_day = {x.day: (x.answered, x.refused) for x in q.queries if x.answered or x.refused}
    assert by_day == {"2026-06-02": (0, 1), "2026-06-29": (2, 1), "2026-07-01": (1, 1)}
    assert [x.day for x in node_quality(store, NOW, days=7).queries][0] == "2026-06-25"
    with pytest.raises(ValueError, match="days: must be from 1 to 366, got 0"):
        node_quality(store, NOW, days=0)


async def test_loads_kept_are_bounded_and_a_refused_file_is_recorded(store: NodeStore, tmp_path: Path):
    store.KEEP_LOADS = 3
    bad = [_line(A, "tax", "2026-06-30", "税务局", **tax("2026-05", rating="Z"))] * (MAX_ERROR_DETAILS + 5)
    ingest_file(write(tmp_path / "all-bad.jsonl", bad), store, today=TODAY)
    for n in range(3):
        ingest_file(write(tmp_path / f"good-{n}.jsonl", LINES[:2]), store, today=TODAY)
    q = node_quality(store, NOW, loads=50, rejects_per_load=1000)
    assert [ld.file_name for ld in q.loads] == ["good-2.jsonl", "good-1.jsonl", "good-0.jsonl"]
    with store.engine.connect() as conn:  # the oldest load's 1000 rejects went with it
        assert conn.execute(store.ingest_rejects.select()).all() == []
    store.KEEP_LOADS = 50
    ingest_file(write(tmp_path / "all-bad.jsonl", bad), store, today=TODAY)
    latest = node_quality(store, NOW, rejects_per_load=10).loads[0]
    assert (latest.rejected, latest.rejects_kept, len(latest.rejects)) == (MAX_ERROR_DETAILS + 5, MAX_ERROR_DETAILS, 10)
    assert [r.line_no for r in latest.rejects] == list(range(1, 11))
    # However many loads and rejects are asked for, a report holds at most MAX_REPORT_REJECTS of them.
    ingest_file(write(tmp_path / "all-bad.jsonl", bad), store, today=TODAY)
    ingest_file(write(tmp_path / "all-bad.jsonl", bad), store, today=TODAY)
    shown = [len(ld.rejects) for ld in node_quality(store, NOW, loads=50, rejects_per_load=1000).loads]
    assert shown[:4] == [1000, 1000, 0, 0] and sum(shown) == MAX_REPORT_REJECTS
    # A CSV whose header is wrong loads nothing: the report says why.
    csv = tmp_path / "tax.csv"
    csv.write_text("uscc,as_of,source,period,horoscope\n", encoding="utf-8")
    with pytest.raises(ValueError, match="horoscope"):
        ingest_file(csv, store, category="tax", today=TODAY)
    refused = node_quality(store, NOW).loads[0]
    assert (refused.file_name, refused.category, refused.lines_read, refused.rejected) == ("tax.csv", "tax", 0, 0)
    assert "unknown horoscope" in refused.failure and str(tmp_path) not in refused.failure


async def test_the_disputes_queue_puts_overdue_first(store: NodeStore, tmp_path: Path):
    ingest_file(write(tmp_path / "dept.jsonl"), store, today=TODAY)
    key = next(iter(store.fetch_records(A, ["judicial"]))).record_id

    def dispute(n: int, filed_days_ago: int, status: str = "open") -> None:
        filed = NOW - filed_days_ago * DAY_MS
        store.put_dispute({"dispute_id": f"{n:032d}", "record_key": key, "uscc": A, "reason": "wrong " * 100,
                           "filed_by": f"enterprise/{A}", "filed_at_ms": filed, "due_ms": filed + 20 * DAY_MS,
                           "envelope": b"x", "status": status, "resolution": ""})

    dispute(1, 2)                         # due in 18 days
    dispute(2, 25)                        # 5 days overdue
    dispute(3, 30, status="confirmed")    # answered: not in the queue
    dispute(4, 21)                        # 1 day overdue
    q = node_quality(store, NOW).disputes
    assert (q.open, q.overdue) == (3, 2)
    assert [(d.dispute_id[-1], d.overdue, d.days_left) for d in q.disputes] == [("2", True, -5), ("4", True, -1),
                                                                                ("1", False, 18)]
    assert all(d.category == "judicial" and d.record_id == key and len(d.reason) == 200 for d in q.disputes)


def test_a_kept_reason_leaves_out_the_lines_values():
    from node.ingest import stored_reason

    assert stored_reason("'王建华' is 3 characters long") == "'…' is 3 characters long"
    assert stored_reason('must be one of A, B, got "it\'s"') == "must be one of A, B, got '…'"
    assert stored_reason("must be a whole number from 0 to 9, got -12.5e3") == \
        "must be a whole number from 0 to 9, got a number"
    assert stored_reason("is in the future (2030-01-01 is after 2026-07-01)") == \
        "is in the future (2030-01-01 is after 2026-07-01)"  # dates of the rule, kept
    assert len(stored_reason("x" * 5000)) == 500


# --- the CLI --------------------------------------------------------------------------------------

def test_cli_json_matches_the_report_and_the_table_flags_stale_rows(db_url: str, tmp_path: Path, capsys):
    store = NodeStore(db_url)
    store.create_schema()
    try:
        # The CLI judges on the real day: the file's dates are counted back from it.
        ingest_file(write(tmp_path / "dept.jsonl", make_lines(dt.datetime.now(CHINA).date())), store)
    finally:
        store.close()
    assert main(["node", "quality", "--db", db_url, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    store = NodeStore(db_url)
    try:
        expected = node_quality(store, printed["generated_at_ms"]).to_json()
    finally:
        store.close()
    assert printed == expected
    assert printed["loads"][0]["rejected"] == 5 and printed["enterprises"] == 4
    assert {(r["line_no"], r["field"]) for r in printed["loads"][0]["rejects"]} == set(BAD.items())

    assert main(["node", "quality", "--db", db_url]) == 0
    out = capsys.readouterr().out
    stale_rows = [line for line in out.splitlines() if line.rstrip().endswith("STALE")]
    assert any("旧税务系统" in line and "151 d" in line for line in stale_rows), out
    assert any("社保局" in line and "92 d" in line for line in stale_rows), out
    assert any(line.startswith("social_security") for line in stale_rows), out  # the category row too
    assert not any("法院" in line or "税务局" in line or "monthly" in line and line.startswith("tax ")
                   for line in stale_rows), out  # fresh sources, and the tax category whose newest is fresh
    assert "credit_rating" in out and "must be one of A, B, M, C, D, got '…'" in out

    assert main(["node", "quality", "--db", db_url, "--days", "0"]) == 2
    assert "--days: must be from 1 to 366, got 0" in capsys.readouterr().err


def test_cli_refuses_a_database_that_is_no_node_store(databases, tmp_path: Path, capsys):
    if databases.backend == "sqlite":
        missing = f"sqlite:///{tmp_path / 'typo.db'}"
        assert main(["node", "quality", "--db", missing]) == 2
        assert "typo.db does not exist" in capsys.readouterr().err
        assert not (tmp_path / "typo.db").exists()  # not created by asking
    empty = databases.new("empty")
    if databases.backend == "sqlite":
        (tmp_path / "empty.db").touch()  # a file that is no database yet
    cli_common._Output.json_printed = False  # another test's JSON answer, in this same process
    assert main(["node", "quality", "--db", empty, "--json"]) == 2
    captured = capsys.readouterr()
    assert "holds no node store (it is empty)" in captured.err
    error = json.loads(captured.out)["error"]
    assert error["exit_status"] == 2 and "holds no node store" in error["message"]
    # The registry's database is no node's.
    registry_db = databases.new("registry")
    RegistryStore(registry_db).create_schema()
    assert main(["node", "quality", "--db", registry_db]) == 2
    assert "is a registry's database, not a node's" in capsys.readouterr().err
    # A node's database from before the load tables: upgrade it first, says the message.
    old = databases.new("old")
    engine = NodeStore(old).engine
    with engine.begin() as conn:
        command.upgrade(migrations.config("node", conn), "0003")
    engine.dispose()
    assert main(["node", "quality", "--db", old]) == 2
    err = capsys.readouterr().err
    assert "schema revision 0003" in err and "xinyi db upgrade" in err, err


# --- over gRPC ------------------------------------------------------------------------------------

async def _refused(call) -> ClientError:
    try:
        await call
    except ClientError as e:
        return e
    raise AssertionError("the call was not refused")


async def test_the_operator_reads_the_same_report_over_tls(network: Network, tmp_path: Path):
    node = network.nodes["510100"]
    await asyncio.to_thread(ingest_file, write(tmp_path / "dept.jsonl"), node.store)
    judicial = SEED["510100"][1]
    filed = await network.enterprise().dispute("510100", judicial.key, "the amount is wrong")
    # One query answered by the node (through the registry), one it refuses (no such consent).
    record = await network.enterprise().grant(BANK, "credit_assessment", ["registration"], 30)
    await network.bank().query(CHENGDU_FIRM, ["registration"], "credit_assessment", record.consent_id)
    await _refused(network.bank().query_node(network.node_addr("510100"), "510100", CHENGDU_FIRM, ["registration"],
                                             "credit_assessment", "0" * 32))

    operator = network._track(OperatorClient(network.identity(Role.NODE, "510100"), network.node_addr("510100")))
    got = await operator.report()
    assert isinstance(got, DataQuality) and got.node_id == "510100"
    expected = await asyncio.to_thread(node_quality, node.store, got.generated_at_ms, node_id="510100")
    same = lambda q: {k: v for k, v in q.to_json().items() if k != "sync"}  # noqa: E731 - sync is live over RPC
    assert same(got) == same(expected)
    # The seeded Chengdu firm plus the file's four.
    assert got.enterprises == 5 and got.loads[0].rejected == 5 and got.loads[0].file_name == "dept.jsonl"
    assert {r.line_no: r.field for r in got.loads[0].rejects} == BAD
    (queued,) = got.disputes.disputes
    assert (got.disputes.open, got.disputes.overdue) == (1, 0)
    assert (queued.dispute_id, queued.category, queued.overdue, queued.days_left) == (filed.dispute_id, "judicial", False, 19)
    assert queued.due_ms - queued.filed_at_ms == 20 * DAY_MS
    today = got.queries[-1]
    assert today.day == dt.datetime.now(CHINA).date().isoformat() and today.answered >= 1 and today.refused >= 1
    s = got.sync
    assert (s.live, s.registry_configured, s.registered, s.refused_reason) == (True, True, True, "")
    assert s.registered_at_ms > 0 and s.directory_version > 0 and s.consent_freshness_ms == 30_000
    assert s.consents_confirmed_at_ms > 0 and 0 <= s.consent_sync_lag_ms and s.consents_fresh
    # The node wrote its registration down: a report read from the store alone knows it.
    offline = await asyncio.to_thread(node_quality, node.store, now_ms())
    assert offline.sync.registered and not offline.sync.live and offline.sync.registered_at_ms > 0
    assert 0 < offline.sync.consents_confirmed_at_ms <= s.consents_confirmed_at_ms
    # Bounds: chosen, and refused when out of range, naming the field.
    assert len((await operator.report(days=7)).queries) == 7
    for bound, value, most in (("days", 1000, "366"), ("loads", 51, "50"), ("rejects_per_load", 1001, "1000")):
        e = await _refused(operator.report(**{bound: value}))
        assert e.failure.code == "INVALID_ARGUMENT" and e.failure.reason == "INVALID_FIELD", e.failure
        assert e.failure.fields[0][0] == bound and f"from 1 to {most}" in e.failure.message \
            or f"from 0 to {most}" in e.failure.message, e.failure.message


async def test_a_bank_or_another_node_may_not_read_the_report(network: Network):
    node = network.nodes["510100"]
    before = await asyncio.to_thread(node.store.audit_log_size)
    for role, who in ((Role.BANK, BANK), (Role.NODE, "510000")):
        channel = network.channel(role, who, network.node_addr("510100"), Principal(Role.NODE, "510100")).channel
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await node_pb2_grpc.NodeServiceStub(channel).GetNodeReport(node_pb2.GetNodeReportRequest(), timeout=10)
        f = RpcFailure.from_error(raised.value)
        assert (f.code, f.reason) == ("PERMISSION_DENIED", "NOT_THIS_NODES_OPERATOR"), f
        assert f"{role}/{who}" in f.message and "510100" in f.message and "own identity" in f.message
    # OperatorClient will not even be built with a bank's identity.
    with pytest.raises(ValueError, match="node's identity"):
        OperatorClient(network.identity(Role.BANK, BANK), network.node_addr("510100"))
    # Both refusals are in the node's audit log.
    entries = [e.record() for e in await asyncio.to_thread(node.store.audit_entries, before, before + 100)]
    refused = [(e.caller_id, e.reason) for e in entries if e.action == "read_node_report"]
    assert [who for who, _ in refused] == [BANK, "510000"] and all("NOT_THIS_NODES_OPERATOR" in r for _, r in refused)
