"""Prometheus metrics of one service: `--metrics-listen HOST:PORT` serves them at /metrics.

Made with the OpenTelemetry metrics SDK (a MeterProvider of the service's own, read by the
Prometheus exporter into a registry of its own, so that two services in one process never mix
their figures) and served by prometheus_client's HTTP server. Without the flag nothing is
wrapped, measured or listened on.

The servers call, once, at start:

    m = ServiceMetrics("xinyi-node-510100", "127.0.0.1:9464")
    m.count_queries(handler, "answer", "xinyi_node_query_seconds")  # outcome, reason, total time
    m.time_steps(handler, STEPS, "xinyi_node_query_step_seconds")   # each named step of the path
    m.watch_audit_log(audit_log); m.watch_pool(engine); m.watch_certificates(identity)
    m.gauge("xinyi_consent_sync_lag_seconds", "...", read)
    port = m.start()  ...  m.stop()

Steps are timed by wrapping the object's methods by name (`time_calls`), the same wrapping
`make profile` (bench/profile.py) uses: the query path stays free of measuring code.
Labels carry step names, outcomes and refusal reasons, never ids, keys or record contents.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import inspect
import threading
import time
from typing import Callable, Iterable

from xinyi.errors import Refusal, is_store_unavailable

# Seconds: a query step takes from tens of microseconds (authorize) to a second (a slow store).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)

Observe = Callable[[str, float, "BaseException | None"], None]


class MetricsError(ValueError):
    """--metrics-listen cannot be used (not HOST:PORT, or the port cannot be listened on)."""


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT) -> (host, port); MetricsError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsError(f"{value!r} is not HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:9464, "
                           "or 0.0.0.0:9464 for every interface)")
    return host, int(port)


def time_calls(obj: object, names: Iterable[str], observe: Observe) -> None:
    """Replace each method `name` of `obj` (sync or async) by one that calls
    observe(name, seconds, exception or None) when it returns or raises."""
    for name in names:
        f = getattr(obj, name)
        if inspect.iscoroutinefunction(f):
            async def wrapper(*a, _f=f, _name=name, **k):
                t = time.perf_counter()
                try:
                    result = await _f(*a, **k)
                except BaseException as e:
                    observe(_name, time.perf_counter() - t, e)
                    raise
                observe(_name, time.perf_counter() - t, None)
                return result
        else:
            def wrapper(*a, _f=f, _name=name, **k):
                t = time.perf_counter()
                try:
                    result = _f(*a, **k)
                except BaseException as e:
                    observe(_name, time.perf_counter() - t, e)
                    raise
                observe(_name, time.perf_counter() - t, None)
                return result
        setattr(obj, name, functools.wraps(f)(wrapper))


def outcome_of(error: BaseException | None, answered: str = "answered") -> dict[str, str]:
    """The labels of a finished query: answered (the registry: routed), refused (with its
    ErrorReason name), failed (the store unavailable, or a fault) or cancelled (the caller went away)."""
    if error is None:
        return {"outcome": answered, "reason": ""}
    if isinstance(error, Refusal):
        return {"outcome": "refused", "reason": error.reason}
    if isinstance(error, asyncio.CancelledError):
        return {"outcome": "cancelled", "reason": ""}
    return {"outcome": "failed", "reason": "STORE_UNAVAILABLE" if is_store_unavailable(error) else "INTERNAL"}


class ServiceMetrics:
    def __init__(self, service_name: str, listen: str) -> None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from prometheus_client import CollectorRegistry

        self.host, self.port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        # Stopped by the server (stop()); not again at exit.
        self.provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": service_name}),
                                      shutdown_on_exit=False)
        self.meter = self.provider.get_meter("xinyi")
        self._http = None
        self._histograms: dict[str, object] = {}

    # -- serving -----------------------------------------------------------------------------
    def start(self) -> int:
        """Listen for scrapes; the port listened on (the one given, or a free one for 0)."""
        from prometheus_client import start_http_server

        try:
            self._http, thread = start_http_server(self.port, self.host, registry=self.registry)
        except OSError as e:
            raise MetricsError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}; "
                               "is another process using the port?") from None
        self.port = self._http.server_port
        return self.port

    def stop(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            # shutdown() waits for the serving thread: not on the event loop's thread of a caller
            threading.Thread(target=lambda: (http.shutdown(), http.server_close()), daemon=True).start()
        self.provider.shutdown()

    # -- instruments -------------------------------------------------------------------------
    def histogram(self, name: str, description: str):
        if name not in self._histograms:
            self._histograms[name] = self.meter.create_histogram(
                name, unit="s", description=description, explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
        return self._histograms[name]

    def gauge(self, name: str, description: str, read: Callable[[], "float | Iterable[tuple[float, dict]] | None"],
              unit: str = "") -> None:
        """An observable gauge: `read` (called at each scrape, on the HTTP server's thread) gives
        a value, (value, labels) pairs, or None for nothing to report."""
        from opentelemetry.metrics import Observation

        def callback(_options):
            got = read()
            if got is None:
                return []
            if isinstance(got, (int, float)):
                return [Observation(got)]
            return [Observation(value, labels) for value, labels in got]

        self.meter.create_observable_gauge(name, callbacks=[callback], unit=unit, description=description)

    # -- what the servers measure ------------------------------------------------------------
    def count_queries(self, obj: object, method: str, total_histogram: str, answered: str = "answered") -> None:
        """xinyi_queries_total{outcome, reason} and the whole call's time for `obj.method`
        (`answered`: the outcome of a call that returned)."""
        counter = self.meter.create_counter("xinyi_queries", description="queries by outcome and refusal reason")
        total = self.histogram(total_histogram, f"time to handle one query ({method}), whatever its outcome")

        def observe(_name: str, seconds: float, error: BaseException | None) -> None:
            labels = outcome_of(error, answered)
            counter.add(1, labels)
            total.record(seconds, {"outcome": labels["outcome"]})

        time_calls(obj, [method], observe)

    def time_steps(self, obj: object, steps: Iterable[str], histogram: str) -> None:
        """The time of each named step of `obj`, labelled step=<name>, whether it passed or refused."""
        h = self.histogram(histogram, "time of each named step of the query path")
        labels = {step: {"step": step.strip("_")} for step in steps}
        time_calls(obj, labels, lambda step, seconds, _error: h.record(seconds, labels[step]))

    def watch_audit_log(self, audit_log) -> None:
        """Entries in the log (as this process knows it) and the time of each group commit."""
        self.gauge("xinyi_audit_log_entries", "entries in the audit log", lambda: audit_log.tree.size)
        commit = self.histogram("xinyi_audit_commit_seconds", "time of one group commit of audit entries")
        time_calls(audit_log, ["_commit"], lambda _n, seconds, _e: commit.record(seconds))

    def watch_pool(self, engine) -> None:
        """The database connection pool: connections checked out, and the pool's size."""
        pool = engine.pool

        def read(method: str):
            f = getattr(pool, method, None)  # SQLite in memory has a pool without a size
            return f() if callable(f) else None

        self.gauge("xinyi_db_pool_checked_out", "database connections in use", lambda: read("checkedout"))
        self.gauge("xinyi_db_pool_size", "database connections the pool keeps", lambda: read("size"))

    def watch_certificates(self, identity) -> None:
        """Days until each certificate of the service's identity expires (a renewed identity,
        taken over on SIGHUP, is read at the next scrape)."""
        def read():
            now = dt.datetime.now(dt.timezone.utc)
            return [((cert.not_valid_after_utc - now).total_seconds() / 86400, {"certificate": name})
                    for name, cert in (("tls", identity.tls_cert), ("signing", identity.signing_cert))]

        self.gauge("xinyi_certificate_expiry_days", "days until the certificate expires", read, unit="d")
