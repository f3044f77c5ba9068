"""The error reasons are a contract: every reason the code can send is a value of ErrorReason
(proto/xinyi/v1/errors.proto), every value is sent somewhere or marked reserved, each value says
when it is sent and with which status code, and nothing else can be sent.

The source scan finds a reason wherever the code hands one on: the reason argument of Refusal and
its constructors, of fault_status, and of any function that passes its own `reason` parameter on
to one of those (found by following the calls, e.g. the witness's `_conflict`); `Reason.X`
references; and the `reason`/`error_reason` field of a response message set from a literal. A
reason it cannot read as literals must be one of COMPUTED, whose values the test works out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from xinyi.errors import Kind, Reason, Refusal, reason_of
from xinyi.privacy import fairuse
from xinyi.privacy.consent import Status
from xinyi.rpc.status import DOMAIN, RpcFailure, fault_status, refusal_from_failure, to_status
from xinyi.v1 import errors_pb2

ROOT = Path(__file__).resolve().parent.parent
ERRORS_PROTO = ROOT / "proto" / "xinyi" / "v1" / "errors.proto"

# Where a reason is an argument, by callee name: the position of the `reason` parameter (the
# classmethods counted without cls). Functions that pass their `reason` on are added by the scan.
SINKS = {"Refusal": 1, "invalid": 2, "unauthenticated": 2, "denied": 0, "fault_status": 1}
METHOD_SINKS = {"invalid", "unauthenticated", "denied"}  # only as Refusal.X / cls.X
# Reasons made from a value at run time (each also checked when the Refusal is made), and the
# values they can take.
COMPUTED = {
    "f'CONSENT_{status.upper()}'": {f"CONSENT_{s.upper()}" for s in Status if s is not Status.ACTIVE},
    "f'FAIR_USE_{key.upper()}'": {f"FAIR_USE_{k.upper()}" for k in fairuse._KNOWN_KEYS},
}
RELAYED = {"failure.reason"}  # a node's reason passed on by the registry, as it came
RESPONSE_FIELDS = {"reason", "error_reason"}
GRPC_CODES = {c.name for c in grpc.StatusCode}


def sources() -> dict[str, str]:
    files = [p for d in ("xinyi", "node", "registry") for p in (ROOT / d).rglob("*.py")]
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted(files) if "/v1/" not in str(p)}


def _callee(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        if f.attr in METHOD_SINKS:
            return f.attr if ast.unparse(f.value) in ("Refusal", "cls") else None
        return f.attr
    return None


def _reason_arg(call: ast.Call, position: int) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == "reason":
            return keyword.value
    return call.args[position] if len(call.args) > position else None


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def _functions(trees: dict[str, ast.Module]):
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def _sink_calls(fn, sinks: dict[str, int]):
    """The calls to a sink directly in fn's body (not in functions nested in it)."""
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Call) and _callee(node) in sinks:
            yield node
        stack.extend(ast.iter_child_nodes(node))


def find_sinks(trees: dict[str, ast.Module]) -> dict[str, int]:
    """SINKS, plus every function that hands its own `reason` parameter to a sink."""
    sinks = dict(SINKS)
    changed = True
    while changed:
        changed = False
        for _, fn in _functions(trees):
            params = _params(fn)
            if "reason" not in params or fn.name in sinks:
                continue
            for call in _sink_calls(fn, sinks):
                arg = _reason_arg(call, sinks[_callee(call)])
                if isinstance(arg, ast.Name) and arg.id == "reason":
                    sinks[fn.name] = params.index("reason")
                    changed = True
                    break
    return sinks


def _resolve(arg: ast.expr, fn, sinks: dict[str, int]) -> tuple[set[str], list[str]]:
    """(the reasons `arg` can be, what could not be read) within the function `fn`."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value}, []
    if isinstance(arg, ast.IfExp):
        a, pa = _resolve(arg.body, fn, sinks)
        b, pb = _resolve(arg.orelse, fn, sinks)
        return a | b, pa + pb
    if isinstance(arg, ast.Attribute) and ast.unparse(arg).startswith("Reason."):
        return {ast.unparse(arg).split(".")[1]}, []
    text = ast.unparse(arg)
    if text in COMPUTED:
        return set(COMPUTED[text]), []
    if text in RELAYED:
        return set(), []
    if isinstance(arg, ast.Name) and fn is not None:
        if arg.id == "reason" and fn.name in sinks:
            return set(), []  # passed on: read at the callers of fn
        values = [n.value for n in ast.walk(fn) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == arg.id for t in n.targets)]
        if values:
            found, problems = set(), []
            for value in values:
                f, p = _resolve(value, fn, sinks)
                found |= f
                problems += p
            return found, problems
    return set(), [text]


def scan(files: dict[str, str]) -> tuple[dict[str, list[str]], list[str]]:
    """({reason: [where it is sent]}, [reason expressions the scan cannot read])."""
    trees = {path: ast.parse(text, path) for path, text in files.items()}
    sinks = find_sinks(trees)
    sent: dict[str, list[str]] = {}
    unread: list[str] = []

    def note(reasons, problems, where):
        for r in reasons:
            sent.setdefault(r, []).append(where)
        unread.extend(f"{where}: {p}" for p in problems)

    for path, tree in trees.items():
        enclosing = {}  # id(node) -> its innermost function: an inner one, walked later, overwrites
        for _, fn in sorted(_functions({path: tree}), key=lambda item: item[1].lineno):
            for child in ast.walk(fn):
                if child is not fn:
                    enclosing[id(child)] = fn
        for node in ast.walk(tree):
            where = f"{path}:{getattr(node, 'lineno', 0)}"
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Reason"
                    and node.attr.isupper() and node.attr != "UNSPECIFIED"):
                note({node.attr}, [], where)
            if not isinstance(node, ast.Call):
                continue
            name = _callee(node)
            if name in sinks:
                arg = _reason_arg(node, sinks[name])
                if arg is not None:
                    note(*_resolve(arg, enclosing.get(id(node)), sinks), where)
            elif isinstance(node.func, ast.Attribute) and ast.unparse(node.func.value).endswith("_pb2"):
                for keyword in node.keywords:
                    if keyword.arg in RESPONSE_FIELDS and isinstance(keyword.value, ast.Constant):
                        note({keyword.value.value}, [], where)
        # defaults: Refusal.invalid(..., reason="INVALID_FIELD")
        for _, fn in _functions({path: tree}):
            if fn.name in sinks:
                args = fn.args.args + fn.args.kwonlyargs
                defaults = [None] * (len(fn.args.args) - len(fn.args.defaults)) + fn.args.defaults + fn.args.kw_defaults
                for a, default in zip(args, defaults):
                    if a.arg == "reason" and isinstance(default, ast.Constant):
                        note({default.value}, [], f"{path}:{fn.lineno}")
    return sent, unread


def enum_comments() -> dict[str, str]:
    """{reason name: the comment on its line} from errors.proto."""
    found = {}
    for line in ERRORS_PROTO.read_text().splitlines():
        m = re.match(r"\s*ERROR_REASON_(\w+)\s*=\s*\d+;\s*(?://\s*(.*))?$", line)
        if m:
            found[m.group(1)] = m.group(2) or ""
    return found


@pytest.fixture(scope="module")
def scanned() -> tuple[dict[str, list[str]], list[str]]:
    return scan(sources())


def test_every_reason_the_code_sends_is_in_the_enum(scanned):
    sent, unread = scanned
    assert {"CONSENT_REVOKED", "FAIR_USE_MAX_DAYS", "OLD_SIZE_MISMATCH", "CERTIFICATE_REVOKED", "INVALID_FIELD",
            "BAD_SIGNATURE", "INVALID_ANSWER", "TLS_PEER_WRONG_NAME", "NODE_UNAVAILABLE"} <= sent.keys()
    assert not unread, ("reasons the scan cannot read; use a literal or Reason.X, or add the expression to COMPUTED "
                        "with the values it takes:\n" + "\n".join(unread))
    unknown = {r: where for r, where in sent.items() if reason_of(r) is Reason.UNSPECIFIED}
    assert not unknown, ("reasons sent that ErrorReason lacks; add ERROR_REASON_<REASON> to "
                         f"proto/xinyi/v1/errors.proto: {unknown}")


def test_every_enum_value_is_sent_or_reserved(scanned):
    sent, _ = scanned
    comments = enum_comments()
    idle = [name for name in Reason.__members__ if name != "UNSPECIFIED" and name not in sent
            and "reserved" not in comments.get(name, "")]
    assert not idle, f"ErrorReason values nothing sends; mark them reserved in errors.proto: {idle}"


def test_every_value_says_when_and_with_which_status_code():
    comments = enum_comments()
    assert set(comments) == set(Reason.__members__), "errors.proto and the generated Reason disagree: run `make proto`"
    vague = [f"{name}: {text!r}" for name, text in comments.items()
             if name != "UNSPECIFIED"
             and (len(text) < 20 or not (set(re.findall(r"[A-Z_]{5,}", text)) & GRPC_CODES or "reserved" in text))]
    assert not vague, "each value's comment says when it is sent and its gRPC status code (or 'reserved'):\n" + "\n".join(vague)


def test_the_scan_sees_a_reason_outside_the_enum():
    """The scan is only as good as its parser: a bogus reason handed through a helper, one chosen by
    a condition, and one it cannot read are all reported."""
    probe = {"probe.py": (
        "def _refuse(reason, message):\n"
        "    return Refusal(Kind.PRECONDITION, reason, message)\n"
        "def f(x):\n"
        "    raise _refuse('NO_SUCH_REASON', 'm')\n"
        "def g(x):\n"
        "    raise Refusal.denied('POLICY_DENIED' if x else 'ALSO_NOT_A_REASON', 'm')\n"
        "def h(x):\n"
        "    raise Refusal.invalid('f', 'd', x.upper())\n"
    )}
    sent, unread = scan(probe)
    assert set(sent) == {"NO_SUCH_REASON", "POLICY_DENIED", "ALSO_NOT_A_REASON"}
    assert unread == ["probe.py:8: x.upper()"]


# --- at run time ---------------------------------------------------------------------------------


def test_a_reason_outside_the_enum_cannot_be_sent():
    with pytest.raises(ValueError, match="ERROR_REASON_NOT_A_REASON"):
        Refusal.denied("NOT_A_REASON", "no")
    with pytest.raises(ValueError, match="ErrorReason"):
        Refusal(Kind.PRECONDITION, "UNSPECIFIED", "no")
    with pytest.raises(ValueError, match="ErrorReason"):
        fault_status(grpc.StatusCode.INTERNAL, "OOPS", "no", {})
    assert Refusal.invalid("f", "d", Reason.TOO_LARGE).reason == "TOO_LARGE"


def test_the_wire_carries_the_bare_name_in_error_info():
    status = to_status(Refusal.denied(Reason.CONSENT_REVOKED, "consent_id: revoked", field_name="consent_id"))
    details = next(v for k, v in status.trailing_metadata if k == "grpc-status-details-bin")
    info = error_details_pb2.ErrorInfo()
    assert status_pb2.Status.FromString(details).details[0].Unpack(info)
    assert (status.code, info.domain, info.reason) == (grpc.StatusCode.PERMISSION_DENIED, "xinyi.network",
                                                       "CONSENT_REVOKED")
    assert DOMAIN == "xinyi.network" and errors_pb2.ErrorReason.Value("ERROR_REASON_" + info.reason) == 41


def test_a_client_reads_the_reason_as_the_enum():
    assert RpcFailure("PERMISSION_DENIED", "m", "CONSENT_REVOKED").error_reason is Reason.CONSENT_REVOKED
    assert RpcFailure("PERMISSION_DENIED", "m", "A_NEWER_SERVERS_REASON").error_reason is Reason.UNSPECIFIED
    assert RpcFailure("UNAVAILABLE", "m").error_reason is Reason.UNSPECIFIED


def test_the_registry_relays_a_nodes_reason_as_it_came_and_names_a_silent_failure():
    newer = refusal_from_failure(RpcFailure("PERMISSION_DENIED", "m", "A_NEWER_NODES_REASON"))
    assert (newer.kind, newer.reason) == (Kind.DENIED, "A_NEWER_NODES_REASON")
    silent = refusal_from_failure(RpcFailure("DEADLINE_EXCEEDED", "Deadline Exceeded"))
    assert (silent.kind, silent.reason, silent.metadata) == (Kind.UNAVAILABLE, "NODE_UNAVAILABLE",
                                                              {"node_code": "DEADLINE_EXCEEDED"})
