"""proto/ breaks nothing against the last release: the descriptors protoc makes of proto/xinyi now,
compared under buf's breaking rules with the newest snapshot in proto/releases/ (text, written by
scripts/proto_snapshot.py when a release is cut). v1 grows only by addition; see proto/README.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent


def _load_snapshot():
    spec = importlib.util.spec_from_file_location("proto_snapshot", ROOT / "scripts" / "proto_snapshot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclass looks itself up there)
    spec.loader.exec_module(module)
    return module


snapshot = _load_snapshot()


@pytest.fixture(scope="module")
def released() -> list[descriptor_pb2.FileDescriptorProto]:
    return snapshot.from_json(snapshot.latest_release().read_text())


@pytest.fixture(scope="module")
def current() -> list[descriptor_pb2.FileDescriptorProto]:
    return snapshot.current_files()


def test_proto_breaks_nothing_since_the_last_release(released, current):
    assert {f.name for f in released} >= {"xinyi/v1/query.proto", "xinyi/v1/registry.proto"}
    problems = snapshot.breaking_changes(released, current)
    assert not problems, (f"proto/ breaks the contract of {snapshot.latest_release().stem}; make the change additive, "
                          "or put it in a new package xinyi.v2 (proto/README.md):\n  " + "\n  ".join(problems))


def test_the_snapshot_round_trips_as_text(current):
    """What is stored is exactly what the comparison reads back."""
    assert snapshot.from_json(snapshot.to_json("v-test", current)) == current


def _copy(files):
    return [descriptor_pb2.FileDescriptorProto.FromString(f.SerializeToString()) for f in files]


def _file(files, name):
    return next(f for f in files if f.name == name)


def _message(file, name):
    return next(m for m in file.message_type if m.name == name)


def test_the_check_catches_breaking_changes(released):
    """Each kind of break, made to a copy of the release, is reported with a sentence naming it."""
    def breaks(change) -> list[str]:
        files = _copy(released)
        change(files)
        return snapshot.breaking_changes(released, files)

    def remove_field(files):
        body = _message(_file(files, "xinyi/v1/query.proto"), "QueryBody")
        del body.field[[f.name for f in body.field].index("consent_id")]

    def renumber_field(files):
        next(f for f in _message(_file(files, "xinyi/v1/query.proto"), "QueryBody").field if f.name == "nonce").number = 15

    def retype_field(files):
        next(f for f in _message(_file(files, "xinyi/v1/query.proto"), "QueryBody").field
             if f.name == "issued_at_ms").type = descriptor_pb2.FieldDescriptorProto.TYPE_STRING

    def repeat_field(files):
        next(f for f in _message(_file(files, "xinyi/v1/query.proto"), "QueryBody").field
             if f.name == "uscc").label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED

    def rename_field(files):
        next(f for f in _message(_file(files, "xinyi/v1/query.proto"), "QueryBody").field if f.name == "uscc").name = "usci"

    def remove_method(files):
        service = next(s for s in _file(files, "xinyi/v1/registry.proto").service if s.name == "RegistryService")
        del service.method[[m.name for m in service.method].index("RouteQuery")]

    def change_response(files):
        service = next(s for s in _file(files, "xinyi/v1/registry.proto").service if s.name == "RegistryService")
        next(m for m in service.method if m.name == "RouteQuery").output_type = ".xinyi.v1.QueryBody"

    def stream(files):
        service = next(s for s in _file(files, "xinyi/v1/registry.proto").service if s.name == "RegistryService")
        next(m for m in service.method if m.name == "RouteQuery").server_streaming = True

    def remove_message(files):
        file = _file(files, "xinyi/v1/query.proto")
        del file.message_type[[m.name for m in file.message_type].index("QueryBody")]

    def renumber_enum_value(files):
        outcome = next(e for e in _file(files, "xinyi/v1/query.proto").enum_type if e.name == "NodeOutcome")
        outcome.value[-1].number = 99

    def move_package(files):
        _file(files, "xinyi/v1/query.proto").package = "xinyi.v2"

    assert breaks(remove_field) == ["field xinyi.v1.QueryBody.consent_id = 4 removed (reserve its number and name to delete it)"]
    assert breaks(renumber_field) == ["field xinyi.v1.QueryBody.nonce renumbered from 5 to 15"]
    assert breaks(retype_field) == ["field xinyi.v1.QueryBody.issued_at_ms = 6 changed type from int64 to string"]
    assert breaks(repeat_field) == ["field xinyi.v1.QueryBody.uscc = 1 changed from singular to repeated"]
    assert breaks(rename_field) == ["field xinyi.v1.QueryBody.uscc = 1 renamed to usci"]
    assert breaks(remove_method) == ["method xinyi.v1.RegistryService.RouteQuery removed or renamed"]
    assert breaks(change_response) == ["method xinyi.v1.RegistryService.RouteQuery changed its response type from "
                                       "xinyi.v1.QueryResponse to xinyi.v1.QueryBody"]
    assert breaks(stream) == ["method xinyi.v1.RegistryService.RouteQuery now streams on the server side"]
    assert "message xinyi.v1.QueryBody removed, renamed or moved to another package" in breaks(remove_message)
    assert any(p.startswith("enum value xinyi.v1.NodeOutcome.") and "renumbered" in p for p in breaks(renumber_enum_value))
    assert "file xinyi/v1/query.proto changed package from xinyi.v1 to xinyi.v2" in breaks(move_package)


def test_additions_and_reserved_deletions_are_not_breaks(released):
    files = _copy(released)
    body = _message(_file(files, "xinyi/v1/query.proto"), "QueryBody")
    body.field.add(name="added", number=99, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                   label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    _file(files, "xinyi/v1/query.proto").message_type.add(name="Added")
    del body.field[[f.name for f in body.field].index("consent_id")]
    body.reserved_range.add(start=4, end=5)
    body.reserved_name.append("consent_id")
    assert snapshot.breaking_changes(released, files) == []
