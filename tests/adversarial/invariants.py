"""What must hold after every fault, written once for the whole adversarial suite.

A bank's queries are kept in a `Ledger`: for each node, the requests it answered (a verified,
opened answer), the ones it said it did not answer (a refusal of its own: denied, or unavailable
with a reason) and the ones whose fate the bank cannot know (the call failed, or the node was
lost mid-call or timed out: it may have answered and counted the use, and the answer was lost on
the way - no protocol can rule that out when a process dies between its commit and its reply).
After a fault, `check_after_fault` asserts:

1. every log verifies - `xinyi audit verify` (the CLI's own code, in process) against the log's
   signed checkpoint and against what this auditor verified before, so a log that lost or
   rewrote signed entries in a crash fails;
2. every answer the bank received is in the answering node's log, as an allowed query, and
   never retracted (a `retract` entry names only a request whose commit reply was lost, which
   the bank was told failed);
3. `xinyi audit reconcile` finds nothing missing: every routing is in the logs of the nodes that
   decided it, and every relayed answer in the registry's log;
4. no consent was used without an answer: every use a node recorded is of a request it answered
   and audited, and that the bank received or cannot know about - never one the node told the
   bank it did not answer; the registry counts no more uses than answers the bank received or
   cannot know about;
5. nothing the bank was told leaks internals: no stack trace, no Python class names or source
   paths, no host:port, no message of unbounded length.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import grpc
from harness import CHENGDU_FIRM

from node.store import NodeStore
from xinyi.audit.log import RETRACT
from xinyi.cli.audit import cmd_verify, fetch_log, reconcile
from xinyi.client import AuditClient, BankClient
from xinyi.clock import now_ms
from xinyi.crypto.envelope import body_hash
from xinyi.crypto.identity import Principal, Role
from xinyi.query import build_query
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import audit_pb2, node_pb2_grpc, query_pb2, registry_pb2

QUERY_TIMEOUT = 10.0  # one query, bank side (the registry gives each node 3 s)
ANSWERED = ("ok", "no_data")
NOT_ANSWERED = ("denied", "unavailable", "invalid")
# Failures the caller's own gRPC library reports when the server could not be reached: their
# text is the client's, not the server's, so it is not held to the server's standard.
TRANSPORT_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}
# Never the answer to a bad request or a failing store: a caller must be told what went wrong.
OPAQUE_CODES = {"UNKNOWN", "INTERNAL"}
MAX_MESSAGE_CHARS = 2048

LEAKS = [
    (re.compile(r"Traceback|File \"|, line \d+"), "a stack trace"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}:\d{1,5}\b|\blocalhost:\d+|\[[0-9a-fA-F:]*\]:\d+|\bipv[46]:"), "a host:port"),
    (re.compile(r"\b[A-Z][A-Za-z0-9_]*(?:Error|Exception)\b"), "a Python class name"),
    (re.compile(r"<class '|object at 0x|\b(?:sqlalchemy|psycopg|sqlite3|asyncio|grpc\._cython)\b", re.I),
     "library internals"),
    (re.compile(r"[\w./-]+\.py\b"), "a source file"),
]


def leaks(text: str) -> list[str]:
    """What a text shows that a caller must never see."""
    found = [f"{what} ({m.group(0)!r})" for pattern, what in LEAKS for m in [pattern.search(text)] if m]
    if len(text) > MAX_MESSAGE_CHARS:
        found.append(f"{len(text)} characters (at most {MAX_MESSAGE_CHARS})")
    return found


def failure_text(failure: RpcFailure) -> str:
    """Everything a refusal tells the caller: message, field descriptions, metadata."""
    parts = [failure.message, *(f"{f}: {d}" for f, d in failure.fields), *(f"{k}={v}" for k, v in failure.metadata)]
    return "\n".join(parts)


def assert_clean(failure: RpcFailure, where: str) -> None:
    """A refusal a server sent: the right kind of status, nothing internal in it."""
    assert failure.code not in OPAQUE_CODES, f"{where}: {failure.code} {failure.message[:300]!r}"
    found = leaks(failure_text(failure))
    assert not found, f"{where}: {failure.code} shows {', '.join(found)}: {failure_text(failure)[:400]!r}"


def server_sent(failure: RpcFailure) -> bool:
    """A failure the server wrote (a refusal carries its google.rpc details), not the client's transport error."""
    return failure.code not in TRANSPORT_CODES or bool(failure.reason)


@dataclass
class Ledger:
    """What the bank learned from each query it sent."""

    answered: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))      # node -> request hashes
    not_answered: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # node -> request hashes
    in_doubt: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))      # node -> request hashes
    failed_calls: set[str] = field(default_factory=set)  # the whole call failed: in doubt at every node
    consent_of: dict[str, str] = field(default_factory=dict)  # request hash -> consent id
    statuses: Counter = field(default_factory=Counter)   # "node:status" and "call:CODE"
    # (monotonic, "call", gRPC code, reason) for a failed call; (monotonic, node, status, reason) for a node's result not answered
    refusals: list[tuple[float, str, str, str]] = field(default_factory=list)
    messages: list[tuple[str, str, bool]] = field(default_factory=list)  # (where, text, written by a server)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic, node, status), in order

    def record_views(self, request_hash: str, consent_id: str, views) -> None:
        self.consent_of[request_hash] = consent_id
        for v in views:
            status = v.status if v.verified or v.status not in ANSWERED else "invalid"
            self.statuses[f"{v.node}:{status}"] += 1
            self.events.append((time.monotonic(), v.node, status))
            if status in ANSWERED:
                self.answered[v.node].add(request_hash)
            elif status in ("timeout", "unavailable") and not v.reason:
                # The registry lost the node mid-call (or gave up on it): the node may have
                # answered and counted it, and the answer was lost on the way.
                self.in_doubt[v.node].add(request_hash)
            else:
                self.not_answered[v.node].add(request_hash)
            if status not in ANSWERED:
                self.refusals.append((time.monotonic(), v.node, status, v.reason or ""))
            if status not in ANSWERED and v.error:
                self.messages.append((f"node {v.node} result ({status})", v.error, True))

    def record_failure(self, request_hash: str, consent_id: str, failure: RpcFailure, where: str,
                       node: str | None = None) -> None:
        """A call that failed: through the registry (node None) or straight to a node."""
        self.consent_of[request_hash] = consent_id
        self.statuses[f"{node or 'call'}:{failure.code}"] += 1
        self.refusals.append((time.monotonic(), node or "call", failure.code, failure.reason))
        self.events.append((time.monotonic(), node or "call", failure.code))
        self.messages.append((where, failure_text(failure), server_sent(failure)))
        if node is None:
            self.failed_calls.add(request_hash)
        elif failure.code in ("DEADLINE_EXCEEDED", "CANCELLED") or not server_sent(failure):
            self.in_doubt[node].add(request_hash)
        else:
            self.not_answered[node].add(request_hash)

    def count(self, node: str, status: str | tuple[str, ...], since: float = 0.0) -> int:
        """Results of `node` ("call": whole calls) with this status (or any of these) since a moment."""
        wanted = (status,) if isinstance(status, str) else status
        return sum(1 for at, n, s in self.events if n == node and s in wanted and at >= since)

    def seen(self, node: str, since: float = 0.0) -> Counter:
        """Each status of `node` since a moment, counted."""
        return Counter(s for at, n, s in self.events if n == node and at >= since)

    def assert_no_leaks(self, *, transport_too: bool = False) -> None:
        """No refusal shows internals; `transport_too`: nor a failure without google.rpc details
        (for when the server was known to be up, so it wrote every failure itself)."""
        bad = [(where, text, found) for where, text, by_server in self.messages
               if (by_server or transport_too) and (found := leaks(text))]
        assert not bad, (f"{len(bad)} of {len(self.messages)} refusals the bank received show internals; first: "
                         f"{bad[0][0]}: {', '.join(bad[0][2])}: {bad[0][1][:400]!r}")


async def ask(bank: BankClient, ledger: Ledger, consent_id: str, *, uscc: str = CHENGDU_FIRM,
              categories=("registration", "tax", "judicial"), purpose: str = "credit_assessment"):
    """One query through the registry, as BankClient.query makes it, but keeping the request hash
    whatever happens. Returns the views, or None when the call failed."""
    envelope, key = build_query(bank.identity, uscc=uscc, categories=list(categories), purpose=purpose,
                                consent_id=consent_id, now_ms=now_ms())
    request_hash = body_hash(envelope.body)
    try:
        response = await bank.registry.RouteQuery(registry_pb2.RouteQueryRequest(query=envelope), timeout=QUERY_TIMEOUT)
        directory = await bank.directory()
        if any(r.node_id not in directory.nodes for r in response.results):
            directory = await bank.directory(refresh=True)
    except grpc.aio.AioRpcError as e:
        ledger.record_failure(request_hash.hex(), consent_id, RpcFailure.from_error(e), "RouteQuery")
        return None
    views = [bank._open(r, key, request_hash, uscc, directory) for r in response.results]
    ledger.record_views(request_hash.hex(), consent_id, views)
    return views


async def ask_node(bank: BankClient, ledger: Ledger, node: str, endpoint: str, consent_id: str, *,
                   uscc: str = CHENGDU_FIRM, categories=("registration", "tax", "judicial"),
                   purpose: str = "credit_assessment"):
    """One query straight to a node (no registry on the path). Returns (view or None, failure or None)."""
    envelope, key = build_query(bank.identity, uscc=uscc, categories=list(categories), purpose=purpose,
                                consent_id=consent_id, now_ms=now_ms())
    request_hash = body_hash(envelope.body)
    stub = node_pb2_grpc.NodeServiceStub(bank._node_channel(endpoint, node))
    try:
        result = await stub.Query(query_pb2.QueryRequest(query=envelope), timeout=QUERY_TIMEOUT)
        directory = await bank.directory()
    except grpc.aio.AioRpcError as e:
        failure = RpcFailure.from_error(e)
        ledger.record_failure(request_hash.hex(), consent_id, failure, f"node {node} Query", node=node)
        return None, failure
    view = bank._open(result, key, request_hash, uscc, directory)
    ledger.record_views(request_hash.hex(), consent_id, [view])
    return view, None


class QueryStream:
    """A bank sending queries through the registry continuously, `workers` at a time, until
    stopped or `max_queries` were sent: the steady load every fault lands in."""

    def __init__(self, bank: BankClient, ledger: Ledger, consent_id: str, *, workers: int = 3,
                 max_queries: int = 20000, pause: float = 0.0) -> None:
        self.bank, self.ledger, self.consent_id = bank, ledger, consent_id
        self.workers, self.max_queries, self.pause = workers, max_queries, pause
        self.sent = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def _work(self) -> None:
        while not self._stop.is_set() and self.sent < self.max_queries:
            self.sent += 1
            views = await ask(self.bank, self.ledger, self.consent_id)
            # A failed call returns at once: do not spin while the registry is down.
            await asyncio.sleep(self.pause if views is not None else 0.05)

    async def __aenter__(self) -> "QueryStream":
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        done, pending = await asyncio.wait(self._tasks, timeout=QUERY_TIMEOUT + 5)
        for t in pending:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None and exc[0] is None:
                raise t.exception()

    async def until(self, what: str, predicate, timeout: float) -> float:
        """Wait (bounded) until predicate(ledger) holds; the seconds it took."""
        start = time.monotonic()
        while not predicate(self.ledger):
            for t in self._tasks:
                if t.done() and t.exception() is not None:
                    raise t.exception()
            if time.monotonic() - start > timeout:
                raise AssertionError(f"not within {timeout:g} s: {what}; statuses so far {dict(self.ledger.statuses)}")
            await asyncio.sleep(0.05)
        return time.monotonic() - start


# --- the checks after a fault ---------------------------------------------------------------
async def verify_logs(net, registry_addr: str = "") -> dict[str, list[audit_pb2.AuditRecord]]:
    """`xinyi audit verify` of the registry's and every node's log, remembering (per network)
    what was verified so the next check also proves the log only grew. Returns every log's records.
    `registry_addr`: the registry replica to ask (default: the first)."""
    state_dir = net.tmp / "auditor-state"
    targets = [("registry", [registry_addr] if registry_addr else net.registry_addrs, Role.REGISTRY)] + [
        (n, net.node_addrs[n], Principal(Role.NODE, n)) for n in net.node_ids]
    logs = {}
    for name, addr, expect in targets:
        async with AuditClient(net.auditor, addr, expect) as client:
            out = io.StringIO()
            args = argparse.Namespace(state=str(state_dir / f"{name}.json"), json=True)
            try:
                with contextlib.redirect_stdout(out):
                    await asyncio.wait_for(cmd_verify(client, args), 60)
            except Exception as e:  # noqa: BLE001 - the report is the assertion message
                raise AssertionError(f"`xinyi audit verify` of {name}'s log failed: {e}\n{out.getvalue()[-2000:]}") from None
            report = json.loads(out.getvalue())
            assert report["ok"], f"{name}'s log does not verify: {report}"
            _, _, entries = await asyncio.wait_for(fetch_log(client), 60)
        logs[name] = [audit_pb2.AuditRecord.FromString(leaf) for _, leaf in entries]
    return logs


def _uses_at(url: str, consent_ids) -> dict[str, set[str]]:
    store = NodeStore(url)
    try:
        return {c: {h for h, _, _ in store.uses_of(c)} for c in consent_ids}
    finally:
        store.close()


async def check_after_fault(net, ledger: Ledger) -> None:
    """The invariants of the module docstring, for a network of processes and what its bank learned."""
    logs = await verify_logs(net)

    # 2. every answer the bank received is in the answering node's log
    for node, hashes in ledger.answered.items():
        allowed = {r.request_hash for r in logs[node] if r.action == "query" and r.decision == audit_pb2.DECISION_ALLOW}
        missing = sorted(hashes - allowed)
        assert not missing, (f"{len(missing)} of {len(hashes)} answers the bank received from node {node} are not in "
                             f"its log: {missing[:3]}")

        # a retraction (a commit whose reply was lost) only ever names a request the bank was not answered
        retracted = {r.request_hash for r in logs[node] if r.action == RETRACT}
        assert not retracted & hashes, f"node {node} retracted answers the bank received: {sorted(retracted & hashes)[:3]}"

    # 3. xinyi audit reconcile
    report = await asyncio.wait_for(reconcile(net.auditor, net.registry_addrs), 60)
    assert not report["unreachable_nodes"], report["unreachable_nodes"]
    assert not report["missing_on_nodes"], f"routings missing on nodes: {report['missing_on_nodes'][:3]}"
    assert not report["missing_on_registry"], f"relayed answers missing on the registry: {report['missing_on_registry'][:3]}"

    # 4. no consent used without an answer
    consents = set(ledger.consent_of.values())
    by_consent: dict[str, set[str]] = defaultdict(set)
    for h, c in ledger.consent_of.items():
        by_consent[c].add(h)
    anywhere_answered = set().union(*ledger.answered.values()) if ledger.answered else set()
    anywhere_doubt = ledger.failed_calls.union(*ledger.in_doubt.values()) if ledger.in_doubt else set(ledger.failed_calls)
    for node in net.node_ids:
        uses = await asyncio.to_thread(_uses_at, net.db_urls[node], consents)
        audited = {r.request_hash for r in logs[node] if r.action == "query" and r.decision == audit_pb2.DECISION_ALLOW}
        for consent_id, used in uses.items():
            used &= by_consent[consent_id]  # uses by requests of this test's bank
            refused = used & ledger.not_answered[node]
            assert not refused, (f"node {node} counted {len(refused)} use(s) of consent {consent_id} for requests the "
                                 f"bank was told it did not answer: {sorted(refused)[:3]}")
            unknown = used - ledger.answered[node] - ledger.in_doubt[node] - ledger.failed_calls
            assert not unknown, f"node {node} counted uses of {consent_id} the bank never heard of: {sorted(unknown)[:3]}"
            unaudited = used - audited
            assert not unaudited, (f"node {node} counted uses of {consent_id} with no answer in its log: "
                                   f"{sorted(unaudited)[:3]}")
    enterprise = net.enterprise()
    for consent_id in consents:
        record = await asyncio.wait_for(enterprise.status(consent_id), 15)
        possible = len(by_consent[consent_id] & (anywhere_answered | anywhere_doubt))
        assert record.uses <= possible, (f"the registry counts {record.uses} uses of consent {consent_id}; the bank "
                                         f"received at most {possible} answers under it")

    # 5. what the bank was told
    ledger.assert_no_leaks()
