"""Fair-use rules per purpose (policies/fair_use.toml) and the check a consent must pass.

The rules are read from the repository's policies/fair_use.toml itself, not from a copy, so the
boundaries tested here are the ones the network ships.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xinyi.clock import DAY_MS
from xinyi.errors import Kind, Refusal
from xinyi.privacy.fairuse import DETAIL_LEVELS, FETCH_TYPES, FairUse, FairUseError, PurposeRule
from xinyi.records.vocab import CATEGORIES, PURPOSES

REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"
FAIR_USE_TOML = REPO_POLICIES / "fair_use.toml"
T0 = 1_750_000_000_000  # some instant; only differences matter


@pytest.fixture(scope="module")
def fair_use() -> FairUse:
    return FairUse.from_file(FAIR_USE_TOML)


def widest(rule: PurposeRule, **changes: Any) -> dict[str, Any]:
    """The most a consent for the rule's purpose may ask for, exactly at every limit."""
    periodic = "once" not in rule.fetch_types
    consent: dict[str, Any] = {
        "purpose": rule.purpose,
        "categories": [c for c in CATEGORIES if c in rule.categories],
        "detail_level": "detail" if "detail" in rule.detail_levels else "summary",
        "history_months": rule.max_history_months,
        "valid_from_ms": T0,
        "valid_until_ms": T0 + rule.max_days * DAY_MS,
        "fetch_type": "periodic" if periodic else "once",
        "max_fetches": rule.max_fetches if periodic else 0,
        "fetch_period": rule.fetch_period if periodic else "",
    }
    consent.update(changes)
    return consent


def refused(fair_use: FairUse, consent: dict[str, Any]) -> Refusal:
    with pytest.raises(Refusal) as caught:
        fair_use.check(**consent)
    return caught.value


def assert_fair_use_refusal(refusal: Refusal, reason: str, field: str, rule_id: str, *mentions: str) -> None:
    assert refusal.kind is Kind.PRECONDITION, refusal
    assert refusal.reason == reason
    assert refusal.message.startswith(f"{field}: "), refusal.message
    assert f"(fair-use rule {rule_id})" in refusal.message
    assert [v.field for v in refusal.violations] == [field]
    assert refusal.policy_ids == (f"fair_use.{rule_id}",)
    assert refusal.metadata["rule"] == rule_id
    for text in mentions:
        assert text in refusal.message, refusal.message


def assert_invalid(refusal: Refusal, field: str, *mentions: str) -> None:
    assert refusal.kind is Kind.INVALID, refusal
    assert refusal.reason == "INVALID_FIELD"
    assert refusal.message.startswith(f"{field}: "), refusal.message
    assert [v.field for v in refusal.violations] == [field]
    for text in mentions:
        assert text in refusal.message, refusal.message


# --- the shipped table ----------------------------------------------------------------------


def test_the_repository_file_is_the_default(fair_use: FairUse) -> None:
    assert FairUse.from_dir(REPO_POLICIES).table() == fair_use.table()


def test_shipped_rules(fair_use: FairUse) -> None:
    table = {row["purpose"]: row for row in fair_use.table()}
    assert list(table) == list(PURPOSES)
    assert table["credit_assessment"] == {
        "purpose": "credit_assessment", "max_days": 30, "max_history_months": 24,
        "fetch_types": ["once"], "max_fetches": None, "fetch_period": None,
        "categories": list(CATEGORIES), "detail_levels": ["summary", "detail"],
    }
    assert table["loan_monitoring"] == {
        "purpose": "loan_monitoring", "max_days": 365, "max_history_months": 12,
        "fetch_types": ["periodic"], "max_fetches": 4, "fetch_period": "month",
        "categories": ["registration", "tax", "social_security", "provident_fund", "utilities",
                       "judicial", "admin_penalty", "dishonesty_list"],
        "detail_levels": ["summary"],
    }
    assert table["guarantee"] == {
        "purpose": "guarantee", "max_days": 90, "max_history_months": 24,
        "fetch_types": ["once"], "max_fetches": None, "fetch_period": None,
        "categories": [c for c in CATEGORIES if c != "honors"], "detail_levels": ["summary", "detail"],
    }


def test_rule_lookup(fair_use: FairUse) -> None:
    rule = fair_use.rule("loan_monitoring")
    assert rule.purpose == "loan_monitoring"
    assert rule.fetch_types == frozenset({"periodic"})
    assert rule.detail_levels == frozenset({"summary"})
    assert_invalid(refused_rule(fair_use, "mortgage"), "consent.purpose", "mortgage")


def refused_rule(fair_use: FairUse, purpose: str) -> Refusal:
    with pytest.raises(Refusal) as caught:
        fair_use.rule(purpose)
    return caught.value


# --- every rule at its limit, and one past it -----------------------------------------------


@pytest.mark.parametrize("purpose", PURPOSES)
def test_a_consent_exactly_at_every_limit_passes(fair_use: FairUse, purpose: str) -> None:
    fair_use.check(**widest(fair_use.rule(purpose)))


@pytest.mark.parametrize("purpose", PURPOSES)
def test_one_day_too_long_is_refused(fair_use: FairUse, purpose: str) -> None:
    rule = fair_use.rule(purpose)
    too_long = rule.max_days + 1
    refusal = refused(fair_use, widest(rule, valid_until_ms=T0 + too_long * DAY_MS))
    assert_fair_use_refusal(
        refusal, "FAIR_USE_MAX_DAYS", "consent.valid_until_ms", f"purpose.{purpose}.max_days",
        f"{purpose} consents may last at most {rule.max_days} days", f"this one lasts {too_long} days",
    )
    assert refusal.metadata["limit"] == str(rule.max_days)


def test_the_credit_assessment_duration_message(fair_use: FairUse) -> None:
    refusal = refused(fair_use, widest(fair_use.rule("credit_assessment"), valid_until_ms=T0 + 45 * DAY_MS))
    assert refusal.message == (
        "consent.valid_until_ms: credit_assessment consents may last at most 30 days "
        "(fair-use rule purpose.credit_assessment.max_days); this one lasts 45 days"
    )


def test_even_one_millisecond_too_long_is_refused(fair_use: FairUse) -> None:
    rule = fair_use.rule("credit_assessment")
    refusal = refused(fair_use, widest(rule, valid_until_ms=T0 + 30 * DAY_MS + 1))
    assert_fair_use_refusal(
        refusal, "FAIR_USE_MAX_DAYS", "consent.valid_until_ms",
        "purpose.credit_assessment.max_days", "this one lasts 30 days 1 ms",
    )


@pytest.mark.parametrize("purpose", PURPOSES)
def test_one_month_too_much_history_is_refused(fair_use: FairUse, purpose: str) -> None:
    rule = fair_use.rule(purpose)
    fair_use.check(**widest(rule, history_months=1))
    refusal = refused(fair_use, widest(rule, history_months=rule.max_history_months + 1))
    assert_fair_use_refusal(
        refusal, "FAIR_USE_MAX_HISTORY_MONTHS", "consent.history_months",
        f"purpose.{purpose}.max_history_months",
        f"at most {rule.max_history_months} months of history", f"this one asks for {rule.max_history_months + 1}",
    )


# --- once and periodic ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "purpose, fetch_type", [("credit_assessment", "periodic"), ("guarantee", "periodic"), ("loan_monitoring", "once")]
)
def test_a_fetch_type_the_purpose_does_not_allow_is_refused(fair_use: FairUse, purpose: str, fetch_type: str) -> None:
    rule = fair_use.rule(purpose)
    assert fetch_type not in rule.fetch_types
    if fetch_type == "periodic":
        consent = widest(rule, fetch_type="periodic", max_fetches=1, fetch_period="month")
    else:
        consent = widest(rule, fetch_type="once", max_fetches=0, fetch_period="")
    refusal = refused(fair_use, consent)
    assert_fair_use_refusal(
        refusal, "FAIR_USE_FETCH_TYPES", "consent.fetch_type",
        f"purpose.{purpose}.fetch_types", f"this one asks for '{fetch_type}'",
        f"{purpose} consents may only use fetch type '{'once' if fetch_type == 'periodic' else 'periodic'}'",
    )


def test_a_once_consent_may_say_one_fetch(fair_use: FairUse) -> None:
    fair_use.check(**widest(fair_use.rule("credit_assessment"), max_fetches=1))


def test_periodic_fetches_up_to_the_ceiling(fair_use: FairUse) -> None:
    rule = fair_use.rule("loan_monitoring")
    assert (rule.max_fetches, rule.fetch_period) == (4, "month")
    for n in range(1, rule.max_fetches + 1):
        fair_use.check(**widest(rule, max_fetches=n))
    refusal = refused(fair_use, widest(rule, max_fetches=rule.max_fetches + 1))
    assert_fair_use_refusal(
        refusal, "FAIR_USE_MAX_FETCHES", "consent.max_fetches",
        "purpose.loan_monitoring.max_fetches", "at most 4 times a month", "this one asks for 5",
    )


def test_periodic_fetches_must_count_in_the_rule_s_period(fair_use: FairUse) -> None:
    rule = fair_use.rule("loan_monitoring")
    refusal = refused(fair_use, widest(rule, fetch_period="day", max_fetches=1))
    assert_fair_use_refusal(
        refusal, "FAIR_USE_FETCH_PERIOD", "consent.fetch_period",
        "purpose.loan_monitoring.fetch_period", "per month", "this one counts per day",
    )


# --- categories and detail ------------------------------------------------------------------


def test_credit_assessment_may_cover_every_category(fair_use: FairUse) -> None:
    assert fair_use.rule("credit_assessment").categories == frozenset(CATEGORIES)


@pytest.mark.parametrize("purpose", [p for p in PURPOSES if p != "credit_assessment"])
def test_a_category_outside_the_purpose_is_refused(fair_use: FairUse, purpose: str) -> None:
    rule = fair_use.rule(purpose)
    outside = [c for c in CATEGORIES if c not in rule.categories]
    assert outside, f"{purpose} allows every category; this test needs one it does not"
    for category in rule.categories:
        fair_use.check(**widest(rule, categories=[category]))
    refusal = refused(fair_use, widest(rule, categories=["tax", *outside]))
    assert_fair_use_refusal(
        refusal, "FAIR_USE_CATEGORIES", "consent.categories",
        f"purpose.{purpose}.categories", f"may not cover {', '.join(outside)}",
    )
    assert "tax" not in refusal.metadata["actual"]


def test_monitoring_may_not_cover_customs_or_honors(fair_use: FairUse) -> None:
    refusal = refused(fair_use, widest(fair_use.rule("loan_monitoring"), categories=["honors", "tax", "customs"]))
    assert_fair_use_refusal(
        refusal, "FAIR_USE_CATEGORIES", "consent.categories",
        "purpose.loan_monitoring.categories", "may not cover customs, honors",
    )


def test_monitoring_sees_summaries_not_records(fair_use: FairUse) -> None:
    rule = fair_use.rule("loan_monitoring")
    fair_use.check(**widest(rule, detail_level="summary"))
    refusal = refused(fair_use, widest(rule, detail_level="detail"))
    assert_fair_use_refusal(
        refusal, "FAIR_USE_DETAIL_LEVELS", "consent.detail_level",
        "purpose.loan_monitoring.detail_levels", "may only have detail level 'summary'", "asks for 'detail'",
    )


@pytest.mark.parametrize("purpose", ["credit_assessment", "guarantee"])
@pytest.mark.parametrize("level", DETAIL_LEVELS)
def test_one_off_purposes_may_see_both_detail_levels(fair_use: FairUse, purpose: str, level: str) -> None:
    fair_use.check(**widest(fair_use.rule(purpose), detail_level=level))


# --- malformed values are INVALID_ARGUMENT, not fair-use refusals ---------------------------


@pytest.mark.parametrize(
    "changes, field, mention",
    [
        ({"purpose": "mortgage"}, "consent.purpose", "unknown purpose 'mortgage'"),
        ({"categories": []}, "consent.categories", "at least one"),
        ({"categories": ["tax", "horoscope"]}, "consent.categories", "unknown category 'horoscope'"),
        ({"detail_level": "full"}, "consent.detail_level", "'full'"),
        ({"history_months": 0}, "consent.history_months", "at least 1"),
        ({"history_months": -3}, "consent.history_months", "at least 1"),
        ({"valid_until_ms": T0}, "consent.valid_until_ms", "after valid_from_ms"),
        ({"valid_until_ms": T0 - DAY_MS}, "consent.valid_until_ms", "after valid_from_ms"),
        ({"fetch_type": "streaming"}, "consent.fetch_type", "'streaming'"),
        ({"max_fetches": 2}, "consent.max_fetches", "once"),
        ({"fetch_period": "month"}, "consent.fetch_period", "only a periodic consent"),
    ],
)
def test_malformed_values_are_invalid(fair_use: FairUse, changes: dict[str, Any], field: str, mention: str) -> None:
    consent = widest(fair_use.rule("credit_assessment"), **changes)
    assert_invalid(refused(fair_use, consent), field, mention)


@pytest.mark.parametrize(
    "changes, field, mention",
    [
        ({"max_fetches": 0}, "consent.max_fetches", "at least 1"),
        ({"max_fetches": -1}, "consent.max_fetches", "at least 1"),
        ({"fetch_period": "week"}, "consent.fetch_period", "'week'"),
        ({"fetch_period": ""}, "consent.fetch_period", "'day' or 'month'"),
    ],
)
def test_malformed_periodic_values_are_invalid(fair_use: FairUse, changes: dict[str, Any], field: str, mention: str) -> None:
    consent = widest(fair_use.rule("loan_monitoring"), **changes)
    assert_invalid(refused(fair_use, consent), field, mention)


def test_a_malformed_consent_is_reported_as_malformed_before_fair_use(fair_use: FairUse) -> None:
    rule = fair_use.rule("loan_monitoring")
    consent = widest(rule, categories=["horoscope", "customs"], valid_until_ms=T0 + 999 * DAY_MS)
    assert_invalid(refused(fair_use, consent), "consent.categories", "horoscope")


# --- configuration errors name the file, the section and the key ----------------------------


def valid_tables(fair_use: FairUse) -> dict[str, dict[str, Any]]:
    """The shipped rules as TOML-ready tables, to be spoiled one key at a time."""
    tables = {}
    for row in fair_use.table():
        tables[row["purpose"]] = {k: v for k, v in row.items() if k != "purpose" and v is not None}
    return tables


def to_toml(tables: dict[str, dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, str):
            return f'"{v}"'
        return str(v).lower() if isinstance(v, bool) else str(v)

    lines = []
    for purpose, table in tables.items():
        lines.append(f"[purpose.{purpose}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def load_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fair_use.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        FairUse.from_file(path)
    assert isinstance(caught.value, FairUseError)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_the_round_trip_of_the_shipped_rules_loads(fair_use: FairUse, tmp_path: Path) -> None:
    path = tmp_path / "fair_use.toml"
    path.write_text(to_toml(valid_tables(fair_use)), encoding="utf-8")
    assert FairUse.from_dir(tmp_path).table() == fair_use.table()


def test_unknown_purpose(fair_use: FairUse, tmp_path: Path) -> None:
    tables = valid_tables(fair_use)
    tables["mortgage"] = dict(tables["guarantee"])
    message = load_error(tmp_path, to_toml(tables))
    assert "[purpose.mortgage]" in message
    assert "unknown purpose 'mortgage'" in message
    assert "credit_assessment, loan_monitoring, guarantee" in message


def test_unknown_category(fair_use: FairUse, tmp_path: Path) -> None:
    tables = valid_tables(fair_use)
    tables["guarantee"]["categories"] = ["tax", "horoscope"]
    message = load_error(tmp_path, to_toml(tables))
    assert "[purpose.guarantee] categories: unknown category 'horoscope'" in message
    assert "xinyi.records.vocab.CATEGORIES" in message and '"registration"' in message


def test_unknown_key(fair_use: FairUse, tmp_path: Path) -> None:
    tables = valid_tables(fair_use)
    tables["credit_assessment"]["max_day"] = tables["credit_assessment"].pop("max_days")
    message = load_error(tmp_path, to_toml(tables))
    assert "[purpose.credit_assessment] max_day: unknown key" in message
    assert "max_days" in message  # the keys it could have meant


def test_unknown_top_level_key(fair_use: FairUse, tmp_path: Path) -> None:
    message = load_error(tmp_path, "strict = true\n" + to_toml(valid_tables(fair_use)))
    assert "unknown top-level key 'strict'" in message


@pytest.mark.parametrize("key", ["max_days", "max_history_months", "max_fetches"])
@pytest.mark.parametrize("number", [-1, 0])
def test_negative_or_zero_number(fair_use: FairUse, tmp_path: Path, key: str, number: int) -> None:
    tables = valid_tables(fair_use)
    tables["loan_monitoring"][key] = number
    message = load_error(tmp_path, to_toml(tables))
    assert f"[purpose.loan_monitoring] {key}: expected a positive whole number" in message
    assert f"got {number}" in message


@pytest.mark.parametrize("bad", [1.5, "30", True])
def test_a_number_of_the_wrong_type(fair_use: FairUse, tmp_path: Path, bad: Any) -> None:
    tables = valid_tables(fair_use)
    tables["guarantee"]["max_days"] = bad
    message = load_error(tmp_path, to_toml(tables))
    assert "[purpose.guarantee] max_days: expected a positive whole number" in message


@pytest.mark.parametrize("key", ["max_days", "max_history_months", "fetch_types", "categories", "detail_levels"])
def test_missing_key(fair_use: FairUse, tmp_path: Path, key: str) -> None:
    tables = valid_tables(fair_use)
    del tables["guarantee"][key]
    message = load_error(tmp_path, to_toml(tables))
    assert f"[purpose.guarantee] {key}: missing; expected " in message


@pytest.mark.parametrize("key, expected", [("max_fetches", "positive whole number"), ("fetch_period", '"day", "month"')])
def test_missing_periodic_key(fair_use: FairUse, tmp_path: Path, key: str, expected: str) -> None:
    tables = valid_tables(fair_use)
    del tables["loan_monitoring"][key]
    message = load_error(tmp_path, to_toml(tables))
    assert f"[purpose.loan_monitoring] {key}: missing; expected " in message
    assert expected in message


def test_a_periodic_key_without_periodic_fetching(fair_use: FairUse, tmp_path: Path) -> None:
    tables = valid_tables(fair_use)
    tables["credit_assessment"]["max_fetches"] = 2
    message = load_error(tmp_path, to_toml(tables))
    assert "[purpose.credit_assessment] max_fetches: applies only to periodic fetching" in message


def test_missing_purpose(fair_use: FairUse, tmp_path: Path) -> None:
    tables = valid_tables(fair_use)
    del tables["guarantee"]
    message = load_error(tmp_path, to_toml(tables))
    assert "[purpose.guarantee]: missing" in message


@pytest.mark.parametrize(
    "key, bad, mention",
    [
        ("fetch_types", ["once", "streaming"], "unknown fetch type 'streaming'"),
        ("fetch_types", [], "non-empty list"),
        ("detail_levels", ["full"], "unknown detail level 'full'"),
        ("categories", ["tax", "tax"], "'tax' is listed twice"),
        ("categories", "tax", "non-empty list"),
        ("fetch_period", "week", 'expected one of "day", "month", got \'week\''),
    ],
)
def test_bad_values(fair_use: FairUse, tmp_path: Path, key: str, bad: Any, mention: str) -> None:
    tables = valid_tables(fair_use)
    tables["loan_monitoring"][key] = bad
    message = load_error(tmp_path, to_toml(tables))
    assert f"[purpose.loan_monitoring] {key}: " in message
    assert mention in message


def test_not_toml(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[purpose.guarantee\nmax_days = 1\n")
    assert "not valid TOML" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FairUseError) as caught:
        FairUse.from_dir(tmp_path)
    assert str(tmp_path / "fair_use.toml") in str(caught.value)


def test_fetch_types_constant_matches_the_file(fair_use: FairUse) -> None:
    for rule in (fair_use.rule(p) for p in PURPOSES):
        assert rule.fetch_types <= frozenset(FETCH_TYPES)
