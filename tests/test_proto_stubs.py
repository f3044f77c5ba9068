"""The gRPC contract in proto/: the committed stubs in xinyi/v1/ are what proto/ generates, and
the .proto files follow the two API rules the project keeps (enums start with *_UNSPECIFIED = 0;
every RPC has a request and a response message of its own)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections import defaultdict
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
COMMITTED = ROOT / "xinyi" / "v1"
STUB_GLOB = "*_pb2*"
HINT = "the committed stubs in xinyi/v1/ are stale: run `make proto` and commit the result"


def _load_gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _protos() -> list[Path]:
    return sorted(PROTO_DIR.glob("xinyi/v1/*.proto"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A fresh generation of the stubs into a temporary root; returns its xinyi/v1 directory."""
    out = tmp_path_factory.mktemp("gen")
    path = os.environ.get("PATH", "")
    try:
        files = _load_gen_proto().generate(out)  # puts the venv's bin first on PATH; restored below
    finally:
        os.environ["PATH"] = path
    assert files, "scripts/gen_proto.py generated nothing"
    return out / "xinyi" / "v1"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[descriptor_pb2.FileDescriptorProto]:
    """The descriptors of proto/xinyi/v1/*.proto, straight from protoc (not from the stubs)."""
    from grpc_tools import protoc
    import grpc_tools

    out = tmp_path_factory.mktemp("descriptors") / "set.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--descriptor_set_out={out}",
            *[str(p.relative_to(PROTO_DIR)) for p in _protos()]]
    assert protoc.main(args) == 0, "protoc could not parse proto/"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    ours = [f for f in fds.file if f.name.startswith("xinyi/")]
    assert {f.name for f in ours} == {str(p.relative_to(PROTO_DIR)) for p in _protos()}
    return ours


# --- the committed stubs are fresh -----------------------------------------------------------


def test_every_proto_has_generated_stubs(generated):
    names = {p.name for p in generated.glob(STUB_GLOB)}
    for proto in _protos():
        stem = proto.stem
        expected = {f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py", f"{stem}_pb2_grpc.pyi"}
        assert expected <= names, f"{proto.name}: generation is missing {sorted(expected - names)}"


def test_committed_stubs_match_a_fresh_generation(generated):
    problems = []
    for fresh in sorted(generated.glob(STUB_GLOB)):
        committed = COMMITTED / fresh.name
        if not committed.exists():
            problems.append(f"xinyi/v1/{fresh.name} is not committed")
        elif committed.read_bytes() != fresh.read_bytes():
            problems.append(f"xinyi/v1/{fresh.name} differs from what proto/ generates")
    assert not problems, f"{HINT}:\n  " + "\n  ".join(problems)


def test_no_committed_stub_lacks_a_proto(generated):
    fresh = {p.name for p in generated.glob(STUB_GLOB)}
    orphans = sorted(p.name for p in COMMITTED.glob(STUB_GLOB) if p.name not in fresh)
    assert not orphans, f"{HINT} (and delete stubs whose .proto is gone): no proto generates {orphans}"


# --- API rules -------------------------------------------------------------------------------


def _enums(files):
    def walk(prefix, messages):
        for m in messages:
            yield from ((f"{prefix}{m.name}.{e.name}", e) for e in m.enum_type)
            yield from walk(f"{prefix}{m.name}.", m.nested_type)

    for f in files:
        yield from ((f"{f.name}: {e.name}", e) for e in f.enum_type)
        yield from ((f"{f.name}: {name}", e) for name, e in walk("", f.message_type))


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def enum_problems(files) -> list[str]:
    """Enums whose first value is not ENUM_NAME_UNSPECIFIED = 0."""
    bad = []
    for where, enum in _enums(files):
        first = enum.value[0]
        expected = f"{_upper_snake(enum.name)}_UNSPECIFIED"
        if first.number != 0 or first.name != expected:
            bad.append(f"{where} starts with {first.name} = {first.number}; expected {expected} = 0")
    return bad


def rpc_message_problems(files) -> list[str]:
    """Messages shared between RPCs: the request of two, the response of two, or both roles."""
    inputs, outputs = defaultdict(list), defaultdict(list)
    for f in files:
        for service in f.service:
            for method in service.method:
                rpc = f"{service.name}.{method.name}"
                inputs[method.input_type.lstrip(".")].append(rpc)
                outputs[method.output_type.lstrip(".")].append(rpc)
    problems = [f"{msg} is the request of {rpcs}" for msg, rpcs in inputs.items() if len(rpcs) > 1]
    problems += [f"{msg} is the response of {rpcs}" for msg, rpcs in outputs.items() if len(rpcs) > 1]
    problems += [f"{msg} is both a request ({inputs[msg]}) and a response ({outputs[msg]})"
                 for msg in sorted(inputs.keys() & outputs.keys())]
    problems += [f"{rpcs[0]} uses the well-known type {msg}; give it a message of its own"
                 for table in (inputs, outputs) for msg, rpcs in table.items() if msg.startswith("google.protobuf.")]
    return problems


def test_every_enum_starts_with_an_unspecified_zero(files):
    names = {enum.name for _, enum in _enums(files)}
    assert {"Decision", "ConsentStatus", "NodeOutcome"} <= names  # the walk finds the enums
    problems = enum_problems(files)
    assert not problems, "\n".join(problems)


def test_every_rpc_has_its_own_request_and_response(files):
    methods = {f"{f.package}.{s.name}.{m.name}" for f in files for s in f.service for m in s.method}
    assert {"xinyi.v1.RegistryService.RouteQuery", "xinyi.v1.NodeService.Query",
            "xinyi.v1.ConsentService.GrantConsent", "xinyi.v1.AuditService.ListAuditRecords"} <= methods
    problems = rpc_message_problems(files)
    assert not problems, "one request and one response message per RPC:\n" + "\n".join(problems)


def test_the_rules_catch_violations():
    """The checks above, applied to a contract that breaks them, so their silence means something."""
    fd = descriptor_pb2.FileDescriptorProto(name="x.proto", package="x")
    fd.enum_type.add(name="Colour").value.add(name="COLOUR_RED", number=0)
    fd.message_type.add(name="M").enum_type.add(name="Kind").value.add(name="KIND_UNSPECIFIED", number=0)
    service = fd.service.add(name="S")
    service.method.add(name="A", input_type=".x.Req", output_type=".x.Resp")
    service.method.add(name="B", input_type=".x.Req", output_type=".x.Resp")
    service.method.add(name="C", input_type=".x.Resp", output_type=".google.protobuf.Empty")
    assert enum_problems([fd]) == ["x.proto: Colour starts with COLOUR_RED = 0; expected COLOUR_UNSPECIFIED = 0"]
    problems = rpc_message_problems([fd])
    assert "x.Req is the request of ['S.A', 'S.B']" in problems
    assert "x.Resp is the response of ['S.A', 'S.B']" in problems
    assert any(p.startswith("x.Resp is both a request") for p in problems)
    assert any("google.protobuf.Empty" in p for p in problems)


# --- the vendored protos are what the Python code uses -----------------------------------------


def _schema(fd: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """What a file declares, without its name, imports, comments and derived json names."""
    schema = descriptor_pb2.FileDescriptorProto(package=fd.package, message_type=fd.message_type, enum_type=fd.enum_type,
                                                service=fd.service, options=fd.options, syntax=fd.syntax or "proto3")

    def strip(messages):
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            strip(m.nested_type)

    strip(schema.message_type)
    return schema


@pytest.mark.parametrize("vendored, module", [
    ("google/rpc/status.proto", "google.rpc.status_pb2"),
    ("google/rpc/error_details.proto", "google.rpc.error_details_pb2"),
    ("google/rpc/code.proto", "google.rpc.code_pb2"),
    ("grpc/health/v1/health.proto", "grpc_health.v1.health_pb2"),
])
def test_vendored_protos_declare_what_the_installed_packages_do(vendored, module, tmp_path):
    from grpc_tools import protoc
    import grpc_tools

    assert (PROTO_DIR / vendored).exists(), f"proto/{vendored} is not vendored; see proto/README.md"
    out = tmp_path / "set.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    assert protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--descriptor_set_out={out}",
                        vendored]) == 0
    ours = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    theirs = descriptor_pb2.FileDescriptorProto()
    importlib.import_module(module).DESCRIPTOR.CopyToProto(theirs)
    assert _schema(ours) == _schema(theirs), f"proto/{vendored} differs from {module}: vendor it again (proto/README.md)"
