"""USCC checks: the reasons a person can act on, the operator's allow-list, routing by area."""

from __future__ import annotations

from xinyi.records import uscc

REAL = ["914403001922038216", "91440300708461136T", "91100000100003962T"]


def test_real_codes_pass_and_each_mistake_is_named():
    assert all(uscc.problem(c) is None for c in REAL)
    assert "17 characters" in uscc.problem(REAL[0][:17])
    assert "outside the USCC alphabet" in uscc.problem(REAL[0][:17] + "I")
    assert "check character is '7'" in uscc.problem(REAL[0][:17] + "7")


def test_the_operators_allow_list_admits_a_real_code_that_fails_its_check(monkeypatch):
    failing = REAL[0][:17] + "7"
    assert uscc.problem(failing) is not None
    monkeypatch.setenv("XINYI_USCC_ALLOWLIST", f" {failing.lower()} , 91000000000000000X")
    assert uscc.problem(failing) is None
    assert "outside the USCC alphabet" in uscc.problem(failing[:17] + "Z")  # the alphabet still applies


def test_routing_goes_from_county_to_city_to_province():
    assert uscc.route_area_codes("510104") == ("510104", "510100", "510000")
    assert uscc.route_area_codes("510100") == ("510100", "510000")
    assert uscc.route_area_codes("510000") == ("510000",)
