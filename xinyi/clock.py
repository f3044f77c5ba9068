"""Time, in one place, so tests can move it (a clock is outside the product)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Callable

Clock = Callable[[], int]

MINUTE_MS = 60_000
DAY_MS = 86_400_000


def now_ms() -> int:
    """Wall-clock Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


def utc_text(ms: int) -> str:
    """A moment as a person reads it: "2026-05-01 09:30:00 UTC"."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
