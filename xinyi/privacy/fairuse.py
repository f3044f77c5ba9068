"""Fair use: how much a consent for a given purpose may ask for, read from policies/fair_use.toml.

Whatever an enterprise is willing to sign, a consent for a purpose may not last longer, reach
further back, fetch more often, cover more categories or show more detail than the purpose's
rule allows (the idea of India's Account Aggregator purpose codes). The rules are loaded and
validated strictly once, in `FairUse.from_dir` / `FairUse.from_file`; `FairUse.check` takes
plain values (not protobuf messages) and raises a `Refusal` naming the consent field and the
rule broken:

- malformed values (unknown purpose or category, history_months < 1, ...) → Kind.INVALID,
  reason INVALID_FIELD;
- values that are well formed but exceed the purpose's rule → Kind.PRECONDITION, reason
  FAIR_USE_<KEY> (e.g. FAIR_USE_MAX_DAYS), policy id "fair_use.purpose.<purpose>.<key>".

The optional [self_access] table caps how often an enterprise may read its own records
(`SelfAccessRule`, `FairUse.self_access`): the registry and every node count, and refuse with
FETCH_LIMIT, policy id "fair_use.self_access.max_queries".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from xinyi.clock import DAY_MS
from xinyi.config import read_toml
from xinyi.errors import Kind, Refusal, Violation
from xinyi.privacy.consent import CHINA
from xinyi.policy import DEFAULT_POLICY_DIR, PolicyError
from xinyi.records.vocab import CATEGORIES, PURPOSES, SELF_ACCESS, category_problem, purpose_problem

FAIR_USE_FILE = "fair_use.toml"

FETCH_ONCE = "once"
FETCH_PERIODIC = "periodic"
FETCH_TYPES: tuple[str, ...] = (FETCH_ONCE, FETCH_PERIODIC)
FETCH_PERIODS: tuple[str, ...] = ("day", "month")
DETAIL_LEVELS: tuple[str, ...] = ("summary", "detail")

_REQUIRED_KEYS = ("max_days", "max_history_months", "fetch_types", "categories", "detail_levels")
_PERIODIC_KEYS = ("max_fetches", "fetch_period")
_KNOWN_KEYS = _REQUIRED_KEYS + _PERIODIC_KEYS


class FairUseError(PolicyError, ValueError):
    """A fair-use file that cannot be loaded; the message names the file, section and key."""


@dataclass(frozen=True)
class PurposeRule:
    """The most a consent for `purpose` may ask for."""

    purpose: str
    max_days: int                      # longest validity, in days
    max_history_months: int            # furthest look-back, in months from today
    fetch_types: frozenset[str]        # subset of FETCH_TYPES
    max_fetches: int | None            # ceiling per fetch_period; None unless periodic is allowed
    fetch_period: str | None           # "day" or "month"; None unless periodic is allowed
    categories: frozenset[str]         # subset of xinyi.records.vocab.CATEGORIES
    detail_levels: frozenset[str]      # subset of DETAIL_LEVELS

    def rule_id(self, key: str) -> str:
        """How messages name one of this rule's keys, e.g. purpose.credit_assessment.max_days."""
        return f"purpose.{self.purpose}.{key}"

    def as_dict(self) -> dict[str, Any]:
        """Plain, ordered values (vocabulary order), fit for JSON or a printed table."""
        return {
            "purpose": self.purpose,
            "max_days": self.max_days,
            "max_history_months": self.max_history_months,
            "fetch_types": [t for t in FETCH_TYPES if t in self.fetch_types],
            "max_fetches": self.max_fetches,
            "fetch_period": self.fetch_period,
            "categories": [c for c in CATEGORIES if c in self.categories],
            "detail_levels": [d for d in DETAIL_LEVELS if d in self.detail_levels],
        }


@dataclass(frozen=True)
class SelfAccessRule:
    """How often an enterprise may read its own records (purpose self_access), counted by every
    node and by the registry, each on its own: the right to see one's file is not a way to
    hammer the nodes that hold it. A query counts only when it was answered."""

    max_queries: int = 3         # self_access queries per period, per enterprise
    period: str = "day"          # "day" or "month", on the Beijing calendar

    def window_start(self, now_ms: int) -> int:
        """Where the current period began: the day's (or month's) 00:00 in Beijing."""
        now = dt.datetime.fromtimestamp(now_ms / 1000, CHINA)
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period == "month":
            start = start.replace(day=1)
        return int(start.timestamp() * 1000)

    def refusal(self, used: int, now_ms: int) -> Refusal:
        """The refusal of a self_access query over the cap: the limit, what was used, when to come back."""
        start = dt.datetime.fromtimestamp(self.window_start(now_ms) / 1000, CHINA)
        if self.period == "month":
            again = (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        else:
            again = start + dt.timedelta(days=1)
        description = (f"an enterprise may read its own records at most {self.max_queries} times a {self.period} "
                       f"(fair-use rule self_access.max_queries); {used} were answered this {self.period}; "
                       f"try again from {again:%Y-%m-%d %H:%M} Beijing time")
        return Refusal(Kind.DENIED, "FETCH_LIMIT", f"query.purpose: {description}",
                       (Violation("query.purpose", description),), policy_ids=("fair_use.self_access.max_queries",),
                       metadata={"rule": "self_access.max_queries", "limit": str(self.max_queries), "actual": str(used)})


class FairUse:
    """The fair-use rules of every purpose, validated at load. Immutable; safe to share."""

    def __init__(self, rules: Mapping[str, PurposeRule], source: Path | None = None,
                 self_access: SelfAccessRule | None = None) -> None:
        missing = [p for p in PURPOSES if p not in rules]
        if missing:
            raise FairUseError(f"{source or 'fair-use rules'}: no rule for purpose {', '.join(missing)}")
        self._rules = {p: rules[p] for p in PURPOSES}
        self.source = source
        self.self_access = self_access or SelfAccessRule()

    @classmethod
    def from_dir(cls, policy_dir: Path | str = DEFAULT_POLICY_DIR) -> "FairUse":
        """Load `fair_use.toml` from the policy directory (policies/ by default)."""
        return cls.from_file(Path(policy_dir) / FAIR_USE_FILE)

    @classmethod
    def from_file(cls, path: Path | str) -> "FairUse":
        """Load and validate one fair-use file, or raise FairUseError (a ValueError)."""
        path = Path(path)
        document = read_toml(path, FairUseError, "the fair-use rules")
        return cls(_parse(path, document), path, _parse_self_access(path, document))

    def rule(self, purpose: str) -> PurposeRule:
        """The rule for `purpose`; an unknown purpose is refused as INVALID_ARGUMENT."""
        rule = self._rules.get(purpose)
        if rule is None:
            raise Refusal.invalid("consent.purpose", purpose_problem(purpose) or f"unknown purpose {purpose!r}")
        return rule

    def table(self) -> list[dict[str, Any]]:
        """Every rule as a plain dict, in xinyi.records.vocab.PURPOSES order (for the README or a CLI)."""
        return [rule.as_dict() for rule in self._rules.values()]

    def check(
        self,
        *,
        purpose: str,
        categories: Iterable[str],
        detail_level: str,
        history_months: int,
        valid_from_ms: int,
        valid_until_ms: int,
        fetch_type: str,
        max_fetches: int,
        fetch_period: str,
    ) -> None:
        """Refuse a consent that is malformed (INVALID) or asks for more than its purpose allows
        (PRECONDITION, reason FAIR_USE_<KEY>). Malformed values are reported before fair-use.

        For a "once" consent max_fetches must be 0 (unset) or 1 and fetch_period "" (unset).
        """
        rule = self.rule(purpose)
        asked = list(categories)
        _check_well_formed(
            categories=asked, detail_level=detail_level, history_months=history_months,
            valid_from_ms=valid_from_ms, valid_until_ms=valid_until_ms,
            fetch_type=fetch_type, max_fetches=max_fetches, fetch_period=fetch_period,
        )

        outside = [c for c in CATEGORIES if c in set(asked) - rule.categories]
        if outside:
            allowed = ", ".join(c for c in CATEGORIES if c in rule.categories)
            raise _breach(
                rule, "categories", "consent.categories",
                f"{purpose} consents may not cover {', '.join(outside)}", f"allowed: {allowed}",
                limit=allowed, actual=", ".join(outside),
            )
        if detail_level not in rule.detail_levels:
            allowed = " or ".join(repr(d) for d in DETAIL_LEVELS if d in rule.detail_levels)
            raise _breach(
                rule, "detail_levels", "consent.detail_level",
                f"{purpose} consents may only have detail level {allowed}", f"this one asks for {detail_level!r}",
                limit=allowed, actual=detail_level,
            )
        if history_months > rule.max_history_months:
            raise _breach(
                rule, "max_history_months", "consent.history_months",
                f"{purpose} consents may see at most {rule.max_history_months} months of history",
                f"this one asks for {history_months}",
                limit=rule.max_history_months, actual=history_months,
            )
        duration_ms = valid_until_ms - valid_from_ms
        if duration_ms > rule.max_days * DAY_MS:
            raise _breach(
                rule, "max_days", "consent.valid_until_ms",
                f"{purpose} consents may last at most {rule.max_days} days",
                f"this one lasts {_duration(duration_ms)}",
                limit=rule.max_days, actual=_duration(duration_ms),
            )
        if fetch_type not in rule.fetch_types:
            allowed = " or ".join(repr(t) for t in FETCH_TYPES if t in rule.fetch_types)
            raise _breach(
                rule, "fetch_types", "consent.fetch_type",
                f"{purpose} consents may only use fetch type {allowed}", f"this one asks for {fetch_type!r}",
                limit=allowed, actual=fetch_type,
            )
        if fetch_type == FETCH_PERIODIC:
            assert rule.max_fetches is not None and rule.fetch_period is not None  # ensured at load
            if fetch_period != rule.fetch_period:
                raise _breach(
                    rule, "fetch_period", "consent.fetch_period",
                    f"{purpose} consents count their fetches per {rule.fetch_period}",
                    f"this one counts per {fetch_period}",
                    limit=rule.fetch_period, actual=fetch_period,
                )
            if max_fetches > rule.max_fetches:
                raise _breach(
                    rule, "max_fetches", "consent.max_fetches",
                    f"{purpose} consents may fetch at most {rule.max_fetches} times a {rule.fetch_period}",
                    f"this one asks for {max_fetches}",
                    limit=rule.max_fetches, actual=max_fetches,
                )


def self_access_rule(policy_dir: Path | str = DEFAULT_POLICY_DIR) -> SelfAccessRule:
    """The self-access cap of a policy directory's fair_use.toml, checked like the whole file; the
    default when the directory has no fair_use.toml (a node's policies from before self-access:
    the node needed no fair-use table until then)."""
    path = Path(policy_dir) / FAIR_USE_FILE
    if not path.exists():
        return SelfAccessRule()
    return FairUse.from_file(path).self_access


# --- checking a consent ---------------------------------------------------------------------


def _check_well_formed(
    *, categories: list[str], detail_level: str, history_months: int, valid_from_ms: int,
    valid_until_ms: int, fetch_type: str, max_fetches: int, fetch_period: str,
) -> None:
    if not categories:
        raise Refusal.invalid("consent.categories", "must name at least one category")
    for c in categories:
        problem = category_problem(c)
        if problem:
            raise Refusal.invalid("consent.categories", problem)
    if detail_level not in DETAIL_LEVELS:
        raise Refusal.invalid("consent.detail_level", f"must be {_one_of(DETAIL_LEVELS)}, not {detail_level!r}")
    if history_months < 1:
        raise Refusal.invalid("consent.history_months", f"must be at least 1 month, not {history_months}")
    if valid_until_ms <= valid_from_ms:
        raise Refusal.invalid("consent.valid_until_ms", "must be after valid_from_ms")
    if fetch_type not in FETCH_TYPES:
        raise Refusal.invalid("consent.fetch_type", f"must be {_one_of(FETCH_TYPES)}, not {fetch_type!r}")
    if fetch_type == FETCH_PERIODIC:
        if max_fetches < 1:
            raise Refusal.invalid("consent.max_fetches", f"a periodic consent must allow at least 1 fetch, not {max_fetches}")
        if fetch_period not in FETCH_PERIODS:
            raise Refusal.invalid("consent.fetch_period", f"must be {_one_of(FETCH_PERIODS)} for a periodic consent, not {fetch_period!r}")
    else:
        if max_fetches not in (0, 1):
            raise Refusal.invalid("consent.max_fetches", f"a once consent fetches once; leave it unset (0) or 1, not {max_fetches}")
        if fetch_period:
            raise Refusal.invalid("consent.fetch_period", f"only a periodic consent has a fetch period; leave it unset, not {fetch_period!r}")


def _breach(
    rule: PurposeRule, key: str, field: str, limit_text: str, actual_text: str, *, limit: object, actual: object
) -> Refusal:
    rule_id = rule.rule_id(key)
    description = f"{limit_text} (fair-use rule {rule_id}); {actual_text}"
    return Refusal(
        Kind.PRECONDITION,
        f"FAIR_USE_{key.upper()}",
        f"{field}: {description}",
        (Violation(field, description),),
        policy_ids=(f"fair_use.{rule_id}",),
        metadata={"rule": rule_id, "limit": str(limit), "actual": str(actual)},
    )


def _duration(ms: int) -> str:
    days, rest = divmod(ms, DAY_MS)
    parts = [f"{days} days"]
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    for amount, unit in ((hours, "h"), (minutes, "min"), (seconds, "s"), (millis, "ms")):
        if amount:
            parts.append(f"{amount} {unit}")
    return " ".join(parts)


def _one_of(values: Iterable[str]) -> str:
    return " or ".join(repr(v) for v in values)


# --- loading the file -----------------------------------------------------------------------


def _parse(path: Path, document: dict[str, Any]) -> dict[str, PurposeRule]:
    for key in document:
        if key not in ("purpose", SELF_ACCESS):
            raise FairUseError(
                f"{path}: unknown top-level key {key!r}; expected only [purpose.<name>] tables and [{SELF_ACCESS}]"
            )
    purposes = document.get("purpose")
    if not isinstance(purposes, dict):
        raise FairUseError(
            f"{path}: no [purpose.<name>] tables; expected one for each of {', '.join(PURPOSES)}"
        )
    rules: dict[str, PurposeRule] = {}
    for name, table in purposes.items():
        if name not in PURPOSES:
            raise FairUseError(
                f"{path}: [purpose.{name}]: unknown purpose {name!r}; "
                f"expected one of xinyi.records.vocab.PURPOSES: {', '.join(PURPOSES)}"
            )
        if not isinstance(table, dict):
            raise FairUseError(f"{path}: purpose.{name}: expected a table [purpose.{name}], got {_kind(table)}")
        rules[name] = _Section(path, f"purpose.{name}", table).rule(name)
    missing = [p for p in PURPOSES if p not in rules]
    if missing:
        raise FairUseError(
            f"{path}: [purpose.{missing[0]}]: missing; every purpose in xinyi.records.vocab.PURPOSES "
            f"needs a fair-use table (missing: {', '.join(missing)})"
        )
    return rules


_SELF_ACCESS_KEYS = ("max_queries", "period")


def _parse_self_access(path: Path, document: dict[str, Any]) -> SelfAccessRule:
    """The optional [self_access] table; without it, SelfAccessRule's defaults (3 a day)."""
    if SELF_ACCESS not in document:
        return SelfAccessRule()
    table = document[SELF_ACCESS]
    if not isinstance(table, dict):
        raise FairUseError(f"{path}: {SELF_ACCESS}: expected a table [{SELF_ACCESS}], got {_kind(table)}")
    section = _Section(path, SELF_ACCESS, table)
    for key in table:
        if key not in _SELF_ACCESS_KEYS:
            raise section.error(key, f"unknown key; expected keys: {', '.join(_SELF_ACCESS_KEYS)}")
    return SelfAccessRule(max_queries=section.positive_int("max_queries", "self_access queries per period"),
                          period=section.choice("period", FETCH_PERIODS))


class _Section:
    """One [purpose.<name>] table, read key by key with errors naming file, section and key."""

    def __init__(self, path: Path, name: str, table: dict[str, Any]) -> None:
        self.path, self.name, self.table = path, name, table

    def error(self, key: str, problem: str) -> FairUseError:
        return FairUseError(f"{self.path}: [{self.name}] {key}: {problem}")

    def rule(self, purpose: str) -> PurposeRule:
        for key in self.table:
            if key not in _KNOWN_KEYS:
                raise self.error(key, f"unknown key; expected keys: {', '.join(_KNOWN_KEYS)}")
        max_days = self.positive_int("max_days", "days")
        max_history_months = self.positive_int("max_history_months", "months")
        fetch_types = self.choices("fetch_types", FETCH_TYPES, "fetch type", "fetch types")
        categories = self.choices("categories", CATEGORIES, "category", "categories", source="xinyi.records.vocab.CATEGORIES")
        detail_levels = self.choices("detail_levels", DETAIL_LEVELS, "detail level", "detail levels")
        max_fetches: int | None = None
        fetch_period: str | None = None
        if FETCH_PERIODIC in fetch_types:
            max_fetches = self.positive_int("max_fetches", "fetches per fetch_period")
            fetch_period = self.choice("fetch_period", FETCH_PERIODS)
        else:
            for key in _PERIODIC_KEYS:
                if key in self.table:
                    raise self.error(
                        key, f'applies only to periodic fetching, but fetch_types does not include "{FETCH_PERIODIC}"; '
                        "remove the key or allow periodic"
                    )
        return PurposeRule(
            purpose=purpose,
            max_days=max_days,
            max_history_months=max_history_months,
            fetch_types=fetch_types,
            max_fetches=max_fetches,
            fetch_period=fetch_period,
            categories=categories,
            detail_levels=detail_levels,
        )

    def get(self, key: str, expected: str) -> Any:
        if key not in self.table:
            raise self.error(key, f"missing; expected {expected}")
        return self.table[key]

    def positive_int(self, key: str, unit: str) -> int:
        expected = f"a positive whole number ({unit})"
        value = self.get(key, expected)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected {expected}, got {_kind(value)} {value!r}")
        if value < 1:
            raise self.error(key, f"expected {expected}, got {value}")
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        expected = f"one of {_quoted(allowed)}"
        value = self.get(key, expected)
        if value not in allowed or not isinstance(value, str):
            raise self.error(key, f"expected {expected}, got {value!r}")
        return value

    def choices(self, key: str, allowed: tuple[str, ...], noun: str, nouns: str, source: str = "") -> frozenset[str]:
        expected = f"a non-empty list of {nouns} from {source + ': ' if source else ''}{_quoted(allowed)}"
        value = self.get(key, expected)
        if not isinstance(value, list) or not value:
            raise self.error(key, f"expected {expected}, got {value!r}")
        seen: set[str] = set()
        for item in value:
            if not isinstance(item, str) or item not in allowed:
                raise self.error(key, f"unknown {noun} {item!r}; expected {nouns} from {source + ': ' if source else ''}{_quoted(allowed)}")
            if item in seen:
                raise self.error(key, f"{item!r} is listed twice")
            seen.add(item)
        return frozenset(seen)


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def _kind(value: object) -> str:
    return {bool: "a boolean", float: "a float", str: "a string", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )
