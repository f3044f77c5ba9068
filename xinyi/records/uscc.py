"""The Unified Social Credit Code (GB 32100-2015) and routing by its area code.

Validation is python-stdnum's (stdnum.cn.uscc); this module adds the reasons a person can act
on, an operator allow-list for the few real codes that fail the check, and the area code.
"""

from __future__ import annotations

import functools
import os

from stdnum.cn import uscc as _stdnum_uscc

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
LENGTH = 18

# Real codes in the wild that fail the check character; operators list them (comma-separated)
# in XINYI_USCC_ALLOWLIST so that their enterprises can still be served.
_ALLOWLIST_ENV = "XINYI_USCC_ALLOWLIST"


def allowlist() -> frozenset[str]:
    """The codes in XINYI_USCC_ALLOWLIST, read now (a change applies at once)."""
    return _parse_allowlist(os.environ.get(_ALLOWLIST_ENV, ""))


@functools.lru_cache(maxsize=8)
def _parse_allowlist(raw: str) -> frozenset[str]:
    return frozenset(c.strip().upper() for c in raw.split(",") if c.strip())


def problem(code: str) -> str | None:
    """Why `code` is not a valid USCC, or None when it is."""
    if not isinstance(code, str) or not code:
        return "is empty; expected 18 characters"
    if len(code) != LENGTH:
        return f"has {len(code)} characters; expected {LENGTH}"
    bad = sorted({ch for ch in code if ch not in ALPHABET})
    if bad:
        return f"contains {''.join(bad)!r}, outside the USCC alphabet (digits and A-Y without I, O, S, V, Z)"
    if not _stdnum_uscc.is_valid(code) and code not in allowlist():  # the allow-list only for codes that fail
        expected = _stdnum_uscc.calc_check_digit(code[:17])
        if code[17] != expected:
            return f"check character is {code[17]!r}; the first 17 characters give {expected!r}"
        return "is not a valid USCC (organization code or area code check failed)"
    return None


def is_valid(code: str) -> bool:
    return problem(code) is None


@functools.lru_cache(maxsize=1 << 16)
def passes_check(code: str) -> bool:
    """Valid on its own, without the allow-list: 18 characters of the alphabet, organization
    code and check character right. Cached: a record file repeats each enterprise's code."""
    return len(code) == LENGTH and all(ch in ALPHABET for ch in code) and bool(_stdnum_uscc.is_valid(code))


def area_code(code: str) -> str:
    """Characters 3-8: the GB/T 2260 area code of the registering authority."""
    return code[2:8]


def route_area_codes(area: str) -> tuple[str, ...]:
    """The node ids that serve an area, most local first: county, city (prefecture), province.

    510104 (Jinjiang district) -> 510104, 510100 (Chengdu), 510000 (Sichuan).
    """
    city = area[:4] + "00"
    province = area[:2] + "0000"
    return tuple(dict.fromkeys((area, city, province)))


def in_area_of(node_id: str, code: str) -> bool:
    """Whether a node serves an enterprise by area: its node id is one of the enterprise's
    route_area_codes (node 510100 serves 5101xx, province 510000 serves 51xxxx)."""
    return node_id in route_area_codes(area_code(code))


def with_check_character(first17: str) -> str:
    """Complete 17 characters into a valid USCC (used by the synthetic data generator)."""
    return first17 + _stdnum_uscc.calc_check_digit(first17)
