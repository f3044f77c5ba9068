"""`xinyi node quality --db URL [--json]`: the node operator's data-quality report, read from the
node's store (the node may be running or not): records per category and source with stale ones
flagged, the last loads and their rejected lines, the share of enterprises per category, the
disputes awaiting a reply, registration and consent sync as last written down, and the queries
answered and refused per day. --json prints xinyi.quality.DataQuality.to_json()."""

from __future__ import annotations

import datetime as dt
import unicodedata
from pathlib import Path

from xinyi.cli.common import EXIT_USAGE, CommandError, print_json, subcommands_of


def cmd_node_quality(args) -> None:
    from node.quality import node_quality
    from node.store import NodeStore
    from xinyi import migrations
    from xinyi.clock import now_ms
    from xinyi.db import StoreError

    _refuse_missing_file(args.db)
    store = NodeStore(args.db)
    try:
        try:
            st = migrations.status(store.engine, "node")
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - unreachable or not a database: one line, no traceback
            raise CommandError(f"--db: cannot read {migrations.shown(store.engine)}: {e.__class__.__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}", EXIT_USAGE) from None
        if st.state == migrations.EMPTY:
            raise CommandError(f"--db: {st.url} holds no node store (it is empty); give the node's database", EXIT_USAGE)
        if st.state != migrations.CURRENT or st.store != "node":
            raise CommandError(f"--db: {st.refusal()}" if st.store == "node" else
                               f"--db: {st.url} is a {st.store} database, not a node's", EXIT_USAGE)
        try:
            report = node_quality(store, now_ms(), days=args.days, loads=args.loads, rejects_per_load=args.rejects)
        except ValueError as e:
            raise CommandError(f"--{str(e).replace('rejects_per_load', 'rejects')}", EXIT_USAGE) from None
    finally:
        store.close()
    if args.json:
        print_json(report.to_json())
    else:
        print_report(report)


def _refuse_missing_file(url: str) -> None:
    """A SQLite file that does not exist would be created, empty: say the path is wrong instead."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - NodeStore says what is wrong with the URL
        return
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).exists():
        raise CommandError(f"--db: {parsed.database} does not exist; give the node's database", EXIT_USAGE)


# --- human output ---------------------------------------------------------------------------------

def _width(text: str) -> int:
    """Columns a terminal gives the text: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def table(headers: list[str], rows: list[list], out=None) -> None:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and rows for i in range(len(headers))]
    for n, r in enumerate(cells):
        parts = []
        for i, c in enumerate(r):
            pad = " " * (widths[i] - _width(c))
            parts.append(pad + c if numeric[i] and n else c + pad)
        print("  ".join(parts).rstrip(), file=out)
    if not rows:
        print("  (none)", file=out)


def _at(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ms else "never"


def _duration(ms: int) -> str:
    if ms < 0:
        return "never"
    seconds = ms // 1000
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def print_report(q, out=None) -> None:
    def say(text: str = "") -> None:
        print(text, file=out)

    stale = len(q.stale)
    say(f"node {q.node_id or '(store)'}: {q.records} records about {q.enterprises} enterprises; today {q.today} (Beijing)"
        + (f"; {stale} STALE sources" if stale else ""))
    say()
    say("Categories")
    table(["category", "records", "enterprises", "share", "latest as_of", "refresh", "stale after", ""],
          [[c.category, c.records, c.enterprises, f"{c.share:.1%}", c.latest_as_of or "-", c.cadence,
            f"{c.stale_after_days} d", "STALE" if c.stale else ""] for c in q.categories], out)
    say()
    say("Sources (newest as_of per category and source)")
    table(["category", "source", "records", "latest as_of", "age", ""],
          [[s.category, s.source, s.records, s.latest_as_of, f"{s.age_days} d", "STALE" if s.stale else ""]
           for s in q.sources], out)
    say()
    say("Loads (newest first)")
    table(["load", "file", "category", "finished", "lines", "accepted", "new", "rejected", ""],
          [[ld.load_id, ld.file_name, ld.category or "-", _at(ld.finished_at_ms), ld.lines_read, ld.accepted,
            ld.inserted, ld.rejected, f"FAILED: {ld.failure}" if ld.failure else ""] for ld in q.loads], out)
    for ld in q.loads:
        if ld.rejects:
            say()
            more = ld.rejected - len(ld.rejects)
            say(f"Rejected lines of load {ld.load_id} ({ld.file_name})" + (f", first {len(ld.rejects)} of {ld.rejected}"
                                                                          if more else ""))
            table(["line", "field", "reason"], [[x.line_no, x.field, x.reason] for x in ld.rejects], out)
    say()
    d = q.disputes
    say(f"Disputes: {d.open} open, {d.overdue} OVERDUE" if d.overdue else f"Disputes: {d.open} open")
    if d.disputes:
        table(["dispute", "uscc", "category", "filed", "due", "days left", ""],
              [[x.dispute_id, x.uscc, x.category or "-", _at(x.filed_at_ms)[:10], _at(x.due_ms)[:10], x.days_left,
                "OVERDUE" if x.overdue else ""] for x in d.disputes], out)
    say()
    s = q.sync
    source = "live" if s.live else "as last written to the store"
    say(f"Registry ({source}): " + ("registered" if s.registered else "NOT registered")
        + f", last registration {_at(s.registered_at_ms)}" + (f"; REFUSED: {s.refused_reason}" if s.refused_reason else ""))
    confirmed = (f"confirmed {_at(s.consents_confirmed_at_ms)} ({_duration(s.consent_sync_lag_ms)} ago)"
                 if s.consents_confirmed_at_ms else "never confirmed")
    say(f"Consents: {confirmed}, position {s.consent_sync_position}; " + ("fresh" if s.consents_fresh else
                                                   f"NOT fresh (queries need a confirmation within "
                                                   f"{s.consent_freshness_ms // 1000} s)"))
    say()
    say(f"Queries per day (last {len(q.queries)} days)")
    table(["day", "answered", "refused"], [[x.day, x.answered, x.refused] for x in q.queries if x.answered or x.refused],
          out)


def add_parser(sub) -> None:
    a = subcommands_of(sub, "node").add_parser("quality", help="the node's data quality: freshness, loads and rejects, coverage, disputes, "
                                        "sync, queries per day")
    a.add_argument("--db", required=True, help="the node's database URL")
    a.add_argument("--days", type=int, default=30, help="days of queries per day, today included (default 30)")
    a.add_argument("--loads", type=int, default=10, help="the newest loads shown (default 10; the node keeps 50)")
    a.add_argument("--rejects", type=int, default=100, help="rejected lines shown per load (default 100, at most 1000)")
    a.add_argument("--json", action="store_true", help="print the report as JSON (xinyi.quality.DataQuality)")
    a.set_defaults(func=cmd_node_quality)
