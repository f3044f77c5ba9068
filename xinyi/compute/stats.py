"""Differentially private statistics: the query, the configuration, the noise and the merge.

A government department signs a StatsQueryBody (metric, grouping, epsilon); the registry relays
it to every node; each node answers from its own records with OpenDP Laplace noise calibrated to
the epsilon, charged to the department's yearly budget at that node; the registry adds the
nodes' noisy cells up and reports a 95% error bound for each.

What a node counts (its population) and adds up, per enterprise, once per node:

    metric / grouping        population: enterprises with records in     per enterprise
    COUNT (none, area)       registration                                 1
    COUNT by tax_rating      tax                                          1
    COUNT by headcount_band  social_security                              1
    SUM_TAX_PAID_12M         tax (and social_security by headcount_band)  tax paid in the 12 months up
                                                                          to its latest period, clamped
    SUM_INSURED_HEADCOUNT    social_security (and tax by tax_rating)      latest insured headcount, clamped

An enterprise's registration (market regulation) record, tax records and social insurance
records each sit at one node, so the registry's sum over nodes counts each enterprise once as
long as that holds; an enterprise whose records of one category sit at two nodes counts twice.

Privacy: the unit is one enterprise. Adding or removing all of one enterprise's records changes
one cell of a node's histogram, by 1 (counts) or by at most the clamp bound (sums): that is the
L1 sensitivity, and the noise on every cell is Laplace(sensitivity / epsilon) (OpenDP's vector
Laplace; the discrete Laplace for integer values). The cells of every grouping are a fixed,
public list (never read from the data); suppression of small cells is decided on the noisy
count, which is post-processing. Sum queries spend `count_share_for_sums` of epsilon on a noisy
count (for suppression, not released) and the rest on the sum.

Domain core: no gRPC, no storage.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from xinyi.clock import MINUTE_MS
from xinyi.config import read_toml
from xinyi.crypto.envelope import Verified, sign, verify
from xinyi.crypto.pki import Identity, TrustAnchor
from xinyi.errors import Refusal, quoted
from xinyi.policy import DEFAULT_POLICY_DIR, PolicyError
from xinyi.privacy.consent import CHINA
from xinyi.records import uscc as uscc_codes
from xinyi.records.categories import month_index
from xinyi.v1 import envelope_pb2, stats_pb2

__all__ = [
    "CONFIG_FILE", "GROUPINGS", "METRICS", "Cell", "MergedCell", "NodeCells", "Release", "StatsConfig",
    "StatsConfigError", "StatsQuery", "Table", "build_stats_query", "budget_year", "cell_keys",
    "check_stats_query", "error_bound_95", "facts_of", "merge", "population", "release", "tabulate",
]

CONFIG_FILE = "statistics.toml"
TIMESTAMP_WINDOW_MS = 5 * MINUTE_MS
NONCE_BYTES = 16
CONFIDENCE = 0.95
# Budgets are compared with this slack, so that ten charges of 0.1 fit a budget of 1.0.
BUDGET_TOLERANCE = 1e-9

METRICS: dict[str, int] = {
    "count": stats_pb2.STATS_METRIC_COUNT,
    "sum_tax_paid_12m": stats_pb2.STATS_METRIC_SUM_TAX_PAID_12M,
    "sum_insured_headcount": stats_pb2.STATS_METRIC_SUM_INSURED_HEADCOUNT,
}
GROUPINGS: dict[str, int] = {
    "none": stats_pb2.STATS_GROUP_BY_NONE,
    "area": stats_pb2.STATS_GROUP_BY_AREA,
    "tax_rating": stats_pb2.STATS_GROUP_BY_TAX_RATING,
    "headcount_band": stats_pb2.STATS_GROUP_BY_HEADCOUNT_BAND,
}
METRIC_NAMES = {v: k for k, v in METRICS.items()}
GROUPING_NAMES = {v: k for k, v in GROUPINGS.items()}

RATINGS = ("A", "B", "M", "C", "D")
ALL = "all"
OTHER_AREA = "other"
UNRATED = "unrated"
UNKNOWN_BAND = "unknown"

_REGISTRATION, _TAX, _SOCIAL = "registration", "tax", "social_security"


# --- configuration --------------------------------------------------------------------------------


class StatsConfigError(PolicyError, ValueError):
    """statistics.toml cannot be used; the message names the file, section and key."""


@dataclass(frozen=True)
class StatsConfig:
    """The contents of policies/statistics.toml, checked. Build with from_file / from_dir."""

    source: str
    total_epsilon: float
    min_epsilon: float
    max_epsilon: float
    min_cell_size: int
    count_share_for_sums: float
    clamp_tax_paid_12m: float
    clamp_insured_headcount: int
    headcount_bands: tuple[int, ...]

    @classmethod
    def from_dir(cls, policy_dir: Path | str = DEFAULT_POLICY_DIR) -> "StatsConfig":
        return cls.from_file(Path(policy_dir) / CONFIG_FILE)

    @classmethod
    def from_file(cls, path: Path | str) -> "StatsConfig":
        path = Path(path)
        return _ConfigLoader(str(path)).load(read_toml(path, StatsConfigError))

    def sensitivity(self, metric: int) -> float:
        """How much one enterprise can change one cell of the metric."""
        if metric == stats_pb2.STATS_METRIC_SUM_TAX_PAID_12M:
            return self.clamp_tax_paid_12m
        if metric == stats_pb2.STATS_METRIC_SUM_INSURED_HEADCOUNT:
            return self.clamp_insured_headcount
        return 1


_SECTIONS = {
    "budget": ("total_epsilon",),
    "query": ("min_epsilon", "max_epsilon", "min_cell_size", "count_share_for_sums"),
    "clamp": ("tax_paid_12m", "insured_headcount"),
    "groups": ("headcount_bands",),
}


class _ConfigLoader:
    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, section: str, key: str, reason: str) -> StatsConfigError:
        return StatsConfigError(f"{self.path}: [{section}] {key}: {reason}")

    def load(self, data: dict) -> StatsConfig:
        for name in data:
            if name not in _SECTIONS:
                raise StatsConfigError(f"{self.path}: [{name}]: unknown section; known: {', '.join(_SECTIONS)}")
        values: dict[tuple[str, str], Any] = {}
        for section, keys in _SECTIONS.items():
            table = data.get(section)
            if table is None:
                raise StatsConfigError(f"{self.path}: [{section}]: section is required")
            if not isinstance(table, dict):
                raise StatsConfigError(f"{self.path}: [{section}]: must be a table, got {_kind(table)}")
            for key in table:
                if key not in keys:
                    raise self.error(section, key, f"unknown key; known: {', '.join(keys)}")
            for key in keys:
                if key not in table:
                    raise self.error(section, key, "is required")
                values[section, key] = table[key]

        total = self.number(values, "budget", "total_epsilon", low=0.0)
        min_eps = self.number(values, "query", "min_epsilon", low=0.0)
        max_eps = self.number(values, "query", "max_epsilon", low=0.0)
        if max_eps < min_eps:
            raise self.error("query", "max_epsilon", f"is {max_eps:g}, below min_epsilon {min_eps:g}")
        if max_eps > total:
            raise self.error("query", "max_epsilon", f"is {max_eps:g}, above the whole budget total_epsilon {total:g}")
        min_cell = self.integer(values, "query", "min_cell_size", low=0)
        share = self.number(values, "query", "count_share_for_sums", low=0.0)
        if share >= 1:
            raise self.error("query", "count_share_for_sums", f"is {share:g}; must be between 0 and 1 (exclusive)")
        tax_cap = self.number(values, "clamp", "tax_paid_12m", low=0.0)
        head_cap = self.integer(values, "clamp", "insured_headcount", low=1)
        bands = values["groups", "headcount_bands"]
        if (not isinstance(bands, list) or not bands
                or any(isinstance(b, bool) or not isinstance(b, int) for b in bands)):
            raise self.error("groups", "headcount_bands", f"must be a non-empty list of whole numbers, got {bands!r}")
        if bands[0] < 0 or any(a >= b for a, b in zip(bands, bands[1:])):
            raise self.error("groups", "headcount_bands", f"must be strictly increasing from 0 or more, got {bands!r}")
        return StatsConfig(self.path, total, min_eps, max_eps, min_cell, share, tax_cap, head_cap, tuple(bands))

    def number(self, values: dict, section: str, key: str, *, low: float) -> float:
        """A finite number strictly above `low`."""
        value = values[section, key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(section, key, f"must be a number, got {_kind(value)}")
        if not math.isfinite(value) or value <= low:
            raise self.error(section, key, f"is {value!r}; must be a finite number above {low:g}")
        return float(value)

    def integer(self, values: dict, section: str, key: str, *, low: int) -> int:
        value = values[section, key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(section, key, f"must be a whole number, got {_kind(value)}")
        if value < low:
            raise self.error(section, key, f"is {value}; must be {low} or more")
        return value


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "a whole number", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


# --- the signed query -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsQuery:
    """A verified and validated statistics query."""

    verified: Verified[stats_pb2.StatsQueryBody]
    metric: int
    group_by: int
    epsilon: float

    @property
    def signer(self):
        return self.verified.signer

    @property
    def body_hash(self) -> bytes:
        return self.verified.body_hash

    def describe(self) -> str:
        return (f"metric={METRIC_NAMES.get(self.metric, self.metric)} "
                f"group_by={GROUPING_NAMES.get(self.group_by, self.group_by)} epsilon={self.epsilon:g}")


def build_stats_query(identity: Identity, *, metric: str, group_by: str, epsilon: float, now_ms: int) -> envelope_pb2.SignedEnvelope:
    """A department's signed query. Names as on the command line: metric "count", group_by "area"."""
    if metric not in METRICS:
        raise Refusal.invalid("query.metric", f"unknown metric {quoted(metric)}; known: {', '.join(METRICS)}", "UNKNOWN_METRIC")
    if group_by not in GROUPINGS:
        raise Refusal.invalid("query.group_by", f"unknown grouping {quoted(group_by)}; known: {', '.join(GROUPINGS)}",
                              "UNKNOWN_GROUP_BY")
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise Refusal.invalid("query.epsilon", f"is {epsilon!r}; must be a positive number", "EPSILON_OUT_OF_RANGE")
    body = stats_pb2.StatsQueryBody(metric=METRICS[metric], group_by=GROUPINGS[group_by], epsilon=epsilon,
                                    nonce=os.urandom(NONCE_BYTES), issued_at_ms=now_ms)
    return sign(identity, body)


def check_stats_query(envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor, now_ms: int, config: StatsConfig) -> StatsQuery:
    """Authenticate the query (any member may sign one: the policy decides who may ask) and
    validate every field; Refusal naming the field otherwise."""
    v = verify(envelope, stats_pb2.StatsQueryBody, trust, field="query")
    q = v.message
    if q.metric not in METRIC_NAMES:
        raise Refusal.invalid("query.metric", f"is {_enum_name(stats_pb2.StatsMetric, q.metric)}; expected one of "
                              f"{', '.join(stats_pb2.StatsMetric.Name(m) for m in METRICS.values())}", "UNKNOWN_METRIC")
    if q.group_by not in GROUPING_NAMES:
        raise Refusal.invalid("query.group_by", f"is {_enum_name(stats_pb2.StatsGroupBy, q.group_by)}; expected one of "
                              f"{', '.join(stats_pb2.StatsGroupBy.Name(g) for g in GROUPINGS.values())}",
                              "UNKNOWN_GROUP_BY")
    eps = q.epsilon
    if not math.isfinite(eps) or not (config.min_epsilon <= eps <= config.max_epsilon):
        raise Refusal.invalid("query.epsilon", f"is {eps!r}; a query may ask for {config.min_epsilon:g} to "
                              f"{config.max_epsilon:g}", "EPSILON_OUT_OF_RANGE")
    if len(q.nonce) != NONCE_BYTES:
        raise Refusal.invalid("query.nonce", f"must be {NONCE_BYTES} random bytes")
    skew = q.issued_at_ms - now_ms
    if abs(skew) > TIMESTAMP_WINDOW_MS:
        direction = "ahead of" if skew > 0 else "behind"
        raise Refusal.invalid("query.issued_at_ms", f"is {abs(skew) // 1000} s {direction} this server's clock; at most "
                              "300 s is accepted (check the clock, then sign a fresh query)", "STALE_TIMESTAMP")
    return StatsQuery(v, q.metric, q.group_by, eps)


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return f"the unknown value {value}"


def budget_year(now_ms: int) -> int:
    """The calendar year (Beijing time) a budget charge counts against."""
    return dt.datetime.fromtimestamp(now_ms / 1000, CHINA).year


# --- what a node counts ---------------------------------------------------------------------------


def population(metric: int, group_by: int) -> tuple[str, ...]:
    """The categories whose records make an enterprise part of the query's population."""
    categories: list[str] = []
    if metric == stats_pb2.STATS_METRIC_SUM_TAX_PAID_12M or group_by == stats_pb2.STATS_GROUP_BY_TAX_RATING:
        categories.append(_TAX)
    if metric == stats_pb2.STATS_METRIC_SUM_INSURED_HEADCOUNT or group_by == stats_pb2.STATS_GROUP_BY_HEADCOUNT_BAND:
        categories.append(_SOCIAL)
    return tuple(categories) or (_REGISTRATION,)


@dataclass(frozen=True)
class Facts:
    """What the statistics need to know about one enterprise at one node."""

    uscc: str
    categories: frozenset[str]
    tax_paid_12m: Decimal | None = None  # None: no tax record
    tax_rating: str | None = None
    headcount: int | None = None  # None: no social insurance record


def facts_of(uscc: str, records: Iterable[Any]) -> Facts:
    """Facts from one enterprise's current records (objects with category, as_of, fields and
    record_id, like node.store.Record). Per period, the latest record (by as_of, then id) counts;
    tax paid is summed over the 12 months up to and including the latest period reported, as
    xinyi.privacy.minimize does for tax_paid_12m_band."""
    by_category: dict[str, list[Any]] = {}
    for r in records:
        by_category.setdefault(r.category, []).append(r)
    tax_paid = rating = headcount = None
    tax = _by_period(by_category.get(_TAX, ()))
    if tax:
        last = max(tax)
        rating = tax[last].fields.get("credit_rating")
        amounts = (_decimal(tax[m].fields.get("tax_paid")) for m in tax if last - 11 <= m <= last)
        tax_paid = sum((a for a in amounts if a is not None), Decimal(0))
    social = _by_period(by_category.get(_SOCIAL, ()))
    if social:
        value = _decimal(social[max(social)].fields.get("insured_headcount"))
        headcount = int(value) if value is not None else None
    return Facts(uscc, frozenset(by_category), tax_paid, rating if rating in RATINGS else None, headcount)


def _by_period(records: Iterable[Any]) -> dict[int, Any]:
    latest: dict[int, Any] = {}
    for r in records:
        month = month_index(r.fields.get("period"))
        if month is None:
            continue
        known = latest.get(month)
        if known is None or (r.as_of, r.record_id) > (known.as_of, known.record_id):
            latest[month] = r
    return latest




def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


@functools.cache
def area_codes() -> tuple[str, ...]:
    """Every GB/T 2260 area code, current and former (the list shipped with python-stdnum)."""
    from stdnum import numdb

    codes = []
    for _, low, high, _, children in numdb.get("cn/loc").prefixes:
        for province in range(int(low), int(high) + 1):
            for _, lo, hi, _, _ in children:
                codes.extend(f"{province:02d}{c:04d}" for c in range(int(lo), int(hi) + 1))
    return tuple(sorted(set(codes)))


def cell_keys(group_by: int, node_id: str, metric: int, config: StatsConfig) -> tuple[str, ...]:
    """The public, data-independent list of cells a node releases for a query."""
    cats = population(metric, group_by)
    if group_by == stats_pb2.STATS_GROUP_BY_NONE:
        return (ALL,)
    if group_by == stats_pb2.STATS_GROUP_BY_AREA:
        served = {c for c in area_codes() if node_id in uscc_codes.route_area_codes(c)} | {node_id}
        return (*sorted(served), OTHER_AREA)
    if group_by == stats_pb2.STATS_GROUP_BY_TAX_RATING:
        return RATINGS + ((UNRATED,) if set(cats) - {_TAX} else ())
    if group_by == stats_pb2.STATS_GROUP_BY_HEADCOUNT_BAND:
        return _band_labels(config.headcount_bands) + ((UNKNOWN_BAND,) if set(cats) - {_SOCIAL} else ())
    raise ValueError(f"unknown grouping {group_by}")


def _band_labels(bounds: tuple[int, ...]) -> tuple[str, ...]:
    below = (f"<{bounds[0]}",) if bounds[0] > 0 else ()  # headcounts are never negative
    return below + tuple(f"{lo}-{hi}" for lo, hi in zip(bounds, bounds[1:])) + (f">={bounds[-1]}",)


def _band(value: int, bounds: tuple[int, ...]) -> str:
    if value < bounds[0]:
        return f"<{bounds[0]}"
    for lo, hi in zip(bounds, bounds[1:]):
        if lo <= value < hi:
            return f"{lo}-{hi}"
    return f">={bounds[-1]}"


def group_of(facts: Facts, group_by: int, keys: frozenset[str], config: StatsConfig) -> str:
    if group_by == stats_pb2.STATS_GROUP_BY_NONE:
        return ALL
    if group_by == stats_pb2.STATS_GROUP_BY_AREA:
        area = uscc_codes.area_code(facts.uscc)
        return area if area in keys else OTHER_AREA
    if group_by == stats_pb2.STATS_GROUP_BY_TAX_RATING:
        return facts.tax_rating or UNRATED
    if group_by == stats_pb2.STATS_GROUP_BY_HEADCOUNT_BAND:
        return _band(max(facts.headcount, 0), config.headcount_bands) if facts.headcount is not None else UNKNOWN_BAND
    raise ValueError(f"unknown grouping {group_by}")


def contribution(facts: Facts, metric: int, config: StatsConfig) -> float | int:
    """One enterprise's value, clamped into [0, sensitivity]."""
    if metric == stats_pb2.STATS_METRIC_COUNT:
        return 1
    if metric == stats_pb2.STATS_METRIC_SUM_TAX_PAID_12M:
        return min(max(float(facts.tax_paid_12m or 0), 0.0), config.clamp_tax_paid_12m)
    if metric == stats_pb2.STATS_METRIC_SUM_INSURED_HEADCOUNT:
        return min(max(facts.headcount or 0, 0), config.clamp_insured_headcount)
    raise ValueError(f"unknown metric {metric}")


@dataclass
class Table:
    """The true values of a node's cells: never leaves the node."""

    keys: tuple[str, ...]
    counts: dict[str, int]
    sums: dict[str, float | int]


def tabulate(enterprises: Iterable[Facts], *, metric: int, group_by: int, node_id: str, config: StatsConfig) -> Table:
    """Count each enterprise of the population once, into its cell."""
    keys = cell_keys(group_by, node_id, metric, config)
    key_set = frozenset(keys)
    wanted = frozenset(population(metric, group_by))
    counts = dict.fromkeys(keys, 0)
    sums: dict[str, float | int] = dict.fromkeys(keys, 0)
    for facts in enterprises:
        if not facts.categories & wanted:
            continue
        key = group_of(facts, group_by, key_set, config)
        counts[key] += 1
        sums[key] += contribution(facts, metric, config)
    return Table(keys, counts, sums)


# --- the noise (OpenDP) ---------------------------------------------------------------------------


def _dp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def _integer_noise(metric: int) -> bool:
    """Counts and headcounts are whole numbers: they get the discrete Laplace."""
    return metric in (stats_pb2.STATS_METRIC_COUNT, stats_pb2.STATS_METRIC_SUM_INSURED_HEADCOUNT)


def laplace_mechanism(sensitivity: float, epsilon: float, *, integer: bool):
    """OpenDP's vector Laplace measurement (discrete Laplace for integers) whose privacy map gives
    at most `epsilon` for an L1 change of `sensitivity`. Returns (measurement, scale, epsilon
    by the map). The scale starts at sensitivity / epsilon and is nudged up by a few ulps when
    the map's conservative float rounding says it costs a hair more than epsilon."""
    dp = _dp()
    if integer:
        space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
        d_in: float | int = int(sensitivity)
    else:
        space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)
        d_in = float(sensitivity)
    scale = d_in / epsilon
    for _ in range(64):
        measurement = dp.m.make_laplace(*space, scale=scale)
        spent = measurement.map(d_in)
        if spent <= epsilon:
            return measurement, scale, spent
        scale = math.nextafter(scale, math.inf) * (1 + 2**-50)
    raise ValueError(f"cannot calibrate Laplace noise to epsilon {epsilon!r} for sensitivity {sensitivity!r}")


def noisy(values: Sequence[float | int], sensitivity: float, epsilon: float, *, integer: bool) -> tuple[list, float, float]:
    """Each value plus Laplace noise; returns (noisy values, scale, epsilon spent)."""
    measurement, scale, spent = laplace_mechanism(sensitivity, epsilon, integer=integer)
    if not values:
        return [], scale, spent
    data = [int(v) for v in values] if integer else [float(v) for v in values]
    return list(measurement(data)), scale, spent


@dataclass(frozen=True)
class Cell:
    """One released cell of one node: the noisy value, the noise scale, or suppressed."""

    group: str
    value: float
    noise_scale: float
    suppressed: bool


@dataclass(frozen=True)
class Release:
    cells: tuple[Cell, ...]
    epsilon: float  # the privacy loss, by OpenDP's maps, added up (sequential composition)

    @property
    def suppressed(self) -> int:
        return sum(c.suppressed for c in self.cells)


def release(table: Table, *, metric: int, epsilon: float, config: StatsConfig) -> Release:
    """Add noise to every cell of the table and suppress those whose noisy count is below the
    minimum cell size. Costs at most `epsilon` (whole histogram, one enterprise in one cell)."""
    keys = table.keys
    counts = [table.counts[k] for k in keys]
    if metric == stats_pb2.STATS_METRIC_COUNT:
        noisy_counts, scale, spent = noisy(counts, 1, epsilon, integer=True)
        values = noisy_counts
    else:
        count_eps = epsilon * config.count_share_for_sums
        noisy_counts, _, spent_counts = noisy(counts, 1, count_eps, integer=True)
        values, scale, spent_sums = noisy([table.sums[k] for k in keys], config.sensitivity(metric),
                                          epsilon - count_eps, integer=_integer_noise(metric))
        spent = spent_counts + spent_sums
    cells = tuple(
        Cell(k, 0.0, scale, True) if n < config.min_cell_size else Cell(k, float(v), scale, False)
        for k, n, v in zip(keys, noisy_counts, values)
    )
    return Release(cells, spent)


# --- merging across nodes and the error bound -----------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _error_bound(scales: tuple[float, ...], discrete: bool, confidence: float) -> float:
    alpha = 1 - confidence
    if len(scales) == 1:
        b = scales[0]
        if not discrete:
            return b * math.log(1 / alpha)  # P(|Laplace(b)| > t) = exp(-t / b)
        q = math.exp(-1 / b)
        tail = lambda k: 2 * q ** (k + 1) / (1 + q)  # noqa: E731 - P(|Z| > k), Z discrete Laplace
        k = max(0, math.ceil(math.log(alpha * (1 + q) / 2) / math.log(q)) - 1)
        while tail(k) > alpha:
            k += 1
        while k > 0 and tail(k - 1) <= alpha:
            k -= 1
        return float(k)
    return _convolved_bound(scales, discrete, alpha)


_GRID = 1 << 17  # cells per component's support
_TRUNCATE = 40.0  # each component's support: +-40 scales (tail mass e^-40)


def _convolved_bound(scales: tuple[float, ...], discrete: bool, alpha: float) -> float:
    """The 1 - alpha quantile of |sum of independent (discrete) Laplace noises|, numerically.

    Each noise is rounded to a grid of step h (its exact mass per grid cell, from its CDF), the
    rounded noises are convolved (FFT), and the smallest grid point t with P(|rounded sum| > t)
    <= alpha is found. The true sum differs from the rounded one by at most k*h/2 (none on an
    integer grid of step 1), which is added: the bound is never below the exact quantile, and
    above it by at most (k/2 + 1) * h, about 0.1% of the scales' sum.
    """
    k = len(scales)
    span = _TRUNCATE * sum(scales)
    h = 2 * span / _GRID
    if discrete:
        h = float(max(1, math.ceil(h)))
    n = math.ceil(span / h)
    x = h * np.arange(-n, n + 1, dtype=np.float64)
    size = 1 << math.ceil(math.log2(k * 2 * n + 1))
    spectrum = np.ones(size // 2 + 1, dtype=np.complex128)
    for b in scales:
        cdf = _discrete_laplace_cdf if discrete else _laplace_cdf
        mass = cdf(x + h / 2, b) - cdf(x - h / 2, b)
        spectrum *= np.fft.rfft(mass, size)
    dist = np.clip(np.fft.irfft(spectrum, size)[: k * 2 * n + 1], 0, None)
    centre = k * n
    above = np.cumsum(dist[::-1])[::-1]  # above[i] = P(S >= grid i)
    below = np.cumsum(dist)  # below[i] = P(S <= grid i)
    j = np.arange(centre, len(dist) - 1)
    tail = above[j + 1] + below[2 * centre - j - 1]  # P(S > y_j) + P(S < -y_j)
    target = alpha - k * math.exp(-_TRUNCATE)  # the truncated tails count against alpha
    ok = np.nonzero(tail <= target)[0]
    t = float(h * ok[0]) if len(ok) else span * k
    slack = 0.0 if discrete and h == 1 else k * h / 2
    # A sum of integers within t + slack is within its floor.
    return float(math.floor(t + slack)) if discrete else t + slack


def _laplace_cdf(x: np.ndarray, b: float) -> np.ndarray:
    return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / b), 1 - 0.5 * np.exp(-np.maximum(x, 0) / b))


def _discrete_laplace_cdf(x: np.ndarray, b: float) -> np.ndarray:
    """P(Z <= x) for P(Z = z) proportional to exp(-|z| / b) on the integers."""
    n = np.floor(x)
    q = math.exp(-1 / b)
    return np.where(n < 0, q ** np.maximum(-n, 0) / (1 + q), 1 - q ** (np.maximum(n, 0) + 1) / (1 + q))


def error_bound_95(scales: Sequence[float], *, discrete: bool, confidence: float = CONFIDENCE) -> float:
    """A bound t with P(|sum of the noises| <= t) >= 95%, for independent Laplace noises of these
    scales (discrete Laplace on the integers when `discrete`).

    One noise: exact, b * ln 20 for Laplace(b); the smallest integer k with P(|Z| > k) <= 5% for
    the discrete Laplace. Several: the exact quantile of the sum, computed numerically by
    convolution (see _convolved_bound), never below it and at most ~0.1% above. Neither the
    normal approximation sqrt(sum 2 b_i^2) * 1.96 (too small for 2 or 3 nodes: 94.1% coverage
    for two equal scales) nor the union bound sum b_i ln(20 k) (about twice too wide) is used.
    """
    clean = tuple(sorted(float(b) for b in scales))
    if not clean:
        return 0.0
    if any(not math.isfinite(b) or b <= 0 for b in clean):
        raise ValueError(f"noise scales must be positive and finite, got {list(scales)}")
    return _error_bound(clean, discrete, confidence)


@dataclass(frozen=True)
class NodeCells:
    """One node's released cells, as the registry received them."""

    node_id: str
    cells: Sequence[Cell]


@dataclass(frozen=True)
class MergedCell:
    group: str
    value: float
    error_95: float
    suppressed: bool
    nodes: tuple[str, ...]


def merge(answers: Iterable[NodeCells], *, metric: int, group_by: int) -> list[MergedCell]:
    """Add up the cells each node released. A cell's value is the sum of the noisy values of the
    nodes that released it (suppressed ones are left out, so a sparse cell's total leans low by
    what the suppressing nodes held), its error bound that of the sum of their noises. Cells
    suppressed at every node are listed as suppressed, except area codes: those are left out
    (the list of area codes is long)."""
    discrete = _integer_noise(metric)
    order: dict[str, None] = {}
    values: dict[str, list[tuple[str, Cell]]] = {}
    for answer in sorted(answers, key=lambda a: a.node_id):
        for cell in answer.cells:
            order.setdefault(cell.group, None)
            if not cell.suppressed:
                values.setdefault(cell.group, []).append((answer.node_id, cell))
    groups = list(order)
    if group_by == stats_pb2.STATS_GROUP_BY_AREA:
        groups = sorted((g for g in groups if g in values), key=lambda g: (g == OTHER_AREA, g))
    out = []
    for group in groups:
        released = values.get(group, [])
        if not released:
            out.append(MergedCell(group, 0.0, 0.0, True, ()))
            continue
        total = math.fsum(c.value for _, c in released)
        if discrete:
            total = float(round(total))
        bound = error_bound_95([c.noise_scale for _, c in released], discrete=discrete)
        out.append(MergedCell(group, total, bound, False, tuple(n for n, _ in released)))
    return out

