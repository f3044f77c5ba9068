"""Ingestion: field validation (xinyi.records.categories), file loading (node.ingest) and the synthetic
data generator (scripts/gen_data.py), on SQLite and PostgreSQL (the db_url fixture)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from node.ingest import MAX_ERROR_DETAILS, IngestProgress, format_progress, ingest_file
from node.store import NodeStore
from xinyi.records import uscc as uscc_codes
from xinyi.records.categories import FIELD_SPECS, INGESTIBLE_CATEGORIES, RecordError, validate_fields, validate_line
from xinyi.records.vocab import CATEGORIES

ROOT = Path(__file__).resolve().parent.parent
TODAY = dt.date(2026, 7, 1)
FIRM = uscc_codes.with_check_character("91510104MA6C1234X")
OTHER_FIRM = uscc_codes.with_check_character("913101150000000A1")


def _load_gen_data():
    spec = importlib.util.spec_from_file_location("gen_data", ROOT / "scripts" / "gen_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen_data = _load_gen_data()


@pytest.fixture
def store(db_url: str):
    s = NodeStore(db_url)
    s.create_schema()
    yield s
    s.close()


def line(category: str, uscc: str = FIRM, **fields) -> dict:
    """A valid line of `category`, with `fields` overriding (None removes a field)."""
    obj = {"uscc": uscc, "category": category, "as_of": "2026-06-30", "source": "成都市市场监督管理局", **VALID_FIELDS[category]}
    obj.update(fields)
    return {k: v for k, v in obj.items() if v is not None}


# Money deliberately in every accepted shape: JSON number, numeric string, one decimal.
VALID_FIELDS = {
    "registration": {
        "name": "成都锦江蓉新科技有限公司",
        "legal_representative": "王建华",
        "registered_capital": 1234.5,
        "established": "2010-05-04",
        "status": "active",
    },
    "tax": {"period": "2026-05", "tax_paid": "1234.5", "credit_rating": "A"},
    "social_security": {"period": "2026-05", "insured_headcount": 12, "contributions_paid": "1234.50"},
    "judicial": {
        "case_no": "(2025)川0104民初1234号",
        "court": "成都市锦江区人民法院",
        "filed": "2025-03-01",
        "role": "defendant",
        "amount": 1234.50,
        "status": "pending",
    },
    "admin_penalty": {
        "decision_no": "成锦市监罚〔2025〕12号",
        "authority": "成都市锦江区市场监督管理局",
        "decided": "2025-04-02",
        "reason": "未按规定公示年度报告",
        "amount": "1234.5",
    },
    "dishonesty_list": {
        "list_name": "严重失信主体名单",
        "authority": "四川省发展和改革委员会",
        "listed": "2025-09-01",
        "reason": "拒不履行法院生效判决",
    },
}
MONEY_FIELD = {"registration": "registered_capital", "tax": "tax_paid", "social_security": "contributions_paid", "judicial": "amount", "admin_penalty": "amount"}


def write_jsonl(path: Path, items: list) -> Path:
    """Each item is a dict (dumped as JSON), a str (written as is) or bytes (written raw)."""
    with path.open("wb") as f:
        for item in items:
            data = item if isinstance(item, bytes) else (item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)).encode()
            f.write(data + b"\n")
    return path


# --- xinyi.records.categories ----------------------------------------------------------------------------


def test_field_specs_cover_the_required_categories_within_the_vocabulary():
    assert set(FIELD_SPECS) >= {"registration", "tax", "social_security", "judicial", "admin_penalty"}
    assert set(FIELD_SPECS) <= set(CATEGORIES)
    assert INGESTIBLE_CATEGORIES == tuple(c for c in CATEGORIES if c in FIELD_SPECS)


@pytest.mark.parametrize("value", [1234.5, "1234.5", "1234.50", Decimal("1234.500"), " 1234.5 "])
def test_money_normalizes_to_two_decimals(value):
    fields = validate_fields("tax", {"period": "2026-05", "tax_paid": value, "credit_rating": "B"}, today=TODAY)
    assert fields["tax_paid"] == "1234.50"


def test_whole_yuan_and_large_amounts_stay_exact():
    fields = validate_fields("tax", {"period": "2026-05", "tax_paid": 123456789012345, "credit_rating": "B"}, today=TODAY)
    assert fields["tax_paid"] == "123456789012345.00"
    fields = validate_fields("tax", {"period": "2026-05", "tax_paid": "99999999999999.99", "credit_rating": "B"}, today=TODAY)
    assert fields["tax_paid"] == "99999999999999.99"


def test_record_error_names_field_and_value():
    with pytest.raises(RecordError) as e:
        validate_line(line("tax", tax_paid="12.345"), today=TODAY)
    assert e.value.field == "tax_paid"
    assert str(e.value) == "tax_paid: must be a non-negative amount in yuan with at most 2 decimals, got '12.345'"


def test_category_without_field_definitions_is_refused_with_reason():
    with pytest.raises(RecordError) as e:
        validate_line({**line("tax"), "category": "customs"}, today=TODAY)
    assert e.value.field == "category"
    assert "no field definitions yet" in e.value.reason


def test_optional_field_may_be_absent_or_given():
    assert "address" not in validate_fields("registration", VALID_FIELDS["registration"], today=TODAY)
    with_address = validate_fields("registration", {**VALID_FIELDS["registration"], "address": " 成都市锦江区红星路1号 "}, today=TODAY)
    assert with_address["address"] == "成都市锦江区红星路1号"


# --- node.ingest: JSON Lines ----------------------------------------------------------------


@pytest.mark.parametrize("category", ["registration", "tax", "social_security", "judicial", "admin_penalty"])
def test_valid_line_of_each_category_loads_normalized(store, tmp_path, category):
    path = write_jsonl(tmp_path / "in.jsonl", [line(category)])
    report = ingest_file(path, store, today=TODAY)
    assert (report.lines_read, report.inserted, report.error_count) == (1, 1, 0), report.errors
    [record] = store.fetch_records(FIRM, [category])
    assert (record.uscc, record.category, record.as_of, record.source) == (FIRM, category, "2026-06-30", "成都市市场监督管理局")
    assert record.fields[MONEY_FIELD[category]] == "1234.50"
    assert set(record.fields) == {s.name for s in FIELD_SPECS[category] if s.required}


# (line written, field the reason must start with, words the reason must contain)
BAD_LINES = [
    (line("tax", uscc=FIRM[:17] + ("0" if FIRM[17] != "0" else "1")), "uscc", "check character"),
    (line("tax", uscc=FIRM[:17]), "uscc", "has 17 characters"),
    (line("tax", uscc="91510104ma6c1234xz"), "uscc", "outside the USCC alphabet"),
    ({**line("tax"), "category": "weather"}, "category", "unknown category 'weather'"),
    ({**line("tax"), "category": "customs"}, "category", "no field definitions yet"),
    (line("tax", credit_rating=None), "credit_rating", "is required"),
    (line("tax", remark="late"), "remark", "is not a field of tax"),
    (line("tax", credit_rating="E"), "credit_rating", "must be one of A, B, M, C, D, got 'E'"),
    (line("registration", status="closed"), "status", "must be one of active, revoked, cancelled, suspended"),
    (line("tax", as_of="2026-02-30"), "as_of", "not a calendar date"),
    (line("tax", as_of="2026/06/30"), "as_of", "must be a date YYYY-MM-DD"),
    (line("judicial", filed="2026-07-02"), "filed", "in the future"),
    (line("tax", period="2026-13"), "period", "must be a month YYYY-MM"),
    (line("tax", tax_paid=-5), "tax_paid", "must be a non-negative amount"),
    (line("tax", tax_paid="12.345"), "tax_paid", "at most 2 decimals, got '12.345'"),
    ('{"uscc": "%s", "category": "tax", "as_of": "2026-06-30", "source": "x", "period": "2026-05", "tax_paid": 12.345, "credit_rating": "A"}' % FIRM,
     "tax_paid", "at most 2 decimals, got '12.345'"),
    (line("social_security", insured_headcount="many"), "insured_headcount", "must be a whole number"),
    (line("registration", name=42), "name", "must be non-empty text"),
    ('{"uscc": "%s", "category": "tax",' % FIRM, "line", "not valid JSON"),
    ("[1, 2]", "line", "must be a JSON object"),
    # A key given twice: json keeps the last value silently; the line is refused instead.
    (json.dumps(line("tax", tax_paid="100.00"))[:-1] + ', "tax_paid": "999999.00"}', "tax_paid", "given more than once"),
    (json.dumps(line("tax"))[:-1] + ', "uscc": "%s"}' % OTHER_FIRM, "uscc", "given more than once"),
    (json.dumps(line("tax"))[:-1] + ', "remark": {"by": "a", "by": "b"}}', "remark.by", "given more than once"),
    (json.dumps(line("tax"))[:-1] + ', "notes": [1, {"x": {"y": 1, "y": 2}}]}', "notes[1].x.y", "given more than once"),
    ("[" * 100_000, "line", "nests arrays or objects too deeply"),
    (b'{"uscc": "\xff\xfe"}', "line", "not valid UTF-8"),
]


def test_bad_lines_are_reported_by_line_number_and_good_lines_load(store, tmp_path):
    items, expected, good = [], {}, 0
    for bad, field, words in BAD_LINES:
        items.append(line("tax", period=f"20{10 + good // 12:02d}-{good % 12 + 1:02d}"))  # distinct good records
        good += 1
        items.append(bad)
        expected[len(items)] = (field, words)
    items.append("")  # blank lines are skipped, not errors
    items.append(line("judicial"))
    good += 1
    path = write_jsonl(tmp_path / "mixed.jsonl", items)

    report = ingest_file(path, store, today=TODAY)

    assert {e.line_no for e in report.errors} == set(expected)
    for error in report.errors:
        field, words = expected[error.line_no]
        assert error.reason.startswith(f"{field}: "), error
        assert words in error.reason, error
        assert error.path == path
    assert (report.lines_read, report.inserted, report.duplicates, report.error_count) == (good + len(BAD_LINES), good, 0, len(BAD_LINES))
    assert store.count_records() == good


def test_loading_the_same_file_twice_inserts_nothing_the_second_time(store, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [line(c) for c in FIELD_SPECS] + [line("tax", uscc=OTHER_FIRM)])
    first = ingest_file(path, store, today=TODAY)
    second = ingest_file(path, store, today=TODAY)
    lines = len(FIELD_SPECS) + 1
    assert (first.inserted, first.duplicates) == (lines, 0)
    assert (second.inserted, second.duplicates, second.error_count) == (0, lines, 0)
    assert store.count_records() == lines


def test_repeated_line_within_a_file_counts_as_duplicate(store, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [line("tax"), line("tax"), line("tax", tax_paid="1234.50")])
    report = ingest_file(path, store, today=TODAY)
    # "1234.5" and "1234.50" normalize to the same record.
    assert (report.inserted, report.duplicates) == (1, 2)


def test_category_argument_fills_in_and_guards_jsonl(store, tmp_path):
    without_category = {k: v for k, v in line("tax").items() if k != "category"}
    path = write_jsonl(tmp_path / "tax.jsonl", [without_category, line("judicial")])
    report = ingest_file(path, store, category="tax", today=TODAY)
    assert report.inserted == 1
    [error] = report.errors
    assert error.line_no == 2 and error.reason.startswith("category: is 'judicial'")


def test_unknown_category_argument_is_refused_before_reading(store, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [line("tax")])
    with pytest.raises(ValueError, match="no field definitions yet"):
        ingest_file(path, store, category="customs")
    assert store.count_records() == 0


def test_error_details_are_capped_but_all_counted(store, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["not json"] * (MAX_ERROR_DETAILS + 5))
    report = ingest_file(path, store, today=TODAY)
    assert report.error_count == MAX_ERROR_DETAILS + 5
    assert len(report.errors) == MAX_ERROR_DETAILS
    assert report.errors[-1].line_no == MAX_ERROR_DETAILS


def test_summary_is_one_line_with_the_counts(store, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [line("tax"), "oops"])
    summary = ingest_file(path, store, today=TODAY).summary()
    assert "\n" not in summary
    assert summary.startswith("in.jsonl: 2 lines, 1 new, 0 already present, 1 bad in ")


# --- node.ingest: CSV -----------------------------------------------------------------------


def test_csv_with_category_loads(store, tmp_path):
    path = tmp_path / "tax.csv"
    path.write_bytes(
        "\ufeffuscc,as_of,source,period,tax_paid,credit_rating\r\n"  # BOM and CRLF, as spreadsheets write
        f'{FIRM},2026-06-15,"国家税务总局四川省税务局, 锦江区",2026-05,1234.5,A\r\n'
        f"{FIRM},2026-06-15,国家税务总局四川省税务局,2026-04,,A\r\n"
        "\r\n"
        f"{OTHER_FIRM},2026-06-15,国家税务总局上海市税务局,2026-05,88,C\r\n"
        f"{FIRM},2026-06-15,国家税务总局四川省税务局,2026-03,1.005\r\n".encode()
    )
    report = ingest_file(path, store, category="tax", today=TODAY)
    assert (report.lines_read, report.inserted) == (4, 2)
    assert [(e.line_no, e.reason.split(":")[0]) for e in report.errors] == [(3, "tax_paid"), (6, "line")]
    [record] = store.fetch_records(FIRM, ["tax"])
    assert record.source == "国家税务总局四川省税务局, 锦江区"
    assert record.fields == {"period": "2026-05", "tax_paid": "1234.50", "credit_rating": "A"}
    assert store.fetch_records(OTHER_FIRM, ["tax"])[0].fields["tax_paid"] == "88.00"


def test_csv_without_category_raises(store, tmp_path):
    path = tmp_path / "tax.csv"
    path.write_text("uscc,as_of,source,period,tax_paid,credit_rating\n")
    with pytest.raises(ValueError, match="CSV files need --category"):
        ingest_file(path, store)


def test_csv_header_must_match_the_category(store, tmp_path):
    path = tmp_path / "tax.csv"
    path.write_text("uscc,as_of,source,period,paid,credit_rating\n")
    with pytest.raises(ValueError, match="missing tax_paid; unknown paid"):
        ingest_file(path, store, category="tax")


# --- progress -------------------------------------------------------------------------------


def test_progress_is_reported_after_each_batch(store, tmp_path):
    items = [line("tax", period=f"20{10 + i // 12:02d}-{i % 12 + 1:02d}") for i in range(34)] + ["bad"]
    path = write_jsonl(tmp_path / "510100.jsonl", items)
    seen: list[IngestProgress] = []
    ingest_file(path, store, batch_size=10, progress=seen.append, today=TODAY)

    assert [p.lines_read for p in seen] == [10, 20, 30, 35]
    assert [p.inserted for p in seen] == [10, 20, 30, 34]
    assert seen[-1].errors == 1
    assert all(a.bytes_read < b.bytes_read for a, b in zip(seen, seen[1:]))
    assert seen[-1].bytes_read == seen[-1].total_bytes == path.stat().st_size
    assert format_progress(seen[-1]) == "ingest 510100.jsonl: 100% 35 lines, 34 new, 1 bad"
    assert 0 < seen[0].percent < 100


# --- scripts/gen_data.py --------------------------------------------------------------------


def read_lines(path: Path) -> list[dict]:
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]


def test_gen_data_writes_valid_routed_files(tmp_path):
    result = gen_data.generate(tmp_path, 80, seed=7)
    assert {p.name for p in tmp_path.iterdir()} == {"510000.jsonl", "510100.jsonl", "310000.jsonl", "enterprises.json"}
    listing = json.loads((tmp_path / "enterprises.json").read_text(encoding="utf-8"))
    assert listing == result["enterprises"] and len(listing) == 80
    assert len({e["uscc"] for e in listing}) == 80
    assert all(uscc_codes.is_valid(e["uscc"]) and uscc_codes.area_code(e["uscc"]) == e["area"] for e in listing)

    lines = {node: read_lines(tmp_path / f"{node}.jsonl") for node in ("510000", "510100", "310000")}
    assert {node: len(rows) for node, rows in lines.items()} == result["records"]
    for node, rows in lines.items():
        for row in rows:
            area = uscc_codes.area_code(row["uscc"])
            assert uscc_codes.is_valid(row["uscc"])
            assert row["category"] in gen_data.holdings(area)[node], (node, row)
    assert all(uscc_codes.area_code(r["uscc"]).startswith("5101") for r in lines["510100"])
    assert all(uscc_codes.area_code(r["uscc"]).startswith("31") for r in lines["310000"])
    assert {r["category"] for r in lines["510000"] if uscc_codes.area_code(r["uscc"]).startswith("5101")} <= {"tax", "admin_penalty", "dishonesty_list"}
    # 12 months of tax for every Sichuan firm.
    sichuan = [e for e in listing if e["area"].startswith("51")]
    assert sum(r["category"] == "tax" for r in lines["510000"]) == 12 * len(sichuan)


def test_gen_data_is_deterministic_for_a_seed(tmp_path):
    names = ("510000.jsonl", "510100.jsonl", "310000.jsonl", "enterprises.json")
    gen_data.generate(tmp_path / "a", 30, seed=3)
    gen_data.generate(tmp_path / "b", 30, seed=3)
    gen_data.generate(tmp_path / "c", 30, seed=4)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "enterprises.json").read_bytes() != (tmp_path / "c" / "enterprises.json").read_bytes()


def test_generated_files_ingest_without_errors(store, tmp_path):
    result = gen_data.generate(tmp_path, 60, seed=11)
    for node, path in result["files"].items():
        report = ingest_file(path, store)  # today's real date: generated data is never in the future
        assert report.errors == [], report.errors[:3]
        assert report.inserted == report.lines_read == result["records"][node]
    assert store.count_records() == sum(result["records"].values())
