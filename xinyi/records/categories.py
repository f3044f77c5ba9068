"""Field definitions for the categories a node ingests, and the validation of one record.

A record line is a flat JSON object: uscc, category, as_of, source, then the category's own
fields. `validate_line` checks it against FIELD_SPECS and returns it normalized (amounts as
"1234.50", text stripped) with the category's fields under "fields"; node.ingest builds the
stored node.store.Record from that. Domain core: no gRPC, no storage.

`decode_normal_line` does the same for one JSON line of a file, faster: msgspec structs compiled
from FIELD_SPECS accept, in C, the lines that are already in normal form (what a well-behaved
export writes) and returns None for any other line, good or bad, which then goes through
parse_record_json + validate_line: results and messages stay those of the one definition, and
the compiled path only ever takes a shortcut to the same result.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Callable, Literal, Union

import msgspec

from xinyi.records import uscc as uscc_codes
from xinyi.records.vocab import CATEGORIES, category_problem

__all__ = [
    "ENVELOPE",
    "EXPECTED_REFRESH",
    "FIELD_SPECS",
    "INGESTIBLE_CATEGORIES",
    "FieldSpec",
    "RecordError",
    "Refresh",
    "decode_normal_line",
    "ingest_problem",
    "month_index",
    "parse_record_json",
    "validate_fields",
    "validate_line",
]


class RecordError(ValueError):
    """One field of a record is wrong; str() reads "field: reason"."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class FieldSpec:
    """One field of a category: its name, its kind (a key of _NORMALIZERS) and whether it must be present."""

    name: str
    kind: str
    required: bool = True
    choices: tuple[str, ...] = ()  # for kind "enum"
    max_length: int = 200  # for kind "text"


FIELD_SPECS: dict[str, tuple[FieldSpec, ...]] = {
    "registration": (
        FieldSpec("name", "text"),
        FieldSpec("legal_representative", "text"),
        FieldSpec("registered_capital", "yuan"),
        FieldSpec("established", "date"),
        FieldSpec("status", "enum", choices=("active", "revoked", "cancelled", "suspended")),
        FieldSpec("address", "text", required=False),
    ),
    "tax": (
        FieldSpec("period", "period"),
        FieldSpec("tax_paid", "yuan"),
        FieldSpec("credit_rating", "enum", choices=("A", "B", "M", "C", "D")),
    ),
    "social_security": (
        FieldSpec("period", "period"),
        FieldSpec("insured_headcount", "count"),
        FieldSpec("contributions_paid", "yuan"),
    ),
    "judicial": (
        FieldSpec("case_no", "text"),
        FieldSpec("court", "text"),
        FieldSpec("filed", "date"),
        FieldSpec("role", "enum", choices=("plaintiff", "defendant")),
        FieldSpec("amount", "yuan"),
        FieldSpec("status", "enum", choices=("pending", "closed", "enforcement")),
    ),
    "admin_penalty": (
        FieldSpec("decision_no", "text"),
        FieldSpec("authority", "text"),
        FieldSpec("decided", "date"),
        FieldSpec("reason", "text", max_length=2000),
        FieldSpec("amount", "yuan"),
    ),
    # The serious dishonesty / joint punishment lists: who listed the firm, when, and why.
    "dishonesty_list": (
        FieldSpec("list_name", "text"),
        FieldSpec("authority", "text"),
        FieldSpec("listed", "date"),
        FieldSpec("reason", "text", max_length=2000),
    ),
}

@dataclass(frozen=True)
class Refresh:
    """How often a category's supplying departments send new data, and when a node's newest
    record of it (per source) counts as stale: its as_of more than `stale_after_days` before
    the node's today. The margin over the cadence covers the departments' filing lag."""

    cadence: str  # "monthly", "quarterly", "yearly" or "event-driven"
    stale_after_days: int


# Every category of the vocabulary, ingestible or not yet. Periodic data (tax returns, social
# insurance and provident fund contributions, utility bills, customs declarations) arrives every
# month, about two weeks after the month closes: 45 days. Registration is confirmed by the annual
# report (due by 30 June): 400 days. Event-driven lists (courts, penalties, licences, honours) are
# exported whenever something happens, so a quiet month proves little: a longer window.
EXPECTED_REFRESH: dict[str, Refresh] = {
    "registration": Refresh("yearly", 400),
    "tax": Refresh("monthly", 45),
    "social_security": Refresh("monthly", 45),
    "provident_fund": Refresh("monthly", 45),
    "utilities": Refresh("monthly", 45),
    "customs": Refresh("monthly", 45),
    "judicial": Refresh("event-driven", 90),
    "admin_license": Refresh("event-driven", 180),
    "admin_penalty": Refresh("event-driven", 90),
    "dishonesty_list": Refresh("event-driven", 90),
    "honors": Refresh("event-driven", 365),
    "real_estate": Refresh("quarterly", 120),
    "intellectual_property": Refresh("event-driven", 180),
}
assert set(EXPECTED_REFRESH) == set(CATEGORIES), "every category needs an expected refresh"

# In the vocabulary's order, so that messages list them the way the rest of the network does.
INGESTIBLE_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if c in FIELD_SPECS)

# The keys every record carries besides its category's fields. source is a String(128) column.
ENVELOPE: tuple[FieldSpec, ...] = (
    FieldSpec("uscc", "uscc"),
    FieldSpec("as_of", "date"),
    FieldSpec("source", "text", max_length=128),
)
_ENVELOPE_KEYS = frozenset({"uscc", "category", "as_of", "source"})
_FIELD_NAMES = {category: frozenset(spec.name for spec in specs) for category, specs in FIELD_SPECS.items()}

_CENT = Decimal("0.01")
# Far above any real amount; bounds the digits a line can make us carry around.
_MAX_YUAN = Decimal(10) ** 15
_MAX_COUNT = 10**9
# ASCII digits only: \d would also take full-width digits, which int() and Decimal() accept.
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})")
_DIGITS = re.compile(r"[0-9]+")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_record_json(text: str) -> Any:
    """Parse one record line (or a correction's fields) as JSON, exactly and unambiguously.

    Numbers with a fraction become Decimal, so 12.345 never passes through a float before it is
    checked. A key given twice in one object, at any depth, is refused: json keeps the last
    value silently, so {"tax_paid": "100.00", ..., "tax_paid": "999999.00"} would load a figure
    the department may not have meant. Raises RecordError ("line" for broken JSON, the key's path
    for a repeated key).
    """
    try:
        obj = _RECORD_JSON.decode(text)
    except json.JSONDecodeError as e:
        raise RecordError("line", f"is not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise RecordError("line", "nests arrays or objects too deeply") from None
    repeated = _repeated_key_in(obj)
    if repeated is not None:
        path = repeated.path if len(repeated.path) <= 80 else repeated.path[:77] + "..."
        raise RecordError(path, "is given more than once in one object; each key may appear once")
    return obj


class _RepeatedKey:
    """Stands in for an object that repeats a key until the whole text is parsed, so that the
    error can name the key's full path (inner objects are built before the keys around them)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict | _RepeatedKey:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                return _RepeatedKey(key)
            seen.add(key)
    for key, value in pairs:
        inner = _repeated_key_in(value)
        if inner is not None:
            return _RepeatedKey(f"{key}{inner.path}" if inner.path.startswith("[") else f"{key}.{inner.path}")
    return obj


def _repeated_key_in(value: Any) -> _RepeatedKey | None:
    if isinstance(value, _RepeatedKey):
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            inner = _repeated_key_in(item)
            if inner is not None:
                return _RepeatedKey(f"[{i}]{inner.path}" if inner.path.startswith("[") else f"[{i}].{inner.path}")
    return None


_RECORD_JSON = json.JSONDecoder(parse_float=Decimal, object_pairs_hook=_unique_keys)


def validate_line(obj: Any, *, today: dt.date | None = None) -> dict:
    """Check one parsed record line; return {uscc, category, as_of, source, fields} normalized.

    Raises RecordError naming the first offending field. `today` bounds dates (default: today).
    """
    if not isinstance(obj, dict):
        raise RecordError("line", f"must be a JSON object, got {_shown(obj)}")
    today = today or dt.date.today()
    record = {"uscc": _normalize(ENVELOPE[0], obj.get("uscc"), today)}
    record["category"] = _checked_category(obj.get("category"))
    for spec in ENVELOPE[1:]:
        record[spec.name] = _normalize(spec, obj.get(spec.name), today)
    fields = {k: v for k, v in obj.items() if k not in _ENVELOPE_KEYS}
    record["fields"] = validate_fields(record["category"], fields, today=today)
    return record


def validate_fields(category: str, fields: dict, *, today: dt.date | None = None) -> dict:
    """Check a category's fields; return them normalized, in definition order.

    Null counts as absent: an error for a required field, nothing for an optional one.
    """
    specs = FIELD_SPECS[_checked_category(category)]
    today = today or dt.date.today()
    known = _FIELD_NAMES[category]
    unknown = [name for name in fields if name not in known]
    if unknown:
        raise RecordError(unknown[0], f"is not a field of {category}; its fields are {', '.join(s.name for s in specs)}")
    normalized = {}
    for spec in specs:
        value = fields.get(spec.name)
        if value is None and spec.required:
            raise RecordError(spec.name, f"is required for {category}")
        if value is not None:
            normalized[spec.name] = _normalize(spec, value, today)
    return normalized


def ingest_problem(category: Any) -> str | None:
    """Why records of `category` cannot be ingested, or None when they can."""
    if isinstance(category, str) and category in FIELD_SPECS:
        return None  # the common case, first: it runs for every line of a load
    if category is None:
        return f"is required; ingestible categories: {', '.join(INGESTIBLE_CATEGORIES)}"
    if not isinstance(category, str) or category_problem(category):
        return f"unknown category {_shown(category)}; known: {', '.join(CATEGORIES)}"
    if category not in FIELD_SPECS:
        return (
            f"{category!r} has no field definitions yet, so it cannot be ingested; "
            f"ingestible: {', '.join(INGESTIBLE_CATEGORIES)}"
        )
    return None


def _checked_category(category: Any) -> str:
    problem = ingest_problem(category)
    if problem:
        raise RecordError("category", problem)
    return category


def _normalize(spec: FieldSpec, value: Any, today: dt.date) -> Any:
    if value is None:
        raise RecordError(spec.name, "is required")
    return _NORMALIZERS[spec.kind](spec, value, today)


# --- one normalizer per kind: (spec, value, today) -> normalized value, or RecordError -------------


def _text(spec: FieldSpec, value: Any, today: dt.date) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(spec.name, f"must be non-empty text, got {_shown(value)}")
    text = value.strip()
    if _SURROGATE.search(text):
        # JSON escapes like "\ud800" decode to these; no database can store them as UTF-8.
        raise RecordError(spec.name, "is not valid Unicode text (unpaired surrogate)")
    if len(text) > spec.max_length:
        raise RecordError(spec.name, f"is {len(text)} characters long; at most {spec.max_length} allowed")
    return text


def _yuan(spec: FieldSpec, value: Any, today: dt.date) -> str:
    amount = _exact_number(value)
    if amount is not None and amount >= _MAX_YUAN:
        raise RecordError(spec.name, f"is beyond the largest accepted amount ({_MAX_YUAN:.0e} yuan), got {_shown(value)}")
    # Checked after the bound: quantize fails on numbers wider than the decimal context.
    if amount is None or amount < 0 or amount != amount.quantize(_CENT):
        raise RecordError(spec.name, f"must be a non-negative amount in yuan with at most 2 decimals, got {_shown(value)}")
    # copy_abs turns -0.00 into 0.00.
    return format(amount.quantize(_CENT).copy_abs(), "f")


def _count(spec: FieldSpec, value: Any, today: dt.date) -> int:
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())  # CSV cells arrive as text
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise RecordError(spec.name, f"must be a whole number from 0 to {_MAX_COUNT}, got {_shown(value)}")
    return value


def _date(spec: FieldSpec, value: Any, today: dt.date) -> str:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise RecordError(spec.name, f"must be a date YYYY-MM-DD, got {_shown(value)}")
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise RecordError(spec.name, f"is not a calendar date, got {_shown(value)}") from None
    if day > today:
        raise RecordError(spec.name, f"is in the future ({value} is after {today.isoformat()})")
    return value


def _period(spec: FieldSpec, value: Any, today: dt.date) -> str:
    match = _PERIOD.fullmatch(value) if isinstance(value, str) else None
    if not match or not 1 <= int(match[2]) <= 12:
        raise RecordError(spec.name, f"must be a month YYYY-MM, got {_shown(value)}")
    if (int(match[1]), int(match[2])) > (today.year, today.month):
        raise RecordError(spec.name, f"is in the future ({value} is after {today:%Y-%m})")
    return value


def _enum(spec: FieldSpec, value: Any, today: dt.date) -> str:
    if value not in spec.choices:
        raise RecordError(spec.name, f"must be one of {', '.join(spec.choices)}, got {_shown(value)}")
    return value


def _uscc(spec: FieldSpec, value: Any, today: dt.date) -> str:
    if not isinstance(value, str):
        raise RecordError(spec.name, f"must be an 18-character code as text, got {_shown(value)}")
    problem = _uscc_problem(value, uscc_codes.allowlist())
    if problem:
        raise RecordError(spec.name, f"{value!r} {problem}")
    return value


@functools.lru_cache(maxsize=1 << 16)
def _uscc_problem(code: str, allowlist: frozenset[str]) -> str | None:
    """xinyi.records.uscc.problem, cached: a file repeats each enterprise's code for dozens of records,
    and the check was half the ingestion time. The allow-list is in the key so a change applies."""
    return uscc_codes.problem(code)


_NORMALIZERS: dict[str, Callable[[FieldSpec, Any, dt.date], Any]] = {
    "text": _text,
    "yuan": _yuan,
    "count": _count,
    "date": _date,
    "period": _period,
    "enum": _enum,
    "uscc": _uscc,
}


def _exact_number(value: Any) -> Decimal | None:
    """The exact decimal a JSON number or numeric string denotes; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        return Decimal(text) if _NUMBER.fullmatch(text) else None
    if isinstance(value, float):
        # repr is the shortest text that round-trips, so 12.345 stays 12.345 (no binary noise).
        value = Decimal(repr(value))
    if isinstance(value, (int, Decimal)):
        number = Decimal(value)
        return number if number.is_finite() else None
    return None


def _shown(value: Any) -> str:
    """A value as a message shows it: quoted, shortened, JSON words for JSON things."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, dict)):
        return "a JSON array" if isinstance(value, list) else "a JSON object"
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def month_index(period: Any) -> int | None:
    """A "YYYY-MM" period as a month number (year * 12 + month - 1); None when it is not one."""
    if not isinstance(period, str) or len(period) != 7 or period[4] != "-":
        return None
    try:
        year, month = int(period[:4]), int(period[5:])
    except ValueError:
        return None
    return year * 12 + month - 1 if 1 <= month <= 12 else None


# --- the compiled path: decode_normal_line ---------------------------------------------------------------
#
# One msgspec struct per ingestible category, tagged by "category", built from FIELD_SPECS. Each
# field's type accepts only values that the kind's normalizer would return unchanged, so a line
# the struct accepts normalizes to exactly what it holds; the few checks that depend on the day
# (dates and periods not in the future) and the USCC's check characters stay in Python. \A and \Z,
# never ^ and $: $ also matches before a final newline, which strip() would have removed.

_NORMAL_TEXT = r"(?s)\A\S(?:.*\S)?\Z"  # non-empty, nothing for strip() to remove
_NORMAL_YUAN = r"\A(?:0|[1-9][0-9]{0,14})\.[0-9]{2}\Z"  # as _yuan writes it, below _MAX_YUAN
_NORMAL_PERIOD = r"\A[0-9]{4}-(?:0[1-9]|1[0-2])\Z"
_NORMAL_USCC = r"\A[0-9A-Z]{18}\Z"


def _compiled_type(spec: FieldSpec) -> Any:
    if spec.kind == "text":
        return Annotated[str, msgspec.Meta(pattern=_NORMAL_TEXT, max_length=spec.max_length)]
    if spec.kind == "yuan":
        return Annotated[str, msgspec.Meta(pattern=_NORMAL_YUAN)]
    if spec.kind == "count":
        return Annotated[int, msgspec.Meta(ge=0, le=_MAX_COUNT)]  # JSON true, 1.0 and "1" are refused
    if spec.kind == "date":
        return dt.date  # exactly YYYY-MM-DD and a calendar date; isoformat() gives the text back
    if spec.kind == "period":
        return Annotated[str, msgspec.Meta(pattern=_NORMAL_PERIOD)]
    if spec.kind == "enum":
        return Literal[spec.choices]
    if spec.kind == "uscc":
        return Annotated[str, msgspec.Meta(pattern=_NORMAL_USCC)]
    raise AssertionError(f"no compiled type for kind {spec.kind!r}")


@dataclass(frozen=True)
class _Compiled:
    """What decode_normal_line needs to finish a struct msgspec accepted."""

    category: str
    names: tuple[str, ...]  # the envelope's keys, then the category's fields in definition order
    dates: tuple[str, ...]  # all of them required
    periods: tuple[str, ...]  # all of them required


def _compile() -> tuple[msgspec.json.Decoder, dict[type, _Compiled]]:
    structs, compiled = [], {}
    for category, specs in FIELD_SPECS.items():
        fields = []
        for spec in (*ENVELOPE, *specs):
            kind = _compiled_type(spec)
            # Null is absence (validate_fields); UNSET tells an absent key from a null one, for the key count.
            fields.append((spec.name, kind) if spec.required else (spec.name, Union[kind, None], msgspec.UNSET))
        struct = msgspec.defstruct(f"_{category}", fields, tag_field="category", tag=category, forbid_unknown_fields=True)
        structs.append(struct)
        every = (*ENVELOPE, *specs)
        assert all(s.required for s in every if s.kind in ("date", "period", "uscc"))
        compiled[struct] = _Compiled(
            category=category,
            names=tuple(s.name for s in every),
            dates=tuple(s.name for s in every if s.kind == "date"),
            periods=tuple(s.name for s in every if s.kind == "period"),
        )
    return msgspec.json.Decoder(Union[tuple(structs)]), compiled


_DECODER, _COMPILED = _compile()


@functools.lru_cache(maxsize=4)
def _month_of(day: dt.date) -> str:
    return f"{day:%Y-%m}"  # strftime is slow for once per line


def decode_normal_line(line: bytes, *, today: dt.date) -> dict | None:
    """One JSON line of a record file, as validate_line(parse_record_json(line)) would return it,
    when the line is valid and in normal form; None for every other line, which the caller
    then parses and validates the slow way, for its result or its error."""
    try:
        struct = _DECODER.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        # RecursionError: msgspec buffers the keys before the tag ("category"); a value nested
        # deeply there exceeds its depth limit. The definition refuses the line with a reason.
        return None
    c = _COMPILED[type(struct)]
    quotes = 4  # "category": "tax"
    values = {}
    for name, value in zip(c.names, msgspec.structs.astuple(struct)):
        if value is not msgspec.UNSET:
            quotes += 2 if value is None or type(value) is int else 4
            if value is not None:
                values[name] = value
    # A key given twice: msgspec kept its last value, silently. Without a backslash every quote
    # in valid JSON delimits a string, and the keys and values msgspec kept account for all of
    # them only when no key came twice. (Lines with escapes are left to parse_record_json.)
    if line.count(b'"') != quotes or b"\\" in line:
        return None
    for name in c.dates:
        if values[name] > today:
            return None
        values[name] = values[name].isoformat()
    this_month = _month_of(today)
    for name in c.periods:
        if values[name] > this_month:
            return None
    if not uscc_codes.passes_check(values["uscc"]):
        return None  # the allow-list, or the reason, is validate_line's
    uscc, as_of, source = values.pop("uscc"), values.pop("as_of"), values.pop("source")
    return {"uscc": uscc, "category": c.category, "as_of": as_of, "source": source, "fields": values}
