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

MAX_CATEGORIES_PER_QUERY = len(CATEGORIES)


def category_problem(name: str) -> str | None:
    if name not in CATEGORIES:
        return f"unknown category {quoted(name)}; known: {', '.join(CATEGORIES)}"
    return None


def purpose_problem(name: str) -> str | None:
    if name not in PURPOSES:
        return f"unknown purpose {quoted(name)}; known: {', '.join(PURPOSES)}"
    return None
