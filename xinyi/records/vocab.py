"""The network's controlled vocabulary: data categories and query purposes.

Categories follow the State Council lists (2021 No. 52, 2024 No. 15). Field definitions for
the categories that nodes ingest live in xinyi.records.categories.
"""

from __future__ import annotations

from xinyi.errors import quoted

CATEGORIES: tuple[str, ...] = (
    "registration",
    "tax",
    "social_security",
    "provident_fund",
    "utilities",
    "customs",
    "judicial",
    "admin_license",
    "admin_penalty",
    "dishonesty_list",
    "honors",
    "real_estate",
    "intellectual_property",
)

# Why an institution may ask. Which role may use which purpose is policy (policies/xinyi.cedar).
PURPOSES: tuple[str, ...] = ("credit_assessment", "loan_monitoring", "guarantee", "policy_matching")

# An enterprise reading its own records (Credit Reporting Regulation 《征信业管理条例》 Art. 17: the
# information subject may query its own information). A query purpose, never a consent's: it
# relies on no consent, only on the signer's certificate naming the enterprise asked about.
SELF_ACCESS = "self_access"
QUERY_PURPOSES: tuple[str, ...] = PURPOSES + (SELF_ACCESS,)

MAX_CATEGORIES_PER_QUERY = len(CATEGORIES)


def category_problem(name: str) -> str | None:
    if name not in CATEGORIES:
        return f"unknown category {quoted(name)}; known: {', '.join(CATEGORIES)}"
    return None


def purpose_problem(name: str) -> str | None:
    """A consent's (or an evaluation's) purpose."""
    if name not in PURPOSES:
        return f"unknown purpose {quoted(name)}; known: {', '.join(PURPOSES)}"
    return None


def query_purpose_problem(name: str) -> str | None:
    """A query's purpose: a consent's, or self_access."""
    if name not in QUERY_PURPOSES:
        return f"unknown purpose {quoted(name)}; known: {', '.join(QUERY_PURPOSES)}"
    return None
