"""Load a supplying department's credit records from a file into the node's store.

JSON Lines: one record object per line (see xinyi.records.categories), blank lines skipped. CSV (a
file ending in .csv): one category per file, given by the caller; the header row names the
columns (uscc, as_of, source and the category's fields); an empty cell is an absent field.

A bad line is reported with its line number and does not stop the load; good lines go to the
store in batches, one transaction each. Records are keyed by their content, so loading a file
again inserts nothing, and re-running a load that failed half-way (say, the database went
away) completes it.

When the node has alert tables (node.alerts), each batch is first compared with what the node
held about the enterprises in it that a bank subscribed to, and the early-warning alerts it
raises are stored (one query per batch finds those enterprises; the others cost nothing more).
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from node.alerts import ingest_watch
from node.store import NodeStore, Record
from xinyi.compute.alerts import AlertRules
from xinyi.records.categories import (
    ENVELOPE,
    FIELD_SPECS,
    RecordError,
    decode_normal_line,
    ingest_problem,
    parse_record_json,
    validate_line,
)

log = logging.getLogger("xinyi.ingest")
MAX_ERROR_DETAILS = 1000  # a broken export can have millions of bad lines; count them all, keep these

# Bytes that are not UTF-8, as decoding with "surrogateescape" leaves them.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class LineError:
    path: Path
    line_no: int
    reason: str  # "field: why", as RecordError reads
    field: str = ""
    why: str = ""  # the reason without the field

    def __str__(self) -> str:
        return f"{self.path}:{self.line_no}: {self.reason}"


@dataclass(frozen=True)
class IngestProgress:
    path: Path
    lines_read: int
    inserted: int
    errors: int
    bytes_read: int
    total_bytes: int

    @property
    def percent(self) -> int:
        return 100 if self.total_bytes <= 0 else min(100, self.bytes_read * 100 // self.total_bytes)


@dataclass
class IngestReport:
    """What a load did. lines_read == inserted + duplicates + error_count."""

    path: Path
    lines_read: int = 0  # record lines, not counting blank lines or a CSV header
    inserted: int = 0
    duplicates: int = 0  # valid records the store already held (or that the file repeats)
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)  # the first MAX_ERROR_DETAILS
    seconds: float = 0.0
    alerts: int = 0  # early-warning alerts the new records raised (node.alerts)

    def add_error(self, error: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERROR_DETAILS:
            self.errors.append(error)

    def summary(self) -> str:
        rate = self.lines_read / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.path.name}: {self.lines_read} lines, {self.inserted} new, "
            f"{self.duplicates} already present, {self.error_count} bad "
            f"in {self.seconds:.1f} s ({rate:,.0f} lines/s)"
            + (f"; {self.alerts} alerts raised" if self.alerts else "")
        )


def format_progress(p: IngestProgress) -> str:
    return f"ingest {p.path.name}: {p.percent}% {p.lines_read} lines, {p.inserted} new, {p.errors} bad"


def ingest_file(
    path: Path,
    store: NodeStore,
    *,
    category: str | None = None,
    batch_size: int = 5000,
    progress: Callable[[IngestProgress], None] | None = None,
    today: dt.date | None = None,
    alert_rules: AlertRules | None = None,
) -> IngestReport:
    """Validate every line of `path` and add the good ones to `store`.

    With `category`, JSON lines may omit "category" and must not name another one.
    Raises ValueError for a problem with the whole file (CSV without category, bad header).
    Alerts are detected only when the store has the alert tables (registered on it, or present
    in its database); `alert_rules` defaults to policies/alerts.toml.
    """
    path = Path(path)
    started_at_ms = int(time.time() * 1000)
    try:
        report = _ingest(path, store, category, batch_size, progress, today, alert_rules)
    except (ValueError, OSError) as e:
        # The whole file was refused (bad header, unreadable): the operator's report shows it too.
        _record_load(store, path, category, started_at_ms, IngestReport(path), failure=str(e))
        raise
    _record_load(store, path, category, started_at_ms, report)
    return report


def _ingest(path: Path, store: NodeStore, category: str | None, batch_size: int,
            progress: Callable[[IngestProgress], None] | None, today: dt.date | None,
            alert_rules: AlertRules | None) -> IngestReport:
    is_csv = path.suffix.lower() == ".csv"
    _check_arguments(path, category, batch_size, is_csv)
    today = today or dt.date.today()  # once, so a load running past midnight judges all lines alike
    ingested_at_ms = int(time.time() * 1000)
    started = time.monotonic()
    report = IngestReport(path)
    total_bytes = path.stat().st_size
    batch: list[Record] = []
    # Alerts are stored before their batch, and are unique per record and kind: a load that
    # fails half-way and is run again raises every alert once, and loses none.
    watch = ingest_watch(store, alert_rules)

    def flush(lines: _Lines) -> None:
        if watch is not None and batch:
            report.alerts += watch.check(batch)
        inserted = store.add_records(batch, ingested_at_ms)
        report.inserted += inserted
        report.duplicates += len(batch) - inserted
        batch.clear()
        if progress:
            progress(IngestProgress(path, report.lines_read, report.inserted, report.error_count, lines.bytes_read, total_bytes))

    with path.open("rb") as fh:
        lines = _Lines(fh)
        rows = _csv_rows(path, lines, category) if is_csv else _json_rows(lines)
        for line_no, row in rows:
            report.lines_read += 1
            try:
                batch.append(_record(row(), category, today) if is_csv else _json_record(row, category, today))
            except RecordError as e:
                report.add_error(LineError(path, line_no, str(e), e.field, e.reason))
            if len(batch) >= batch_size:
                flush(lines)
        flush(lines)  # also when empty: the caller sees 100%
    if watch is not None:
        watch.finish()
    report.seconds = time.monotonic() - started
    return report


# Values a reason quotes from the line: 'text' or "text" (Python's repr), and bare numbers after "got".
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"')
_GOT_NUMBER = re.compile(r"\bgot -?[0-9][0-9.eE+-]*")


def stored_reason(why: str) -> str:
    """A reject's reason as the node keeps it: without the values the line held, which may be
    about a person (a legal representative's name, an address); the line number finds them."""
    return _GOT_NUMBER.sub("got a number", _QUOTED.sub("'…'", why))[:500]


def _record_load(store: NodeStore, path: Path, category: str | None, started_at_ms: int, report: IngestReport,
                 failure: str = "") -> None:
    load = {"file_name": path.name[:255], "category": category or "", "started_at_ms": started_at_ms,
            "finished_at_ms": int(time.time() * 1000), "lines_read": report.lines_read, "inserted": report.inserted,
            "duplicates": report.duplicates, "rejected": report.error_count,
            "failure": stored_reason(failure.replace(str(path), path.name))}
    rejects = [{"line_no": e.line_no, "field": (e.field or "line")[:128], "reason": stored_reason(e.why or e.reason)}
               for e in report.errors]
    try:
        store.record_load(load, rejects)
    except Exception as e:  # noqa: BLE001 - the records are loaded; losing the load's summary must not undo that
        log.warning("the load of %s is not recorded for the node's report: %s", path.name, e)


def _check_arguments(path: Path, category: str | None, batch_size: int, is_csv: bool) -> None:
    if is_csv and category is None:
        raise ValueError(f"{path}: CSV files need --category (the category of every row)")
    if category is not None and ingest_problem(category):
        raise ValueError(f"--category: {ingest_problem(category)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def _json_record(line: bytes, category: str | None, today: dt.date) -> Record:
    """A JSON line's record: by the compiled path when the line is in normal form, else (for
    the result or the error) as any other line."""
    r = decode_normal_line(line, today=today)
    if r is None or (category is not None and r["category"] != category):
        return _record(_parse_json(line.decode("utf-8", "surrogateescape")), category, today)
    return Record(uscc=r["uscc"], category=r["category"], as_of=r["as_of"], source=r["source"], fields=r["fields"])


def _record(obj: dict, category: str | None, today: dt.date) -> Record:
    if category is not None:
        obj.setdefault("category", category)
        if obj["category"] != category:
            raise RecordError("category", f"is {obj['category']!r}, but this file is loaded as {category}")
    r = validate_line(obj, today=today)
    return Record(uscc=r["uscc"], category=r["category"], as_of=r["as_of"], source=r["source"], fields=r["fields"])


class _Lines:
    """A binary file's lines as text, counting the bytes consumed (for progress).

    Undecodable bytes are kept as surrogates ("surrogateescape") so that one bad line is
    reported as such instead of ending the load; _check_utf8 finds them.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        for raw in self.raw():
            yield raw.decode("utf-8", "surrogateescape")

    def raw(self) -> Iterator[bytes]:
        for raw in self._fh:
            if self.bytes_read == 0:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM, as spreadsheet exports write
            self.bytes_read += len(raw)
            yield raw


def _check_utf8(text: str) -> None:
    if _UNDECODABLE.search(text):
        raise RecordError("line", "is not valid UTF-8")


# --- formats: each yields (line number, row) for every record line: a JSON line's bytes, or ---------
# --- parse() -> dict or RecordError for a CSV row ---------------------------------------------------


_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())  # what str.strip() removes of ASCII


def _json_rows(lines: _Lines) -> Iterator[tuple[int, bytes]]:
    for line_no, raw in enumerate(lines.raw(), start=1):
        # Blank as str.strip() sees it: ideographic spaces (U+3000) too, not only ASCII, and the
        # ASCII separators U+001C..U+001F that bytes.strip() keeps.
        if raw.strip(_ASCII_SPACE) and (raw.isascii() or raw.decode("utf-8", "surrogateescape").strip()):
            yield line_no, raw


def _parse_json(text: str) -> dict:
    _check_utf8(text)
    obj = parse_record_json(text)  # exact amounts; a key given twice is refused, not resolved to the last value
    if not isinstance(obj, dict):
        raise RecordError("line", "must be a JSON object")
    return obj


def _csv_rows(path: Path, lines: _Lines, category: str) -> Iterator[tuple[int, Callable[[], dict]]]:
    reader = csv.reader(lines)
    header = [name.strip() for name in next(reader, [])]
    _check_header(path, header, category)
    for cells in reader:
        if any(cell.strip() for cell in cells):
            # line_num is where the row ends: a quoted cell may span lines.
            yield reader.line_num, lambda cells=cells: _parse_cells(header, cells)


def _parse_cells(header: list[str], cells: list[str]) -> dict:
    if len(cells) != len(header):
        raise RecordError("line", f"has {len(cells)} cells; the header has {len(header)}")
    for cell in cells:
        _check_utf8(cell)
    return {name: cell for name, cell in zip(header, cells) if cell.strip()}


def _check_header(path: Path, header: list[str], category: str) -> None:
    specs = (*ENVELOPE, *FIELD_SPECS[category])
    required = [s.name for s in specs if s.required]
    allowed = {"category", *(s.name for s in specs)}
    missing = [name for name in required if name not in header]
    unknown = [name for name in header if name not in allowed]
    repeated = sorted({name for name in header if header.count(name) > 1})
    problems = [
        f"{label} {', '.join(names)}"
        for label, names in (("missing", missing), ("unknown", unknown), ("repeated", repeated))
        if names
    ]
    if problems:
        raise ValueError(
            f"{path}: CSV header for {category}: {'; '.join(problems)} "
            f"(expected columns: {', '.join(s.name for s in specs)})"
        )
