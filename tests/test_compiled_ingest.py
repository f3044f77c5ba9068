"""The compiled path of ingestion (xinyi.records.categories.decode_normal_line, msgspec) must only
ever be a shortcut: for every line, ingestion returns what the one definition (parse_record_json
+ validate_line) returns, the same record or the same error. Lines are generated around the edges
each field kind has (whitespace, numbers as numbers or text, one decimal, the future, escapes,
keys given twice) and each is read both ways."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.ingest import _json_record, _parse_json, _record, ingest_file
from node.store import NodeStore, Record
from xinyi.records import uscc as uscc_codes
from xinyi.records.categories import ENVELOPE, FIELD_SPECS, RecordError, decode_normal_line

TODAY = dt.date(2026, 7, 1)
FIRM = uscc_codes.with_check_character("91510104MA6C1234X")
WRONG_CHECK = FIRM[:17] + ("0" if FIRM[17] != "0" else "1")

_TEXTS = st.one_of(
    st.sampled_from(["国家税务总局四川省税务局", "王建华", "a", "x" * 200, "x" * 201, " 前后有空格 ", "末尾换行\n", "", "   ",
                     "\u3000全角空格", "quote \" inside", "back\\slash", "line\nbreak", "\ud800"]),
    st.text(max_size=30),
)
_YUAN = st.one_of(
    st.sampled_from(["16487.10", "0.00", "0.50", "1.5", "12", "12.345", "-1.00", "-0.00", "007.00", " 12.00 ", "1e2",
                     "999999999999999.99", "1000000000000000.00", "１２.００", "nan"]),
    st.integers(-5, 10**16), st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())
_COUNT = st.one_of(st.integers(-3, 10**9 + 3), st.sampled_from(["12", " 7 ", "1.0", "x", "１２"]), st.floats(0, 10),
                   st.booleans(), st.none())
_DATE = st.one_of(st.sampled_from(["2026-06-30", "2026-07-01", "2026-07-02", "2031-01-01", "2026-02-30", "2026-7-01",
                                   "20260701", "2026-07-01T00:00:00", "0000-01-01", "2026-07-01\n", " 2026-07-01"]),
                  st.dates(dt.date(1990, 1, 1), dt.date(2030, 1, 1)).map(dt.date.isoformat), st.integers(0, 9))
_PERIOD = st.one_of(st.sampled_from(["2026-06", "2026-07", "2026-08", "2026-00", "2026-13", "2026-6", "2026-06\n", "2026/06"]),
                    st.integers(1990, 2030).flatmap(lambda y: st.integers(1, 12).map(lambda m: f"{y}-{m:02d}")))
_USCC = st.sampled_from([FIRM, WRONG_CHECK, FIRM.lower(), FIRM[:17], "91510104MA6C1234XI", 915101040000000000])


_NORMAL_VALUES = {  # what a well-behaved export writes: the compiled path takes these
    "text": st.from_regex(r"\A[\u4e00-\u4e2fA-Za-z0-9（）][\u4e00-\u4e2fA-Za-z0-9 ,.]{0,12}[\u4e00-\u4e2f0-9]\Z"),
    "yuan": st.integers(0, 10**12).map(lambda cents: f"{cents // 100}.{cents % 100:02d}"),
    "count": st.integers(0, 10**6),
    "date": st.dates(dt.date(1990, 1, 1), TODAY).map(dt.date.isoformat),
    "period": st.dates(dt.date(1990, 1, 1), TODAY).map(lambda d: f"{d:%Y-%m}"),
    "uscc": st.sampled_from([FIRM, uscc_codes.with_check_character("913101150000000A1")]),
}
_EDGES = {"text": _TEXTS, "yuan": _YUAN, "count": _COUNT, "date": _DATE, "period": _PERIOD, "uscc": _USCC}


def _value(spec) -> st.SearchStrategy:
    """Mostly a normal value, one time in ten an edge of the field's kind."""
    if spec.kind == "enum":
        normal, edge = st.sampled_from(spec.choices), st.sampled_from(["", "a", spec.choices[0].lower(), 1])
    else:
        normal, edge = _NORMAL_VALUES[spec.kind], _EDGES[spec.kind]
    return st.integers(0, 9).flatmap(lambda k: edge if k == 0 else normal)


@st.composite
def lines(draw) -> bytes:
    """A record line: each field drawn from its kind's edges, sometimes absent or null, sometimes
    an extra key, a key given twice, escapes, another spacing."""
    category = draw(st.sampled_from(sorted(FIELD_SPECS)))
    obj: dict = {"category": category} if draw(st.integers(0, 20)) else {}
    for spec in (*ENVELOPE, *FIELD_SPECS[category]):
        shape = draw(st.integers(0, 60))
        if shape == 0:
            continue  # absent
        obj[spec.name] = None if shape == 1 else draw(_value(spec))
    if draw(st.integers(0, 15)) == 0:
        obj["unknown_field"] = "x"
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    twice = draw(st.integers(0, 10))
    if twice == 0 and len(obj) > 1:  # a key given twice, the first time with another value
        key = draw(st.sampled_from(sorted(obj)))
        spelled = key if draw(st.booleans()) else "".join(f"\\u{ord(ch):04x}" for ch in key)
        text = "{" + f'"{spelled}": "999999.00", ' + text[1:]
    return text.encode("utf-8", "surrogatepass")


def _slow(line: bytes) -> Record | str:
    try:
        return _record(_parse_json(line.decode("utf-8", "surrogateescape")), None, TODAY)
    except RecordError as e:
        return f"error {e}"


def _fast(line: bytes) -> Record | str:
    try:
        return _json_record(line, None, TODAY)
    except RecordError as e:
        return f"error {e}"


@pytest.mark.slow  # a minute of make test's budget between these; CI runs them in make test-slow
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines())
def test_every_line_reads_the_same_by_the_compiled_path_and_the_definition(line: bytes):
    assert _fast(line) == _slow(line)


NORMAL = {
    "tax": {"period": "2026-06", "tax_paid": "16487.10", "credit_rating": "B"},
    "registration": {"name": "成都锦江蓉新科技有限公司", "legal_representative": "王建华", "registered_capital": "1234.50",
                     "established": "2010-05-04", "status": "active"},
    "social_security": {"period": "2026-06", "insured_headcount": 12, "contributions_paid": "8800.00"},
}


def _normal(category: str, **fields) -> bytes:
    obj = {"uscc": FIRM, "category": category, "as_of": "2026-06-30", "source": "成都市市场监督管理局", **NORMAL[category], **fields}
    return json.dumps(obj, ensure_ascii=False).encode()


@pytest.mark.parametrize("category", sorted(NORMAL))
def test_a_line_in_normal_form_takes_the_compiled_path(category: str):
    """Else the shortcut would be dead code: the result equals the definition's, and it came from msgspec."""
    line = _normal(category)
    fast = decode_normal_line(line, today=TODAY)
    assert fast is not None
    slow = _slow(line)
    assert Record(fast["uscc"], fast["category"], fast["as_of"], fast["source"], fast["fields"]) == slow
    assert list(fast["fields"]) == [s.name for s in FIELD_SPECS[category] if s.name in fast["fields"]]  # definition order


@pytest.mark.parametrize("line, why", [
    (_normal("tax").replace(b'"tax_paid"', b'"tax_paid": "999999.00", "tax_paid"'), "a key given twice"),
    (_normal("tax").replace(b'"period"', b'"tax\\u005fpaid": "999999.00", "period"'), "a key given twice, spelled with an escape"),
    (_normal("tax", tax_paid="16487.1"), "an amount with one decimal"),
    (_normal("tax", tax_paid=16487.10), "an amount as a JSON number"),
    (_normal("registration", name="王建华\n"), "text strip() would change (a final newline)"),
    (_normal("tax", period="2026-08"), "a period after today's month"),
    (_normal("tax", as_of="2026-07-02"), "a date after today"),
    (_normal("tax", uscc=WRONG_CHECK), "a wrong check character (the allow-list is the definition's)"),
    (_normal("social_security", insured_headcount="12"), "a count as text (CSV style)"),
])
def test_lines_not_in_normal_form_are_left_to_the_definition(line: bytes, why: str):
    assert decode_normal_line(line, today=TODAY) is None, why


def test_a_key_given_twice_is_refused_by_a_load_as_before(tmp_path, db_url):
    """The duplicate-key defect (a tax_paid of 100.00 loaded as 999999.00) stays fixed on the fast path."""
    good = _normal("tax")
    twice = good.replace(b'"tax_paid": "16487.10"', b'"tax_paid": "100.00", "tax_paid": "999999.00"')
    escaped = good.replace(b'"tax_paid": "16487.10"', b'"tax_paid": "100.00", "tax\\u005fpaid": "999999.00"')
    path = tmp_path / "tax.jsonl"
    path.write_bytes(b"\n".join([twice, escaped, good]) + b"\n")
    store = NodeStore(db_url)
    store.create_schema()
    try:
        report = ingest_file(path, store, today=TODAY)
        assert (report.inserted, report.error_count) == (1, 2)
        assert [str(e).split(": ", 1)[1] for e in report.errors] == [
            "tax_paid: is given more than once in one object; each key may appear once"] * 2
        [stored] = store.fetch_records(FIRM, ["tax"])
        assert stored.fields["tax_paid"] == "16487.10"
    finally:
        store.close()


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.text(), st.integers(-(2**63), 2**63 - 1)), max_size=6))
def test_a_records_key_is_computed_over_the_same_bytes_as_before(fields: dict):
    """Record.content() encodes with msgspec; a stored record's key must not change, or loading
    a file again would insert its records twice."""
    record = Record(FIRM, "tax", "2026-06-30", "src", fields)
    assert record.content()[1] == record.fields_json  # json.dumps, sorted, compact, not ASCII-escaped


def test_a_line_nesting_too_deeply_before_its_category_is_one_refused_line_not_a_failed_load(tmp_path):
    """msgspec buffers the keys before the union's tag ("category"); an unknown key nested a
    hundred thousand arrays deep there made it raise RecursionError, which ended the whole load
    with a traceback (a hostile supplier's one line stopping every other record). The definition
    refuses that line and goes on."""
    deep = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b", " + _normal("tax")[1:]
    assert _fast(deep) == _slow(deep) == "error line: nests arrays or objects too deeply"
    path = tmp_path / "tax.jsonl"
    path.write_bytes(deep + b"\n" + _normal("tax") + b"\n")
    store = NodeStore(f"sqlite:///{tmp_path / 'node.db'}")
    store.create_schema()
    try:
        report = ingest_file(path, store, today=TODAY)
        assert (report.inserted, report.error_count) == (1, 1)
    finally:
        store.close()


@pytest.mark.parametrize("blank", [b"\x1c", b"\x1d\x1e\x1f", b" \x1f\t\r"])
def test_a_line_of_only_separator_characters_is_blank_as_before(tmp_path, blank: bytes):
    """U+001C..U+001F are whitespace to str.strip(), which decided what a blank line was; the
    bytes pre-check (bytes.strip() knows only space, \\t\\n\\r\\v\\f) made them record lines that
    failed as 'not valid JSON'."""
    path = tmp_path / "tax.jsonl"
    path.write_bytes(blank + b"\n" + _normal("tax") + b"\n")
    store = NodeStore(f"sqlite:///{tmp_path / 'node.db'}")
    store.create_schema()
    try:
        report = ingest_file(path, store, today=TODAY)
        assert (report.lines_read, report.inserted, report.error_count) == (1, 1, 0), report.errors
    finally:
        store.close()
