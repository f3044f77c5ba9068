"""Data minimization at the node (xinyi.privacy.minimize, policies/minimization.toml): aging out
negative records, masking natural persons' identifiers, summary indicators instead of records."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal
from pathlib import Path

import pytest

from node.store import Record
from xinyi.policy import DEFAULT_POLICY_DIR
from xinyi.privacy.minimize import (
    CONFIG_FILE,
    Indicator,
    MinimizationRules,
    age_out,
    default_rules,
    mask,
    minimize,
    summarize,
)
from xinyi.records import uscc as uscc_codes
from xinyi.records.categories import validate_line

TODAY = dt.date(2026, 7, 1)
FIRM = uscc_codes.with_check_character("91510104MA6C1234X")
DEFAULT_CONFIG = (Path(DEFAULT_POLICY_DIR) / CONFIG_FILE).read_text(encoding="utf-8")
ALL = ("registration", "tax", "social_security", "judicial", "admin_penalty", "dishonesty_list")

SOURCES = {
    "registration": "成都市市场监督管理局",
    "tax": "国家税务总局四川省税务局",
    "social_security": "成都市人力资源和社会保障局",
    "judicial": "成都市武侯区人民法院",
    "admin_penalty": "成都市生态环境局",
    "dishonesty_list": "最高人民法院失信被执行人名单",
}


def rec(category: str, as_of: str = "2026-06-30", **fields) -> Record:
    """A record as ingestion stores it: validated and normalized by xinyi.records.categories."""
    line = {"uscc": FIRM, "category": category, "as_of": as_of, "source": SOURCES[category], **fields}
    v = validate_line(line, today=TODAY)
    return Record(v["uscc"], v["category"], v["as_of"], v["source"], v["fields"])


def raw(category: str, as_of: str = "2026-06-30", **fields) -> Record:
    """A record with fields no category defines yet (dishonesty_list, phone numbers, ID numbers)."""
    return Record(FIRM, category, as_of, SOURCES[category], dict(fields))


def penalty(decided: str, decision_no: str = "成环罚〔2021〕15号", as_of: str | None = None) -> Record:
    return rec(
        "admin_penalty",
        as_of=as_of or decided,
        decision_no=decision_no,
        authority="成都市生态环境局",
        decided=decided,
        reason="超标排放大气污染物",
        amount="200000.00",
    )


def case(case_no: str, filed: str, role: str, status: str, as_of: str | None = None) -> Record:
    return rec(
        "judicial",
        as_of=as_of or filed,
        case_no=case_no,
        court="成都市武侯区人民法院",
        filed=filed,
        role=role,
        amount="350000.00",
        status=status,
    )


def rules_with(tmp_path: Path, old: str, new: str) -> MinimizationRules:
    assert old in DEFAULT_CONFIG, old
    path = tmp_path / CONFIG_FILE
    path.write_text(DEFAULT_CONFIG.replace(old, new, 1), encoding="utf-8")
    return MinimizationRules.from_file(path)


def by_name(indicators: list[Indicator]) -> dict[tuple[str, str], object]:
    return {(i.category, i.name): i.value for i in indicators}


# --- aging out ------------------------------------------------------------------------------------


def test_penalty_ages_out_at_exactly_five_years():
    over = penalty("2021-06-30", "罚1号")  # 5 years + 1 day ago
    exactly = penalty("2021-07-01", "罚2号")  # 5 years ago today: decided + 5 years <= today
    under = penalty("2021-07-02", "罚3号")  # 5 years - 1 day ago
    kept = age_out([over, exactly, under], TODAY)
    assert [r.fields["decision_no"] for r in kept] == ["罚3号"]


def test_judicial_case_closed_six_years_ago_is_dropped_but_an_open_one_is_not():
    closed = case("(2020)川0107民初100号", "2020-06-01", "defendant", "closed")
    enforcing = case("(2020)川0107执200号", "2020-06-01", "defendant", "enforcement")
    pending = case("(2020)川0107民初300号", "2020-05-01", "defendant", "pending")
    recent_closed = case("(2022)川0107民初400号", "2022-03-01", "defendant", "closed")
    kept = age_out([closed, enforcing, pending, recent_closed], TODAY)
    assert [r.fields["case_no"] for r in kept] == [
        "(2020)川0107执200号",
        "(2020)川0107民初300号",
        "(2022)川0107民初400号",
    ]


def test_a_case_ages_by_its_latest_record():
    # Supplied while pending, then again when closed: the closed record decides for both.
    was_pending = case("(2019)川0107民初1号", "2019-04-01", "defendant", "pending", as_of="2019-04-02")
    now_closed = case("(2019)川0107民初1号", "2019-04-01", "defendant", "closed", as_of="2020-01-15")
    assert age_out([was_pending, now_closed], TODAY) == []
    # The other way round (closed supplied first, later reopened for enforcement): kept.
    reopened = case("(2019)川0107民初1号", "2019-04-01", "defendant", "enforcement", as_of="2022-01-15")
    assert len(age_out([was_pending, now_closed, reopened], TODAY)) == 3


def test_dishonesty_listing_ages_from_its_as_of_and_other_categories_never_age():
    old_listing = raw("dishonesty_list", as_of="2021-06-30")
    listing = raw("dishonesty_list", as_of="2021-07-02")
    old_tax = rec("tax", as_of="2012-02-15", period="2012-01", tax_paid="100.00", credit_rating="D")
    old_registration = rec(
        "registration", as_of="2001-01-01", name="成都老厂", legal_representative="王建华",
        registered_capital="1.00", established="1990-01-01", status="revoked",
    )
    assert age_out([old_listing, listing, old_tax, old_registration], TODAY) == [listing, old_tax, old_registration]


def test_29_february_ages_on_28_february():
    leap = penalty("2020-02-29")
    assert age_out([leap], dt.date(2025, 2, 27)) == [leap]
    assert age_out([leap], dt.date(2025, 2, 28)) == []


def test_years_are_configurable_per_category(tmp_path: Path):
    three = rules_with(
        tmp_path,
        "[retention.admin_penalty]\nyears = 5",
        "[retention.admin_penalty]\nyears = 3",
    )
    four_years_ago = penalty("2022-06-01")
    two_years_ago = penalty("2024-06-01", "罚2号")
    five_and_a_half = case("(2021)川0107民初9号", "2021-01-01", "defendant", "closed")
    records = [four_years_ago, two_years_ago, five_and_a_half]
    assert three.age_out(records, TODAY) == [two_years_ago]  # judicial still 5 years
    assert default_rules().age_out(records, TODAY) == [four_years_ago, two_years_ago]
    # Exactly at the configured boundary.
    assert three.age_out([penalty("2023-07-01")], TODAY) == []
    assert len(three.age_out([penalty("2023-07-02")], TODAY)) == 1


# --- masking --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "masked"),
    [("张三", "张*"), ("张三丰", "张**"), ("欧阳娜娜", "欧阳**"), ("司马光", "司马*"), ("张", "*"), ("欧阳", "欧*")],
)
def test_legal_representative_keeps_only_the_surname(name: str, masked: str):
    registration = rec(
        "registration", name="成都锦江蓉新科技有限公司", legal_representative=name,
        registered_capital="1000000.00", established="2010-05-04", status="active",
    )
    (out,) = mask([registration])
    assert out.fields["legal_representative"] == masked
    assert out.fields["name"] == "成都锦江蓉新科技有限公司"  # the enterprise is not a person
    assert registration.fields["legal_representative"] == name  # the input is untouched


def test_id_numbers_and_phones_are_masked():
    record = raw(
        "registration",
        legal_representative="王建华",
        legal_representative_id="510104199001011234",
        phone="13812345678",
        contact_phone="13987654321",
        name="成都锦江蓉新科技有限公司",
        registered_capital="1000000.00",
    )
    (out,) = mask([record])
    assert out.fields == {
        "legal_representative": "王**",
        "legal_representative_id": "510104********1234",
        "phone": "138****5678",
        "contact_phone": "139****4321",
        "name": "成都锦江蓉新科技有限公司",
        "registered_capital": "1000000.00",
    }
    assert out.key != record.key and (out.uscc, out.category, out.as_of, out.source) == (
        record.uscc, record.category, record.as_of, record.source,
    )


def test_a_value_too_short_to_mask_partly_is_masked_whole():
    (out,) = mask([raw("registration", phone="1234567")])
    assert out.fields["phone"] == "*******"


def test_masked_fields_come_from_the_config(tmp_path: Path):
    rules = rules_with(tmp_path, '"*.phone" = "phone"\n', '"*.phone" = "phone"\n"*.email" = "resident_id"\n')
    (out,) = rules.mask([raw("registration", email="wang.jianhua@example.com")])
    assert out.fields["email"] == "wang.j**************.com"
    (untouched,) = default_rules().mask([raw("registration", email="wang.jianhua@example.com")])
    assert untouched.fields["email"] == "wang.jianhua@example.com"


# --- summary --------------------------------------------------------------------------------------

LEGAL_REPRESENTATIVE = "王建华"
# 12 months up to the latest period 2026-06, one month (2025-09) not reported.
WINDOW_TAX = {
    "2025-07": "48123.45", "2025-08": "51234.56", "2025-10": "47001.10", "2025-11": "52345.67",
    "2025-12": "49876.54", "2026-01": "50112.23", "2026-02": "48999.99", "2026-03": "51111.11",
    "2026-04": "47777.77", "2026-05": "52222.22", "2026-06": "49500.05",
}
WINDOW_SUM = sum(Decimal(v) for v in WINDOW_TAX.values())  # 548304.69: band 100000-1000000
OLDER_TAX = {"2025-05": "912345.67", "2025-06": "898765.43"}  # outside the window


def enterprise_file() -> list[Record]:
    records = [
        rec("registration", as_of="2019-03-01", name="成都锦江蓉新科技有限公司",
            legal_representative="李四", registered_capital="500000.00", established="2010-05-04", status="suspended"),
        rec("registration", as_of="2026-06-30", name="成都锦江蓉新科技有限公司",
            legal_representative=LEGAL_REPRESENTATIVE, registered_capital="8000000.00",
            established="2010-05-04", status="active"),
    ]
    for period, paid in {**OLDER_TAX, **WINDOW_TAX}.items():
        rating = "B" if period == "2026-06" else "A"
        records.append(rec("tax", as_of=f"{period}-28", period=period, tax_paid=paid, credit_rating=rating))
    # 2026-05 was first supplied with a wrong amount, then corrected: only the correction counts.
    records.append(rec("tax", as_of="2026-05-20", period="2026-05", tax_paid="990000.00", credit_rating="A"))
    for period, headcount in {"2025-06": 40, "2025-12": 47, "2026-06": 52}.items():
        records.append(rec("social_security", as_of=f"{period}-28", period=period,
                           insured_headcount=headcount, contributions_paid="98765.43"))
    records += [
        case("(2025)川0107民初11号", "2025-01-10", "defendant", "pending"),  # open, recent
        case("(2023)川0107民初22号", "2023-03-01", "defendant", "closed"),  # neither
        case("(2026)川0107民初33号", "2026-02-01", "plaintiff", "pending"),  # recent, not defendant
        case("(2025)川0107民初44号", "2025-02-01", "defendant", "pending", as_of="2025-02-05"),
        case("(2025)川0107民初44号", "2025-02-01", "defendant", "closed", as_of="2026-05-10"),  # recent, closed
        case("(2019)川0107执55号", "2019-01-01", "defendant", "enforcement"),  # open, old
        case("(2020)川0107民初66号", "2020-01-01", "defendant", "closed"),  # aged out
        penalty("2025-03-15", "成环罚〔2025〕7号"),  # in 24 months
        penalty("2023-01-10", "成环罚〔2023〕3号"),  # not
        penalty("2020-05-01", "成环罚〔2020〕1号"),  # aged out
        raw("dishonesty_list", as_of="2024-01-01", case_no="(2023)川0107执99号"),
    ]
    return records


def test_summary_indicators_from_a_realistic_file():
    indicators = summarize(enterprise_file(), ALL, TODAY)
    assert by_name(indicators) == {
        ("registration", "status"): "active",
        ("registration", "years_established"): 16,
        ("registration", "registered_capital_band"): "5000000-10000000",
        ("tax", "latest_period"): "2026-06",
        ("tax", "latest_credit_rating"): "B",
        ("tax", "tax_paid_12m_band"): "100000-1000000",
        ("tax", "months_reported_12m"): 11,
        ("social_security", "latest_period"): "2026-06",
        ("social_security", "insured_headcount_band"): "50-300",
        ("social_security", "headcount_change_12m"): 30,  # 40 -> 52
        ("judicial", "open_cases_as_defendant"): 2,
        ("judicial", "cases_24m"): 3,
        ("admin_penalty", "penalty_in_24m"): True,
        ("admin_penalty", "penalties_24m"): 1,
        ("dishonesty_list", "on_dishonesty_list"): True,
    }
    assert [i.category for i in indicators] == sorted(
        (i.category for i in indicators), key=ALL.index
    )
    rating = next(i for i in indicators if i.name == "latest_credit_rating")
    assert (rating.as_of, rating.sources) == ("2026-06-28", ("国家税务总局四川省税务局",))


def test_tax_band_follows_the_twelve_month_sum(tmp_path: Path):
    # With a boundary just above the window's sum, the band moves; the older months never count.
    rules = rules_with(
        tmp_path,
        "tax_paid_12m_band = [0, 100_000, 1_000_000, 10_000_000]",
        "tax_paid_12m_band = [0, 548304, 548305]",
    )
    assert WINDOW_SUM == Decimal("548304.69")
    assert by_name(rules.summarize(enterprise_file(), ["tax"], TODAY)) == {
        ("tax", "latest_period"): "2026-06",
        ("tax", "latest_credit_rating"): "B",
        ("tax", "tax_paid_12m_band"): "548304-548305",
        ("tax", "months_reported_12m"): 11,
    }


def test_summary_never_carries_amounts_or_names():
    records = enterprise_file()
    serialized = json.dumps([i.to_dict() for i in summarize(records, ALL, TODAY)], ensure_ascii=False)
    assert LEGAL_REPRESENTATIVE not in serialized and "李四" not in serialized
    assert "成都锦江蓉新科技有限公司" not in serialized
    assert "(2025)川0107民初11号" not in serialized
    for record in records:
        for key in ("tax_paid", "registered_capital", "amount", "contributions_paid"):
            if key in record.fields:
                assert record.fields[key] not in serialized
                assert record.fields[key].split(".")[0] not in serialized.replace("5000000-10000000", "")
    assert str(WINDOW_SUM) not in serialized and str(int(WINDOW_SUM)) not in serialized


def test_summary_only_for_the_categories_asked_and_no_data_means_zero():
    indicators = summarize([], ["judicial", "admin_penalty", "dishonesty_list", "tax", "registration"], TODAY)
    assert by_name(indicators) == {
        ("tax", "months_reported_12m"): 0,
        ("judicial", "open_cases_as_defendant"): 0,
        ("judicial", "cases_24m"): 0,
        ("admin_penalty", "penalty_in_24m"): False,
        ("admin_penalty", "penalties_24m"): 0,
        ("dishonesty_list", "on_dishonesty_list"): False,
    }
    assert all(i.sources == () and i.as_of == "2026-07-01" for i in indicators)
    assert summarize(enterprise_file(), ["utilities"], TODAY) == []
    assert {i.category for i in summarize(enterprise_file(), ["judicial"], TODAY)} == {"judicial"}


def test_an_aged_out_listing_is_not_a_listing():
    old = raw("dishonesty_list", as_of="2020-01-01")
    assert by_name(summarize([old], ["dishonesty_list"], TODAY)) == {("dishonesty_list", "on_dishonesty_list"): False}


def test_headcount_change_is_omitted_without_the_period_a_year_before():
    records = [
        rec("social_security", as_of="2026-06-28", period="2026-06", insured_headcount=52, contributions_paid="1.00"),
        rec("social_security", as_of="2025-07-28", period="2025-07", insured_headcount=40, contributions_paid="1.00"),
        rec("social_security", as_of="2025-05-28", period="2025-05", insured_headcount=0, contributions_paid="0.00"),
    ]
    assert by_name(summarize(records, ["social_security"], TODAY)) == {
        ("social_security", "latest_period"): "2026-06",
        ("social_security", "insured_headcount_band"): "50-300",
    }
    shrinking = [
        rec("social_security", as_of="2026-06-28", period="2026-06", insured_headcount=5, contributions_paid="1.00"),
        rec("social_security", as_of="2025-06-28", period="2025-06", insured_headcount=8, contributions_paid="1.00"),
    ]
    values = by_name(summarize(shrinking, ["social_security"], TODAY))
    assert values[("social_security", "headcount_change_12m")] == -38  # -37.5 rounds away from zero
    assert values[("social_security", "insured_headcount_band")] == "0-10"


def test_bands_render_as_documented():
    records = [
        rec("registration", name="甲", legal_representative="张三", registered_capital=amount,
            established="2020-01-01", status="active")
        for amount in ("0.00", "999999.99", "1000000.00", "100000000.00", "250000000.00")
    ]
    bands = [
        by_name(summarize([r], ["registration"], TODAY))[("registration", "registered_capital_band")]
        for r in records
    ]
    assert bands == ["0-1000000", "0-1000000", "1000000-5000000", ">=100000000", ">=100000000"]


def test_indicator_to_dict_is_json():
    indicator = Indicator("judicial", "cases_24m", 3, "2026-05-10", ("成都市武侯区人民法院",))
    assert json.loads(json.dumps(indicator.to_dict(), ensure_ascii=False)) == {
        "category": "judicial", "name": "cases_24m", "value": 3, "as_of": "2026-05-10",
        "sources": ["成都市武侯区人民法院"],
    }


# --- the whole step -------------------------------------------------------------------------------


def test_minimize_detail_ages_filters_masks_and_orders():
    records = enterprise_file()
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    out, indicators = minimize(records, categories=["admin_penalty", "registration"], detail_level="detail", today=TODAY)
    again, _ = minimize(shuffled, categories=["registration", "admin_penalty"], detail_level="detail", today=TODAY)
    assert indicators == []
    assert [r.key for r in out] == [r.key for r in again]
    assert [(r.category, r.as_of) for r in out] == [
        ("registration", "2026-06-30"),
        ("registration", "2019-03-01"),
        ("admin_penalty", "2025-03-15"),
        ("admin_penalty", "2023-01-10"),
    ]
    assert [r.fields["legal_representative"] for r in out[:2]] == ["王**", "李*"]


def test_minimize_summary_returns_indicators_only():
    records = enterprise_file()
    out, indicators = minimize(records, categories=["dishonesty_list", "tax"], detail_level="summary", today=TODAY)
    assert out == []
    assert [(i.category, i.name) for i in indicators] == [
        ("tax", "latest_period"),
        ("tax", "latest_credit_rating"),
        ("tax", "tax_paid_12m_band"),
        ("tax", "months_reported_12m"),
        ("dishonesty_list", "on_dishonesty_list"),
    ]
    with pytest.raises(ValueError, match="detail_level"):
        minimize(records, categories=["tax"], detail_level="full", today=TODAY)


# --- the configuration ----------------------------------------------------------------------------


def test_default_config_loads_from_the_policy_dir():
    rules = MinimizationRules.from_dir(DEFAULT_POLICY_DIR)
    assert rules == default_rules()
    assert {r.category: r.years for r in rules.retention} == {"judicial": 5, "admin_penalty": 5, "dishonesty_list": 5}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("[retention.judicial]\nyears = 5", "[retention.judicial]\nyears = 0", r"\[retention\.judicial\] years: "),
        ("[retention.judicial]\nyears = 5", "[retention.judicial]\nyears = \"5\"", r"\[retention\.judicial\] years: "),
        ('end_date = ["decided"]', 'end_date = ["decidedd"]', r"\[retention\.admin_penalty\] end_date: 'decidedd'"),
        ('end_date = ["decided"]', 'end_date = ["authority"]', r"\[retention\.admin_penalty\] end_date: .*not a date"),
        ('status = ["pending", "enforcement"]', 'status = ["pending", "open"]', r"\[retention\.judicial\] open_while\.status: 'open'"),
        ("[retention.dishonesty_list]\nyears = 5\n", "[retention.tax]\nyears = 5\n", r"\[retention\] tax: not a negative category"),
        ("mask_char = \"*\"", "mask_char = \"**\"", r"\[masking\] mask_char: "),
        ('"*.phone" = "phone"', '"*.phone" = "telephone"', r"\[masking\.fields\] '\*\.phone': unknown style 'telephone'"),
        ('kind = "keep_ends"\nkeep_first = 3', 'kind = "keep_ends"\nkeep_first = -3', r"\[masking\.styles\.phone\] keep_first: "),
        ('"*.phone" = "phone"', '"phone" = "phone"', r"\[masking\.fields\] 'phone': "),
        ("insured_headcount_band = [0, 10, 50, 300, 1000]", "insured_headcount_band = [0, 50, 10]", r"\[summary\.bands\] insured_headcount_band: .*increasing"),
        ("insured_headcount_band = [0, 10, 50, 300, 1000]", "", r"\[summary\.bands\] insured_headcount_band: is required"),
        ('judicial = ["open_cases_as_defendant", "cases_24m"]', 'judicial = ["open_cases"]', r"\[summary\.indicators\] judicial: unknown indicator 'open_cases'"),
        ("[summary.bands]\n#", "[summary.bands]\nyears_band = [0, 5]\n#", r"\[summary\.bands\] years_band: not a banded indicator"),
        ("[retention.judicial]\nyears = 5", "[retention.judicial]\nyears = 5\nmonths = 3", r"\[retention\.judicial\] months: unknown key"),
    ],
)
def test_invalid_config_names_file_section_and_key(tmp_path: Path, old: str, new: str, expected: str):
    with pytest.raises(ValueError, match=expected) as err:
        rules_with(tmp_path, old, new)
    assert str(err.value).startswith(f"{tmp_path / CONFIG_FILE}: ")


def test_missing_section_unreadable_file_and_bad_toml(tmp_path: Path):
    path = tmp_path / CONFIG_FILE
    path.write_text(DEFAULT_CONFIG.split("# --- [summary]")[0], encoding="utf-8")
    with pytest.raises(ValueError, match=r"minimization\.toml: \[summary\]: section is required"):
        MinimizationRules.from_file(path)
    no_judicial = DEFAULT_CONFIG.replace("[retention.judicial]", "[retention.judicial_old]")
    path.write_text(no_judicial, encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[retention\] judicial_old: not a negative category"):
        MinimizationRules.from_file(path)
    path.write_text("[retention\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"minimization\.toml: not valid TOML"):
        MinimizationRules.from_file(path)
    with pytest.raises(ValueError, match=r"nowhere.*cannot read"):
        MinimizationRules.from_dir(tmp_path / "nowhere")


def test_the_24_month_window_starts_after_the_same_day_two_years_ago():
    edge = penalty("2024-07-01", "罚1号")  # exactly 24 months before today: outside
    inside = penalty("2024-07-02", "罚2号")
    assert by_name(summarize([edge], ["admin_penalty"], TODAY)) == {
        ("admin_penalty", "penalty_in_24m"): False,
        ("admin_penalty", "penalties_24m"): 0,
    }
    assert by_name(summarize([edge, inside], ["admin_penalty"], TODAY))[("admin_penalty", "penalties_24m")] == 1


# --- what the mutation run found unchecked (make mutate, xinyi/privacy/minimize.py) -----------------


def test_an_open_matter_does_not_stop_the_ageing_of_the_matters_after_it():
    open_first = case("(2019)川0107执1号", "2019-04-01", "defendant", "enforcement")
    closed_after = case("(2019)川0107民初2号", "2019-05-01", "defendant", "closed")
    assert age_out([open_first, closed_after], TODAY) == [open_first]


def test_a_record_ages_from_its_end_date_field_not_from_when_it_was_supplied():
    # Decided five years and a day ago, supplied to the node three years later: it ages by `decided`.
    late = penalty("2021-06-30", "罚1号", as_of="2024-01-01")
    assert age_out([late], TODAY) == []
    # Decided a year ago, supplied the same day: kept (the other way round would drop it).
    recent = penalty("2025-07-01", "罚2号", as_of="2025-07-01")
    assert age_out([recent], TODAY) == [recent]


def test_end_date_falls_through_its_list_then_to_as_of(tmp_path: Path):
    # Records stored before their category defined `filed` lack it: the next field listed decides...
    rules = rules_with(tmp_path, 'end_date = ["filed"]', 'end_date = ["filed", "as_of"]')
    old = raw("judicial", as_of="2020-06-01", case_no="(2020)川0107民初1号", status="closed")
    dated = case("(2020)川0107民初2号", "2020-06-01", "defendant", "closed", as_of="2025-01-01")
    assert rules.age_out([old, dated], TODAY) == []
    recent = raw("judicial", as_of="2025-01-01", case_no="(2020)川0107民初3号", status="closed")
    assert rules.age_out([recent], TODAY) == [recent]
    # ... and with none listed present, the record's own as_of.
    assert age_out([old, recent], TODAY) == [recent]


def test_a_retention_longer_than_the_calendar_never_ages_out(tmp_path: Path):
    rules = rules_with(tmp_path, "[retention.admin_penalty]\nyears = 5", "[retention.admin_penalty]\nyears = 8000")
    decided = penalty("2021-06-30")
    assert rules.age_out([decided], TODAY) == [decided]


@pytest.mark.parametrize("months", [0, 1, 2, 11, 12, 13, 24, 25, 120])
def test_months_before_is_the_same_day_or_the_shorter_months_last(months: int):
    import calendar

    from xinyi.privacy.minimize import months_before

    day = dt.date(2023, 1, 1)
    while day < dt.date(2025, 1, 1):  # every day of a common and a leap year
        back = day.year * 12 + day.month - 1 - months
        year, month = back // 12, back % 12 + 1
        expected = dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))
        assert months_before(day, months) == expected, (day, months)
        day += dt.timedelta(days=1)


def test_the_24_month_window_at_a_month_end_and_on_a_leap_day():
    # 31 March 2026 less 24 months: 31 March 2024, outside; 1 April 2024 inside.
    today = dt.date(2026, 3, 31)
    edge, inside = penalty("2024-03-31", "罚1号"), penalty("2024-04-01", "罚2号")
    assert by_name(summarize([edge, inside], ["admin_penalty"], today))[("admin_penalty", "penalties_24m")] == 1
    # 29 February 2028 less 24 months: 28 February 2026 (no 29th), outside; 1 March inside.
    today = dt.date(2028, 2, 29)
    edge, inside = penalty("2026-02-28", "罚3号"), penalty("2026-03-01", "罚4号")
    assert by_name(summarize([edge, inside], ["admin_penalty"], today))[("admin_penalty", "penalties_24m")] == 1


def test_an_unknown_category_is_named_first_one_first():
    with pytest.raises(ValueError, match=r"unknown category 'credit_card'; known: registration, "):
        summarize([], ["tax", "credit_card", "mortgage"], TODAY)


def test_a_record_with_nothing_to_mask_is_returned_as_it_was():
    tax = rec("tax", period="2026-05", tax_paid="100.00", credit_rating="A")
    registration = rec("registration", name="成都老厂", legal_representative="王建华", registered_capital="1.00",
                       established="1990-01-01", status="active")
    out = mask([tax, registration])
    assert out[0] is tax  # not a copy: nothing of it is a natural person's
    assert out[1] is not registration and out[1].fields["legal_representative"] == "王**"


def test_adding_years_up_to_the_calendar_end():
    from xinyi.privacy.minimize import _add_years

    assert _add_years(dt.date(9994, 3, 1), 5) == dt.date(9999, 3, 1)  # the last year is still a year
    assert _add_years(dt.date(9994, 3, 1), 6) == dt.date.max  # past it: never
    assert _add_years(dt.date(2024, 2, 29), 1) == dt.date(2025, 2, 28)
