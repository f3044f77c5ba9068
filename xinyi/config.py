"""Reading the TOML configuration files in policies/ (fair use, minimization, features,
eligibility, alerts, statistics): one place that turns a missing or malformed file into the
module's own PolicyError subclass, naming the file."""

from __future__ import annotations

import tomllib
from pathlib import Path


def read_toml(path: Path | str, error: type[Exception], what: str = "") -> dict:
    """The parsed file, or `error` saying which file and what is wrong with it."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read{' ' + what if what else ''}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
