"""Messages by language: one catalogue per language (locale/<lang>.toml), Chinese by default.

Keys are dotted names; a message may name values in braces ({count}). A key missing from a
catalogue is a bug that tests/test_web.py catches (every catalogue has the same keys)."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path

LANGUAGES = ("zh", "en")
DEFAULT_LANGUAGE = "zh"
LOCALE_DIR = Path(__file__).parent / "locale"


def _flatten(table: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


@lru_cache(maxsize=None)
def catalogue(language: str) -> dict[str, str]:
    with (LOCALE_DIR / f"{language}.toml").open("rb") as f:
        return _flatten(tomllib.load(f))


def translator(language: str):
    """t(key, **values) for one language; an unknown key shows as itself, never an error page."""
    messages = catalogue(language if language in LANGUAGES else DEFAULT_LANGUAGE)

    def t(key: str, **values) -> str:
        text = messages.get(key, key)
        return text.format(**values) if values else text

    return t
