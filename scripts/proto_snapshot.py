"""Release snapshots of the gRPC contract, and the breaking changes since one.

`python scripts/proto_snapshot.py v0.2` writes proto/releases/v0.2.json: the descriptor of
every proto/xinyi/**/*.proto file as protoc parses it, as JSON (text, reviewable in a diff; no
binary in the repository). `python scripts/proto_snapshot.py --check` lists what the current
proto/ breaks against the newest snapshot, under buf's breaking rules (FILE/PACKAGE category):
a message, enum, service or method removed or renamed, a field or enum value removed (unless its
number is reserved), renumbered, renamed or retyped, a field's cardinality or oneof changed, a
method's request, response or streaming changed, a file's package changed.
tests/test_proto_breaking.py runs the same check.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2, json_format
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
RELEASES = PROTO_DIR / "releases"
OURS = "xinyi/"  # the contract this project versions; proto/google and proto/grpc are vendored

Field = descriptor_pb2.FieldDescriptorProto


def current_files(proto_dir: Path = PROTO_DIR) -> list[descriptor_pb2.FileDescriptorProto]:
    """The descriptors of proto_dir/xinyi/**/*.proto, straight from protoc."""
    protos = sorted(p.relative_to(proto_dir).as_posix() for p in proto_dir.glob(f"{OURS}**/*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{well_known}", f"--descriptor_set_out={out}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc could not parse {proto_dir}; see the message above")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return sorted((f for f in fds.file if f.name.startswith(OURS)), key=lambda f: f.name)


def to_json(version: str, files: list[descriptor_pb2.FileDescriptorProto]) -> str:
    document = {"version": version,
                "files": [json_format.MessageToDict(f, preserving_proto_field_name=True) for f in files]}
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def from_json(text: str) -> list[descriptor_pb2.FileDescriptorProto]:
    return [json_format.ParseDict(f, descriptor_pb2.FileDescriptorProto()) for f in json.loads(text)["files"]]


def latest_release(releases: Path = RELEASES) -> Path:
    """The newest snapshot, by version number (v0.10 after v0.9)."""
    snapshots = sorted(releases.glob("v*.json"),
                       key=lambda p: tuple(int(n) for n in p.stem[1:].split(".") if n.isdigit()))
    if not snapshots:
        raise SystemExit(f"no release snapshot in {releases}; cut one with `python scripts/proto_snapshot.py v0.1`")
    return snapshots[-1]


# --- the comparison ------------------------------------------------------------------------------


@dataclass
class _Index:
    """Every message, enum and service of a set of files, by fully qualified name."""

    messages: dict[str, descriptor_pb2.DescriptorProto]
    enums: dict[str, descriptor_pb2.EnumDescriptorProto]
    services: dict[str, descriptor_pb2.ServiceDescriptorProto]
    packages: dict[str, str]  # file name -> package

    @classmethod
    def of(cls, files: list[descriptor_pb2.FileDescriptorProto]) -> "_Index":
        index = cls({}, {}, {}, {})

        def walk(prefix: str, messages, enums) -> None:
            for e in enums:
                index.enums[f"{prefix}.{e.name}"] = e
            for m in messages:
                name = f"{prefix}.{m.name}"
                index.messages[name] = m
                walk(name, m.nested_type, m.enum_type)

        for f in files:
            index.packages[f.name] = f.package
            walk(f.package, f.message_type, f.enum_type)
            for s in f.service:
                index.services[f"{f.package}.{s.name}"] = s
        return index


def _reserved(number: int, ranges, *, end_inclusive: bool) -> bool:
    return any(r.start <= number < r.end + (1 if end_inclusive else 0) for r in ranges)


def _field_type(f: Field) -> str:
    return f.type_name.lstrip(".") if f.type_name else Field.Type.Name(f.type).removeprefix("TYPE_").lower()


def _cardinality(f: Field) -> str:
    if f.label == Field.LABEL_REPEATED:
        return "repeated"
    return "optional" if f.proto3_optional else "singular"


def _oneof(m: descriptor_pb2.DescriptorProto, f: Field) -> str:
    if not f.HasField("oneof_index") or f.proto3_optional:
        return ""
    return m.oneof_decl[f.oneof_index].name


def _message_changes(name: str, old: descriptor_pb2.DescriptorProto, new: descriptor_pb2.DescriptorProto) -> list[str]:
    found = []
    new_by_number = {f.number: f for f in new.field}
    new_by_name = {f.name: f for f in new.field}
    for f in old.field:
        now = new_by_number.get(f.number)
        if now is None:
            moved = new_by_name.get(f.name)
            if moved is not None:
                found.append(f"field {name}.{f.name} renumbered from {f.number} to {moved.number}")
            elif not _reserved(f.number, new.reserved_range, end_inclusive=False):
                found.append(f"field {name}.{f.name} = {f.number} removed (reserve its number and name to delete it)")
            continue
        if now.name != f.name:
            found.append(f"field {name}.{f.name} = {f.number} renamed to {now.name}")
        if _field_type(now) != _field_type(f):
            found.append(f"field {name}.{f.name} = {f.number} changed type from {_field_type(f)} to {_field_type(now)}")
        if _cardinality(now) != _cardinality(f):
            found.append(f"field {name}.{f.name} = {f.number} changed from {_cardinality(f)} to {_cardinality(now)}")
        if _oneof(new, now) != _oneof(old, f):
            found.append(f"field {name}.{f.name} = {f.number} moved from oneof '{_oneof(old, f)}' to '{_oneof(new, now)}'")
    return found


def _enum_changes(name: str, old: descriptor_pb2.EnumDescriptorProto, new: descriptor_pb2.EnumDescriptorProto) -> list[str]:
    found = []
    new_by_number = {v.number: v for v in new.value}
    new_by_name = {v.name: v for v in new.value}
    for v in old.value:
        now = new_by_number.get(v.number)
        if now is None:
            moved = new_by_name.get(v.name)
            if moved is not None:
                found.append(f"enum value {name}.{v.name} renumbered from {v.number} to {moved.number}")
            elif not _reserved(v.number, new.reserved_range, end_inclusive=True):
                found.append(f"enum value {name}.{v.name} = {v.number} removed (reserve its number and name to delete it)")
        elif now.name != v.name and v.name not in new_by_name:  # an alias added beside it is fine
            found.append(f"enum value {name}.{v.name} = {v.number} renamed to {now.name}")
    return found


def _service_changes(name: str, old: descriptor_pb2.ServiceDescriptorProto,
                     new: descriptor_pb2.ServiceDescriptorProto) -> list[str]:
    found = []
    methods = {m.name: m for m in new.method}
    for m in old.method:
        now = methods.get(m.name)
        rpc = f"{name}.{m.name}"
        if now is None:
            found.append(f"method {rpc} removed or renamed")
            continue
        for what, before, after in (("request", m.input_type, now.input_type), ("response", m.output_type, now.output_type)):
            if before != after:
                found.append(f"method {rpc} changed its {what} type from {before.lstrip('.')} to {after.lstrip('.')}")
        for side, before, after in (("client", m.client_streaming, now.client_streaming),
                                    ("server", m.server_streaming, now.server_streaming)):
            if before != after:
                found.append(f"method {rpc} {'no longer streams' if before else 'now streams'} on the {side} side")
    return found


def breaking_changes(old_files: list[descriptor_pb2.FileDescriptorProto],
                     new_files: list[descriptor_pb2.FileDescriptorProto]) -> list[str]:
    """Every change from old_files to new_files that breaks a client or server built from the old
    ones, one sentence each. Additions (files, messages, fields, values, methods) are not listed."""
    old, new = _Index.of(old_files), _Index.of(new_files)
    found = []
    for file, package in old.packages.items():
        if file not in new.packages:
            found.append(f"file {file} removed")
        elif new.packages[file] != package:
            found.append(f"file {file} changed package from {package} to {new.packages[file]}")
    for kind, before, after, compare in (("message", old.messages, new.messages, _message_changes),
                                         ("enum", old.enums, new.enums, _enum_changes),
                                         ("service", old.services, new.services, _service_changes)):
        for name, descriptor in before.items():
            if name not in after:
                found.append(f"{kind} {name} removed, renamed or moved to another package")
            else:
                found.extend(compare(name, descriptor, after[name]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version", nargs="?", help="the release to snapshot, e.g. v0.2 (writes proto/releases/VERSION.json)")
    parser.add_argument("--check", action="store_true", help="list breaking changes against the newest snapshot")
    args = parser.parse_args()
    if args.check == bool(args.version):
        parser.error("give either a VERSION to snapshot or --check")
    files = current_files()
    if args.check:
        baseline = latest_release()
        problems = breaking_changes(from_json(baseline.read_text()), files)
        for problem in problems:
            print(f"{baseline.stem}: {problem}")
        sys.exit(1 if problems else 0)
    out = RELEASES / f"{args.version}.json"
    if out.exists():
        raise SystemExit(f"{out.relative_to(ROOT)} exists: a release snapshot is never rewritten")
    RELEASES.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(args.version, files))
    print(f"wrote {out.relative_to(ROOT)} ({len(files)} files)", file=sys.stderr)


if __name__ == "__main__":
    main()
