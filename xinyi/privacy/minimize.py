"""Data minimization at the node: what of an enterprise's records may leave it in an answer.

    age out (retention) -> keep only the categories asked -> detail: mask natural persons'
    identifiers in the records / summary: replace the records with indicators

An enterprise reading its own records (self_access, `minimize_own`) gets them aged out and in
detail, masked only as [self_access] says (nothing by default).

The rules are configuration, policies/minimization.toml (the file documents its format), loaded
and checked by `MinimizationRules.from_file` / `.from_dir`. Every function takes `today`; none
reads the clock. Domain core: no gRPC, no storage.

Summary indicators, per category (which ones are computed, and the bands, are configuration):

    registration       status                  the latest record's status (active, revoked, ...)
                       years_established       whole years from `established` to today
                       registered_capital_band registered capital, banded (yuan)
    tax                latest_period           the latest period reported, "YYYY-MM"
                       latest_credit_rating    the credit rating of the latest period
                       tax_paid_12m_band       tax paid in the 12 months up to and including the
                                               latest period, summed and banded (yuan)
                       months_reported_12m     how many of those 12 months were reported (0 when
                                               there are no records)
    social_security    latest_period           the latest period reported, "YYYY-MM"
                       insured_headcount_band  insured headcount of the latest period, banded
                       headcount_change_12m    percent change from the period 12 months before
                                               the latest one, a whole number rounded half away
                                               from zero; omitted when that period is missing or
                                               its headcount was 0
    judicial           open_cases_as_defendant cases whose status is not "closed" and where the
                                               enterprise is the defendant
                       cases_24m               cases filed in the last 24 months, either role
    admin_penalty      penalty_in_24m          whether any penalty was decided in the last 24 months
                       penalties_24m           how many were
    dishonesty_list    on_dishonesty_list      whether any listing remains after aging

A case (judicial, by case_no), a penalty (by decision_no) or a period (tax, social_security)
supplied more than once counts once, as its latest record (by as_of). "In the last 24 months"
means after the same day 24 months before today (a day with no counterpart: the month's last).

Bands render as strings: "lo-hi" for lo <= value < hi (e.g. "100000-1000000"), ">=last" above
the last boundary (e.g. ">=10000000") and "<first" below the first.

"No data": a category asked with no records (after aging) still yields its counts and flags
(0 open cases, no penalty, not on the list, 0 months reported), with sources () and as_of
today; indicators that describe a record (status, bands, rating, periods, change) are omitted.
An indicator's as_of is the latest as_of of the records it was computed from, and its sources
are their sources, sorted.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import fnmatch
import functools
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from xinyi.config import read_toml
from xinyi.policy import DEFAULT_POLICY_DIR, PolicyError
from xinyi.records.categories import FIELD_SPECS, month_index
from xinyi.records.vocab import CATEGORIES

if TYPE_CHECKING:
    from node.store import Record

__all__ = [
    "CONFIG_FILE",
    "DETAIL_LEVELS",
    "NEGATIVE_CATEGORIES",
    "Indicator",
    "MaskStyle",
    "MinimizationRules",
    "RetentionRule",
    "age_out",
    "default_rules",
    "mask",
    "minimize",
    "summarize",
]

CONFIG_FILE = "minimization.toml"


class MinimizationConfigError(PolicyError, ValueError):
    """minimization.toml cannot be used; the message names the file, section and key."""

DETAIL_LEVELS: tuple[str, ...] = ("summary", "detail")
# Categories whose records are adverse information, served only for a limited time. Which
# categories are adverse is not configuration: each of them must have a retention rule.
NEGATIVE_CATEGORIES: tuple[str, ...] = ("judicial", "admin_penalty", "dishonesty_list")
_AS_OF = "as_of"  # in end_date: the record's own as_of date


# --- the rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionRule:
    """How long one negative category's records are served after the conduct ended."""

    category: str
    years: int
    end_date: tuple[str, ...]  # field names, or "as_of"; the first present one is the end date
    open_while: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (field, values): not ended yet
    same_matter: tuple[str, ...] = ()  # fields identifying one matter across records


@dataclass(frozen=True)
class MaskStyle:
    """How one kind of identifier is masked."""

    name: str
    kind: str  # "surname" | "keep_ends"
    keep_first: int = 0
    keep_last: int = 0
    compound_surnames: tuple[str, ...] = ()

    def apply(self, value: str, mask_char: str) -> str:
        if self.kind == "surname":
            compound = (s for s in self.compound_surnames if value.startswith(s) and len(value) > len(s))
            surname = next(compound, value[:1])
            keep_first, keep_last = len(surname), 0
        else:
            keep_first, keep_last = self.keep_first, self.keep_last
        if keep_first + keep_last >= len(value):
            return mask_char * len(value)  # nothing would be hidden: hide everything
        return value[:keep_first] + mask_char * (len(value) - keep_first - keep_last) + value[len(value) - keep_last :]


@dataclass(frozen=True)
class Indicator:
    """One summary fact about an enterprise, in place of the records it was computed from."""

    category: str
    name: str
    value: str | int | bool
    as_of: str  # YYYY-MM-DD
    sources: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "name": self.name,
            "value": self.value,
            "as_of": self.as_of,
            "sources": list(self.sources),
        }


@dataclass(frozen=True)
class MinimizationRules:
    """The contents of policies/minimization.toml, checked. Build with from_file / from_dir."""

    source: str  # the file the rules came from
    retention: tuple[RetentionRule, ...]
    mask_char: str
    styles: tuple[MaskStyle, ...]
    masked_fields: tuple[tuple[str, str, str], ...]  # (category pattern, field pattern, style)
    indicators: tuple[tuple[str, tuple[str, ...]], ...]  # (category, indicator names), vocab order
    bands: tuple[tuple[str, tuple[int, ...]], ...]  # (indicator, boundaries)
    # What is still masked when the enterprise itself reads its records (self_access): none of
    # [masking.fields] applies there, only these lines ([self_access.fields]; none by default).
    self_access_fields: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def from_dir(cls, policy_dir: Path | str = DEFAULT_POLICY_DIR) -> "MinimizationRules":
        return cls.from_file(Path(policy_dir) / CONFIG_FILE)

    @classmethod
    def from_file(cls, path: Path | str) -> "MinimizationRules":
        """Load and check one file; ValueError naming the file, section and key when it is wrong."""
        path = Path(path)
        return _Loader(str(path)).rules(read_toml(path, MinimizationConfigError))

    # -- the steps ---------------------------------------------------------------------------

    def age_out(self, records: Sequence[Record], today: dt.date) -> list[Record]:
        """Drop negative records served for their full retention period; others pass unchanged.

        A record (or a matter: the records sharing its same_matter fields) is dropped when its
        end date + the category's years <= today, unless it is still open (open_while).
        Input order is kept.
        """
        dropped: set[int] = set()
        for rule in self.retention:
            matters: dict[tuple, list[int]] = {}
            for i, record in enumerate(records):
                if record.category == rule.category:
                    matters.setdefault(_matter_key(record, rule.same_matter, i), []).append(i)
            for members in matters.values():
                latest = _latest([records[i] for i in members])
                if _is_open(latest, rule):
                    continue
                if _add_years(_end_date(latest, rule), rule.years) <= today:
                    dropped.update(members)
        return [r for i, r in enumerate(records) if i not in dropped]

    def mask(self, records: Sequence[Record], *, fields: tuple[tuple[str, str, str], ...] | None = None) -> list[Record]:
        """New records with natural persons' identifiers masked; the others returned as they are.
        `fields`: the (category, field, style) lines to apply, [masking.fields] by default."""
        styles = {s.name: s for s in self.styles}
        lines = self.masked_fields if fields is None else fields
        masked = []
        for record in records:
            fields_out = dict(record.fields)
            changed = False
            for name, value in record.fields.items():
                style = _style_for(lines, record.category, name)
                if style is not None and value is not None and not isinstance(value, (dict, list, bool)):
                    fields_out[name] = styles[style].apply(str(value), self.mask_char)
                    changed = True
            # Record is frozen; replace builds a new one (its content key follows the new fields).
            masked.append(dataclasses.replace(record, fields=fields_out) if changed else record)
        return masked

    def summarize(self, records: Sequence[Record], categories: Iterable[str], today: dt.date) -> list[Indicator]:
        """Indicators for each category asked (see the module docstring), in vocabulary order.

        Records are aged out first, so a record past its retention never counts.
        """
        asked = _checked_categories(categories)
        current = self.age_out(records, today)
        bands = dict(self.bands)
        out: list[Indicator] = []
        for category, names in self.indicators:
            if category not in asked:
                continue
            own = [r for r in current if r.category == category]
            computed = _CALCULATORS[category](own, today, bands)
            for name in names:
                if name not in computed:
                    continue
                value, used = computed[name]
                as_of = max((r.as_of for r in used), default=today.isoformat())
                out.append(Indicator(category, name, value, as_of, tuple(sorted({r.source for r in used}))))
        return out

    def minimize(
        self,
        records: Sequence[Record],
        *,
        categories: Iterable[str],
        detail_level: str,
        today: dt.date,
    ) -> tuple[list[Record], list[Indicator]]:
        """The node's whole minimization step.

        Age out, keep the categories asked, then "detail" -> (masked records, []) ordered by
        category (vocabulary order), as_of newest first, then content key; "summary" ->
        ([], indicators) as `summarize` orders them.
        """
        if detail_level not in DETAIL_LEVELS:
            raise ValueError(f"detail_level must be one of {', '.join(DETAIL_LEVELS)}, got {detail_level!r}")
        asked = _checked_categories(categories)
        current = [r for r in self.age_out(records, today) if r.category in asked]
        if detail_level == "summary":
            return [], self.summarize(current, asked, today)
        return self.mask(_ordered(current)), []

    def minimize_own(self, records: Sequence[Record], *, categories: Iterable[str], today: dt.date) -> list[Record]:
        """What an enterprise reading its own records (self_access) gets: its records in the
        categories asked, in `minimize`'s detail order, with their record ids. Retention still
        applies (a negative record past it is not served to anyone: Art. 16 has it deleted);
        masking is [self_access.fields] only, not [masking.fields]: the names and numbers that
        protect natural persons from a bank are the enterprise's own filings here."""
        asked = _checked_categories(categories)
        current = [r for r in self.age_out(records, today) if r.category in asked]
        return self.mask(_ordered(current), fields=self.self_access_fields)

    def _style_for(self, category: str, field: str) -> str | None:
        return _style_for(self.masked_fields, category, field)


def _ordered(records: list[Record]) -> list[Record]:
    """By category (vocabulary order), as_of newest first, then content key."""
    ordered = sorted(records, key=lambda r: r.key)
    ordered.sort(key=lambda r: r.as_of, reverse=True)  # stable: equal as_of keep key order
    ordered.sort(key=lambda r: CATEGORIES.index(r.category))
    return ordered


def _style_for(lines: tuple[tuple[str, str, str], ...], category: str, field: str) -> str | None:
    for category_pattern, field_pattern, style in lines:
        if fnmatch.fnmatchcase(category, category_pattern) and fnmatch.fnmatchcase(field, field_pattern):
            return style
    return None


# --- module-level functions, with the default rules --------------------------------------------


@functools.cache
def default_rules() -> MinimizationRules:
    """The rules in the default policy directory (xinyi.policy.DEFAULT_POLICY_DIR), loaded once."""
    return MinimizationRules.from_dir(DEFAULT_POLICY_DIR)


def age_out(records: Sequence[Record], today: dt.date, *, rules: MinimizationRules | None = None) -> list[Record]:
    return (rules or default_rules()).age_out(records, today)


def mask(records: Sequence[Record], *, rules: MinimizationRules | None = None) -> list[Record]:
    return (rules or default_rules()).mask(records)


def summarize(
    records: Sequence[Record],
    categories: Iterable[str],
    today: dt.date,
    *,
    rules: MinimizationRules | None = None,
) -> list[Indicator]:
    return (rules or default_rules()).summarize(records, categories, today)


def minimize(
    records: Sequence[Record],
    *,
    categories: Iterable[str],
    detail_level: str,
    today: dt.date,
    rules: MinimizationRules | None = None,
) -> tuple[list[Record], list[Indicator]]:
    return (rules or default_rules()).minimize(records, categories=categories, detail_level=detail_level, today=today)


age_out.__doc__ = MinimizationRules.age_out.__doc__
mask.__doc__ = MinimizationRules.mask.__doc__
summarize.__doc__ = MinimizationRules.summarize.__doc__
minimize.__doc__ = MinimizationRules.minimize.__doc__


# --- aging helpers --------------------------------------------------------------------------------


def _matter_key(record: Record, same_matter: tuple[str, ...], index: int) -> tuple:
    values = tuple(record.fields.get(f) for f in same_matter)
    if not same_matter or any(v is None for v in values):
        return ("record", index)  # no matter identity: the record stands alone
    return ("matter", values)


def _is_open(record: Record, rule: RetentionRule) -> bool:
    return any(record.fields.get(field) in values for field, values in rule.open_while)


def _end_date(record: Record, rule: RetentionRule) -> dt.date:
    for name in rule.end_date:
        day = _parse_date(record.as_of if name == _AS_OF else record.fields.get(name))
        if day is not None:
            return day
    return _parse_date(record.as_of) or dt.date.min  # as_of is validated at ingestion


def _add_years(day: dt.date, years: int) -> dt.date:
    """Civil Code Art. 202: with no corresponding day (29 February), the month's last day."""
    if day.year + years > dt.MAXYEAR:
        return dt.date.max
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def months_before(day: dt.date, months: int) -> dt.date:
    """The same day `months` months earlier, or that month's last day when it is shorter (31 March
    less one month is 28 or 29 February). The windows of the summary indicators and of a consent's
    history both start here."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    last_day = calendar.monthrange(year, month + 1)[1]
    return dt.date(year, month + 1, min(day.day, last_day))


def _parse_date(value: Any) -> dt.date | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


# --- summary helpers ------------------------------------------------------------------------------

_Computed = dict[str, tuple[Any, list["Record"]]]


def _latest(records: Sequence[Record]) -> Record:
    """The newest record by as_of; ties broken by content key, so the choice is deterministic."""
    return max(records, key=lambda r: (r.as_of, r.key))


def _latest_by(records: Iterable[Record], field: str) -> dict[Any, Record]:
    """One record per value of `field`: its latest. Records without the field stand alone."""
    groups: dict[Any, list[Record]] = {}
    for i, record in enumerate(records):
        value = record.fields.get(field)
        groups.setdefault(("value", value) if value is not None else ("record", i), []).append(record)
    return {key: _latest(group) for key, group in groups.items()}


def _by_period(records: Iterable[Record]) -> dict[int, Record]:
    """The latest record of each month, keyed by month number (year * 12 + month - 1)."""
    out: dict[int, Record] = {}
    for (kind, period), record in _latest_by(records, "period").items():
        month = month_index(period) if kind == "value" else None
        if month is not None:
            out[month] = record
    return out




def _period_text(index: int) -> str:
    year, month = divmod(index, 12)
    return f"{year:04d}-{month + 1:02d}"


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _band(value: Decimal | int, boundaries: tuple[int, ...]) -> str:
    if value < boundaries[0]:
        return f"<{boundaries[0]}"
    for low, high in zip(boundaries, boundaries[1:]):
        if low <= value < high:
            return f"{low}-{high}"
    return f">={boundaries[-1]}"


def _within_months(value: Any, today: dt.date, months: int) -> bool:
    day = _parse_date(value)
    return day is not None and day > months_before(today, months)


def _registration(records: list[Record], today: dt.date, bands: dict) -> _Computed:
    if not records:
        return {}
    latest = _latest(records)
    fields = latest.fields
    out: _Computed = {}
    if fields.get("status") is not None:
        out["status"] = (str(fields["status"]), [latest])
    established = _parse_date(fields.get("established"))
    if established is not None:
        years = today.year - established.year - ((today.month, today.day) < (established.month, established.day))
        out["years_established"] = (max(years, 0), [latest])
    capital = _number(fields.get("registered_capital"))
    if capital is not None and "registered_capital_band" in bands:
        out["registered_capital_band"] = (_band(capital, bands["registered_capital_band"]), [latest])
    return out


def _tax(records: list[Record], today: dt.date, bands: dict) -> _Computed:
    months = _by_period(records)
    if not months:
        return {"months_reported_12m": (0, [])}
    last = max(months)
    latest = months[last]
    window = [months[m] for m in sorted(months) if last - 11 <= m <= last]
    out: _Computed = {
        "latest_period": (_period_text(last), [latest]),
        "months_reported_12m": (len(window), window),
    }
    if latest.fields.get("credit_rating") is not None:
        out["latest_credit_rating"] = (str(latest.fields["credit_rating"]), [latest])
    amounts = [_number(r.fields.get("tax_paid")) for r in window]
    if "tax_paid_12m_band" in bands and all(a is not None for a in amounts):
        out["tax_paid_12m_band"] = (_band(sum(amounts, Decimal(0)), bands["tax_paid_12m_band"]), window)
    return out


def _social_security(records: list[Record], today: dt.date, bands: dict) -> _Computed:
    months = _by_period(records)
    if not months:
        return {}
    last = max(months)
    latest = months[last]
    out: _Computed = {"latest_period": (_period_text(last), [latest])}
    headcount = _number(latest.fields.get("insured_headcount"))
    if headcount is not None and "insured_headcount_band" in bands:
        out["insured_headcount_band"] = (_band(headcount, bands["insured_headcount_band"]), [latest])
    earlier = months.get(last - 12)
    before = _number(earlier.fields.get("insured_headcount")) if earlier is not None else None
    if headcount is not None and before is not None and before > 0:
        change = ((headcount - before) * 100 / before).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        out["headcount_change_12m"] = (int(change), [earlier, latest])
    return out


def _judicial(records: list[Record], today: dt.date, bands: dict) -> _Computed:
    cases = list(_latest_by(records, "case_no").values())
    open_as_defendant = [
        c for c in cases if c.fields.get("status") != "closed" and c.fields.get("role") == "defendant"
    ]
    recent = [c for c in cases if _within_months(c.fields.get("filed"), today, 24)]
    return {
        "open_cases_as_defendant": (len(open_as_defendant), cases),
        "cases_24m": (len(recent), cases),
    }


def _admin_penalty(records: list[Record], today: dt.date, bands: dict) -> _Computed:
    penalties = list(_latest_by(records, "decision_no").values())
    recent = [p for p in penalties if _within_months(p.fields.get("decided"), today, 24)]
    return {
        "penalty_in_24m": (bool(recent), penalties),
        "penalties_24m": (len(recent), penalties),
    }


def _dishonesty_list(records: list[Record], today: dt.date, bands: dict) -> _Computed:
    return {"on_dishonesty_list": (bool(records), list(records))}


_CALCULATORS: dict[str, Callable[[list["Record"], dt.date, dict], _Computed]] = {
    "registration": _registration,
    "tax": _tax,
    "social_security": _social_security,
    "judicial": _judicial,
    "admin_penalty": _admin_penalty,
    "dishonesty_list": _dishonesty_list,
}
# The indicators each category can compute; the banded ones need [summary.bands].
_INDICATOR_NAMES: dict[str, tuple[str, ...]] = {
    "registration": ("status", "years_established", "registered_capital_band"),
    "tax": ("latest_period", "latest_credit_rating", "tax_paid_12m_band", "months_reported_12m"),
    "social_security": ("latest_period", "insured_headcount_band", "headcount_change_12m"),
    "judicial": ("open_cases_as_defendant", "cases_24m"),
    "admin_penalty": ("penalty_in_24m", "penalties_24m"),
    "dishonesty_list": ("on_dishonesty_list",),
}
_BANDED = ("registered_capital_band", "tax_paid_12m_band", "insured_headcount_band")


def _checked_categories(categories: Iterable[str]) -> tuple[str, ...]:
    asked = tuple(categories)
    unknown = [c for c in asked if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown category {unknown[0]!r}; known: {', '.join(CATEGORIES)}")
    return asked


# --- loading the file -----------------------------------------------------------------------------


class _Loader:
    """Checks the parsed TOML; every error names the file, the [section] and the key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, section: str, key: str, reason: str) -> ValueError:
        return MinimizationConfigError(f"{self.path}: [{section}] {key}: {reason}")

    def table(self, parent: dict, section: str, key: str, allowed: Iterable[str] | None = None) -> dict:
        """parent[key] as a table (required), with no keys outside `allowed` when given."""
        where = f"{section}.{key}" if section else key
        if key not in parent:
            raise MinimizationConfigError(f"{self.path}: [{where}]: section is required")
        value = parent[key]
        if not isinstance(value, dict):
            if not section:
                raise MinimizationConfigError(f"{self.path}: [{key}]: must be a table, got {_kind(value)}")
            raise self.error(section, key, f"must be a table, got {_kind(value)}")
        if allowed is not None:
            allowed = tuple(allowed)
            for name in value:
                if name not in allowed:
                    raise self.error(where, name, f"unknown key; known: {', '.join(allowed)}")
        return value

    def rules(self, data: dict) -> MinimizationRules:
        for name in data:
            if name not in ("retention", "masking", "summary", "self_access"):
                raise MinimizationConfigError(
                    f"{self.path}: [{name}]: unknown section; known: retention, masking, summary, self_access")
        mask_char, styles, masked_fields = self.masking(self.table(data, "", "masking", ("mask_char", "styles", "fields")))
        indicators, bands = self.summary(self.table(data, "", "summary", ("indicators", "bands")))
        self_access_fields: tuple[tuple[str, str, str], ...] = ()
        if "self_access" in data:  # optional: without it, nothing is masked for the enterprise itself
            section = self.table(data, "", "self_access", ("fields",))
            if "fields" in section:
                self_access_fields = self.field_masks(self.table(section, "self_access", "fields"), "self_access.fields",
                                                      [s.name for s in styles])
        return MinimizationRules(
            source=self.path,
            retention=self.retention(self.table(data, "", "retention")),
            mask_char=mask_char,
            styles=styles,
            masked_fields=masked_fields,
            indicators=indicators,
            bands=bands,
            self_access_fields=self_access_fields,
        )

    # -- [retention] -------------------------------------------------------------------------

    def retention(self, section: dict) -> tuple[RetentionRule, ...]:
        for category in section:
            if category not in NEGATIVE_CATEGORIES:
                raise self.error(
                    "retention", category, f"not a negative category; retention applies to {', '.join(NEGATIVE_CATEGORIES)}"
                )
        rules = []
        for category in NEGATIVE_CATEGORIES:
            if category not in section:
                raise self.error("retention", category, "every negative category needs a retention table")
            where = f"retention.{category}"
            table = self.table(section, "retention", category, ("years", "end_date", "open_while", "same_matter"))
            rules.append(
                RetentionRule(
                    category=category,
                    years=self.whole(table, where, "years", minimum=1, required=True),
                    end_date=self.end_dates(table, where, category),
                    open_while=self.open_while(table, where, category),
                    same_matter=self.field_list(table, where, "same_matter", category, required=False),
                )
            )
        return tuple(rules)

    def end_dates(self, table: dict, where: str, category: str) -> tuple[str, ...]:
        names = self.field_list(table, where, "end_date", category, required=True, extra=(_AS_OF,))
        for name in names:
            kind = _field_kind(category, name)
            if name != _AS_OF and kind != "date":
                raise self.error(where, "end_date", f"{category}.{name} is a {kind} field, not a date")
        return names

    def open_while(self, table: dict, where: str, category: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        if "open_while" not in table:
            return ()
        value = table["open_while"]
        if not isinstance(value, dict):
            raise self.error(where, "open_while", f"must be a table {{field = [values]}}, got {_kind(value)}")
        out = []
        for field, values in value.items():
            self.check_field(where, "open_while", category, field)
            if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
                raise self.error(where, f"open_while.{field}", "must be a non-empty list of strings")
            choices = _field_choices(category, field)
            for v in values:
                if choices and v not in choices:
                    raise self.error(where, f"open_while.{field}", f"{v!r} is not one of {', '.join(choices)}")
            out.append((field, tuple(values)))
        return tuple(out)

    def field_list(
        self, table: dict, where: str, key: str, category: str, *, required: bool, extra: tuple[str, ...] = ()
    ) -> tuple[str, ...]:
        if key not in table:
            if required:
                raise self.error(where, key, "is required")
            return ()
        value = table[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.error(where, key, f"must be a non-empty list of field names, got {_kind(value)}")
        for name in value:
            if name not in extra:
                self.check_field(where, key, category, name, extra)
        return tuple(value)

    def check_field(self, where: str, key: str, category: str, name: str, extra: tuple[str, ...] = ()) -> None:
        known = [s.name for s in FIELD_SPECS.get(category, ())] + list(extra)
        if name not in known:
            raise self.error(where, key, f"{name!r} is not a field of {category}; its fields: {', '.join(known) or 'none'}")

    def whole(self, table: dict, where: str, key: str, *, minimum: int, required: bool) -> int:
        if key not in table:
            if required:
                raise self.error(where, key, "is required")
            return 0
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(where, key, f"must be a whole number >= {minimum}, got {value!r}")
        return value

    # -- [masking] ---------------------------------------------------------------------------

    def masking(self, section: dict) -> tuple[str, tuple[MaskStyle, ...], tuple[tuple[str, str, str], ...]]:
        mask_char = section.get("mask_char")
        if not isinstance(mask_char, str) or len(mask_char) != 1:
            raise self.error("masking", "mask_char", f"must be one character, got {mask_char!r}")
        styles_table = self.table(section, "masking", "styles")
        styles = tuple(self.style(name, styles_table) for name in styles_table)
        style_names = [s.name for s in styles]
        return mask_char, styles, self.field_masks(self.table(section, "masking", "fields"), "masking.fields", style_names)

    def field_masks(self, fields_table: dict, where: str, style_names: list[str]) -> tuple[tuple[str, str, str], ...]:
        """A "<category>.<field>" = "<style>" table as (category pattern, field pattern, style) lines."""
        masked_fields = []
        for pattern, style in fields_table.items():
            category_pattern, dot, field_pattern = pattern.partition(".")
            if not dot or not category_pattern or not field_pattern or "." in field_pattern:
                raise self.error(where, repr(pattern), 'must read "<category>.<field>" (patterns allowed)')
            if not _is_pattern(category_pattern) and category_pattern not in CATEGORIES:
                raise self.error(where, repr(pattern), f"unknown category {category_pattern!r}")
            if style not in style_names:
                raise self.error(
                    where, repr(pattern), f"unknown style {style!r}; defined: {', '.join(style_names) or 'none'}"
                )
            masked_fields.append((category_pattern, field_pattern, style))
        return tuple(masked_fields)

    def style(self, name: str, styles: dict) -> MaskStyle:
        where = f"masking.styles.{name}"
        table = self.table(styles, "masking.styles", name, ("kind", "keep_first", "keep_last", "compound_surnames"))
        kind = table.get("kind")
        if kind == "surname":
            for key in ("keep_first", "keep_last"):
                if key in table:
                    raise self.error(where, key, 'only for kind = "keep_ends"')
            compound = table.get("compound_surnames", [])
            if not isinstance(compound, list) or not all(isinstance(s, str) and len(s) >= 2 for s in compound):
                raise self.error(where, "compound_surnames", "must be a list of surnames of two or more characters")
            # Longest first, so that a longer surname wins over one it starts with.
            return MaskStyle(name, kind, compound_surnames=tuple(sorted(compound, key=len, reverse=True)))
        if kind == "keep_ends":
            if "compound_surnames" in table:
                raise self.error(where, "compound_surnames", 'only for kind = "surname"')
            keep_first = self.whole(table, where, "keep_first", minimum=0, required=True)
            keep_last = self.whole(table, where, "keep_last", minimum=0, required=True)
            return MaskStyle(name, kind, keep_first=keep_first, keep_last=keep_last)
        raise self.error(where, "kind", f'must be "surname" or "keep_ends", got {kind!r}')

    # -- [summary] ---------------------------------------------------------------------------

    def summary(self, section: dict) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[tuple[str, tuple[int, ...]], ...]]:
        listed = self.table(section, "summary", "indicators")
        for category in listed:
            if category not in _INDICATOR_NAMES:
                raise self.error(
                    "summary.indicators", category, f"no indicators are defined for it; categories: {', '.join(_INDICATOR_NAMES)}"
                )
        indicators = []
        used: set[str] = set()
        for category in CATEGORIES:
            if category not in listed:
                continue
            names = listed[category]
            known = _INDICATOR_NAMES[category]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise self.error("summary.indicators", category, f"must be a list of indicator names, got {_kind(names)}")
            for name in names:
                if name not in known:
                    raise self.error("summary.indicators", category, f"unknown indicator {name!r}; known: {', '.join(known)}")
            if len(set(names)) != len(names):
                raise self.error("summary.indicators", category, "lists an indicator twice")
            used.update(names)
            indicators.append((category, tuple(names)))
        band_table = self.table(section, "summary", "bands")
        bands = []
        for name, boundaries in band_table.items():
            if name not in _BANDED:
                raise self.error("summary.bands", name, f"not a banded indicator; banded: {', '.join(_BANDED)}")
            if (
                not isinstance(boundaries, list)
                or not boundaries
                or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in boundaries)
            ):
                raise self.error("summary.bands", name, "must be a non-empty list of whole numbers >= 0")
            if any(a >= b for a, b in zip(boundaries, boundaries[1:])):
                raise self.error("summary.bands", name, f"boundaries must be strictly increasing, got {boundaries}")
            bands.append((name, tuple(boundaries)))
        banded = {name for name, _ in bands}
        for name in _BANDED:
            if name in used and name not in banded:
                raise self.error("summary.bands", name, "is required: the indicator is listed in [summary.indicators]")
        return tuple(indicators), tuple(bands)


def _field_kind(category: str, name: str) -> str:
    return next((s.kind for s in FIELD_SPECS.get(category, ()) if s.name == name), "")


def _field_choices(category: str, name: str) -> tuple[str, ...]:
    return next((s.choices for s in FIELD_SPECS.get(category, ()) if s.name == name), ())


def _is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "text", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
