"""Time, in one place, so tests can move it (a clock is outside the product)."""

from __future__ import annotations

import time
from typing import Callable

Clock = Callable[[], int]

MINUTE_MS = 60_000
DAY_MS = 86_400_000


def now_ms() -> int:
    """Wall-clock Unix time in milliseconds."""
    return time.time_ns() // 1_000_000
