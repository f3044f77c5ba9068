"""xinyi.quality.DataQuality to and from NodeReport (proto/xinyi/v1/node.proto): the same field
names at every level, so the conversion follows the dataclasses (a field added to one and not the
other fails tests/test_node_quality.py's round trip)."""

from __future__ import annotations

import dataclasses

from xinyi.quality import (
    CategoryQuality,
    DataQuality,
    DisputeQueue,
    IngestLoad,
    IngestReject,
    QueriesOnDay,
    QueuedDispute,
    SourceFreshness,
    SyncState,
)
from xinyi.v1 import node_pb2

# The dataclass each message field holds (nested messages, repeated or not).
_NESTED = {
    (DataQuality, "categories"): CategoryQuality, (DataQuality, "sources"): SourceFreshness,
    (DataQuality, "loads"): IngestLoad, (DataQuality, "disputes"): DisputeQueue, (DataQuality, "sync"): SyncState,
    (DataQuality, "queries"): QueriesOnDay, (IngestLoad, "rejects"): IngestReject,
    (DisputeQueue, "disputes"): QueuedDispute,
}


def report_to_proto(report: DataQuality) -> node_pb2.NodeReport:
    message = node_pb2.NodeReport()
    _fill(message, report)
    return message


def _fill(message, obj) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if (type(obj), f.name) not in _NESTED:
            setattr(message, f.name, value)
        elif isinstance(value, tuple):
            for item in value:
                _fill(getattr(message, f.name).add(), item)
        else:
            _fill(getattr(message, f.name), value)


def report_from_proto(message: node_pb2.NodeReport) -> DataQuality:
    return _read(DataQuality, message)


def _read(cls, message):
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(message, f.name)
        nested = _NESTED.get((cls, f.name))
        if nested is None:
            values[f.name] = value
        elif f.type.startswith("tuple"):
            values[f.name] = tuple(_read(nested, item) for item in value)
        else:
            values[f.name] = _read(nested, value)
    return cls(**values)
