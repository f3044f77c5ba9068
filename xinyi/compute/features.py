"""The feature catalogue: named features a node computes from its own records for one
enterprise, declared with their types and the categories they read in policies/features.toml,
and the support programmes (policies/eligibility.toml) written over them.

Features leave a node only signed and sealed to another node evaluating a model or programme;
the asker receives a score or a yes/no with the criteria met, never the values.
"""

from __future__ import annotations

import datetime as dt
import operator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable, Iterable

from xinyi.config import read_toml
from xinyi.policy import DEFAULT_POLICY_DIR, PolicyError
from xinyi.records.categories import month_index
from xinyi.records.vocab import CATEGORIES

RATINGS = {"A": 4.0, "B": 3.0, "M": 2.0, "C": 1.0, "D": 0.0}
TYPES = ("number", "integer", "boolean", "rating")


class CatalogueError(PolicyError, ValueError):
    """features.toml or eligibility.toml cannot be used; the message names the file and key."""


# --- how each feature is computed (records: node.store.Record-like, one enterprise) --------------
def _num(value) -> float | None:
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError, TypeError):
        return None


def _by_period(records) -> dict[str, object]:
    """The latest record of each period (a corrected period counts once)."""
    out: dict[str, object] = {}
    for r in sorted(records, key=lambda r: r.as_of):
        period = r.fields.get("period")
        if period:
            out[period] = r
    return out


def _tax_paid_12m(records, today):
    periods = _by_period(records)
    if not periods:
        return None
    latest = month_index(max(periods))
    return sum(_num(r.fields.get("tax_paid")) or 0.0 for p, r in periods.items() if latest - month_index(p) < 12)


def _tax_credit_rating(records, today):
    periods = _by_period(records)
    return RATINGS.get(periods[max(periods)].fields.get("credit_rating")) if periods else None


def _insured_headcount(records, today):
    periods = _by_period(records)
    return _num(periods[max(periods)].fields.get("insured_headcount")) if periods else None


def _headcount_change_12m(records, today):
    periods = _by_period(records)
    if not periods:
        return None
    latest = max(periods)
    earlier = {month_index(p): r for p, r in periods.items()}.get(month_index(latest) - 12)
    now, then = _num(periods[latest].fields.get("insured_headcount")), earlier and _num(earlier.fields.get("insured_headcount"))
    return None if not then else (now - then) / then


def _open_cases_as_defendant(records, today):
    return float(sum(1 for r in records if r.fields.get("role") == "defendant" and r.fields.get("status") != "closed"))


def _penalties_24m(records, today):
    cutoff = today.replace(year=today.year - 2).isoformat() if not (today.month == 2 and today.day == 29) \
        else today.replace(year=today.year - 2, day=28).isoformat()
    return float(sum(1 for r in records if str(r.fields.get("decided", "")) >= cutoff))


def _on_dishonesty_list(records, today):
    return 1.0 if records else 0.0


def _years_established(records, today):
    dates = [r.fields.get("established") for r in records if r.fields.get("established")]
    if not dates:
        return None
    established = dt.date.fromisoformat(max(dates))
    return round((today - established).days / 365.25, 2)


def _registered_capital(records, today):
    latest = max(records, key=lambda r: r.as_of, default=None)
    return _num(latest.fields.get("registered_capital")) if latest else None


_COMPUTE: dict[str, Callable] = {
    "tax_paid_12m": _tax_paid_12m,
    "tax_credit_rating": _tax_credit_rating,
    "insured_headcount": _insured_headcount,
    "headcount_change_12m": _headcount_change_12m,
    "open_cases_as_defendant": _open_cases_as_defendant,
    "penalties_24m": _penalties_24m,
    "on_dishonesty_list": _on_dishonesty_list,
    "years_established": _years_established,
    "registered_capital": _registered_capital,
}
# Features that are facts about absence: holding the category with no record means 0, not unknown.
_ZERO_WHEN_HELD_BUT_EMPTY = {"open_cases_as_defendant", "penalties_24m", "on_dishonesty_list"}


@dataclass(frozen=True)
class Feature:
    name: str
    type: str
    categories: tuple[str, ...]
    baseline: float
    description: str


_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
        "in": lambda a, b: a in b}


@dataclass(frozen=True)
class Criterion:
    feature: str
    op: str
    value: object
    description: str

    def met(self, features: dict[str, float]) -> bool:
        value = features.get(self.feature)
        return value is not None and bool(_OPS[self.op](value, self.value))


@dataclass(frozen=True)
class Programme:
    name: str
    description: str
    areas: tuple[str, ...]
    criteria: tuple[Criterion, ...]


@dataclass(frozen=True)
class Catalogue:
    features: dict[str, Feature]
    programmes: dict[str, Programme]

    @classmethod
    def from_dir(cls, policy_dir: Path = DEFAULT_POLICY_DIR) -> "Catalogue":
        features = _load_features(Path(policy_dir) / "features.toml")
        return cls(features, _load_programmes(Path(policy_dir) / "eligibility.toml", features))

    def categories_of(self, names: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted({c for n in names for c in self.features[n].categories}))

    def compute(self, names: Iterable[str], records, held_categories: frozenset[str], today: dt.date) -> dict[str, float]:
        """The features this node can compute: those whose categories it holds. Others are absent."""
        out: dict[str, float] = {}
        for name in names:
            feature = self.features[name]
            if not set(feature.categories) <= held_categories:
                continue
            own = [r for r in records if r.category in feature.categories]
            value = _COMPUTE[name](own, today)
            if value is None and name in _ZERO_WHEN_HELD_BUT_EMPTY:
                value = 0.0
            if value is not None:
                out[name] = float(value)
        return out


def _load_toml(path: Path) -> dict:
    return read_toml(path, CatalogueError)


def _load_features(path: Path) -> dict[str, Feature]:
    data = _load_toml(path)
    extra = set(data) - {"feature"}
    if extra:
        raise CatalogueError(f"{path}: unknown section(s) {', '.join(sorted(extra))}; only [feature.NAME]")
    out = {}
    for name, spec in data.get("feature", {}).items():
        where = f"{path}: [feature.{name}]"
        if name not in _COMPUTE:
            raise CatalogueError(f"{where}: no such feature is implemented; known: {', '.join(_COMPUTE)}")
        missing = {"type", "categories", "baseline", "description"} - set(spec)
        if missing:
            raise CatalogueError(f"{where}: missing {', '.join(sorted(missing))}")
        if spec["type"] not in TYPES:
            raise CatalogueError(f"{where} type: must be one of {', '.join(TYPES)}")
        unknown = [c for c in spec["categories"] if c not in CATEGORIES]
        if unknown or not spec["categories"]:
            raise CatalogueError(f"{where} categories: unknown or empty: {unknown}")
        out[name] = Feature(name, spec["type"], tuple(spec["categories"]), float(spec["baseline"]), spec["description"])
    if not out:
        raise CatalogueError(f"{path}: declares no feature")
    return out


def _load_programmes(path: Path, features: dict[str, Feature]) -> dict[str, Programme]:
    data = _load_toml(path)
    out = {}
    for name, spec in data.get("programme", {}).items():
        where = f"{path}: [programme.{name}]"
        criteria = []
        for i, c in enumerate(spec.get("criteria", [])):
            if c.get("feature") not in features:
                raise CatalogueError(f"{where} criteria[{i}].feature: {c.get('feature')!r} is not in the catalogue")
            if c.get("op") not in _OPS:
                raise CatalogueError(f"{where} criteria[{i}].op: must be one of {', '.join(_OPS)}")
            value = tuple(c["value"]) if c["op"] == "in" else float(c["value"])
            criteria.append(Criterion(c["feature"], c["op"], value, c.get("description", c["feature"])))
        if not criteria:
            raise CatalogueError(f"{where}: needs at least one criterion")
        out[name] = Programme(name, spec.get("description", name), tuple(spec.get("areas", [])), tuple(criteria))
    return out
