"""`xinyi alerts`: a bank's early-warning alerts about the enterprises it monitors.

    xinyi alerts subscribe --identity D/bank-USCC --registry HOST:PORT --uscc U --consent ID
    xinyi alerts watch     --identity D/bank-USCC --registry HOST:PORT --uscc U --consent ID
                           [--once] [--interval 5] [--state FILE] [--json]

`watch` polls the registry (which asks every node that routes for the enterprise) with the
bank's cursor per node, kept in the state file, and prints each alert once its node's signature
is verified against the signed directory. The cursors are saved after the alerts are printed,
so a watch that stops (Ctrl-C, a crash, the bank's machine off for a week) resumes where it
left off and misses nothing the nodes still keep. A refusal (the consent revoked, paused or
expired; no subscription) ends the watch with status 1 and one line saying why.

`AlertClient` is the library form, for a bank's own systems.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from xinyi.cli.common import EXIT_USAGE, CommandError, add_registry_argument, load_identity, print_json, run_client
from xinyi.client import ClientError, _call, _RegistryClient
from xinyi.clock import now_ms
from xinyi.compute.alerts import AlertError, OpenedAlert, build_poll, build_subscribe, open_alerts
from xinyi.crypto.identity import Role
from xinyi.crypto.pki import Identity
from xinyi.v1 import alerts_pb2, alerts_pb2_grpc

TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})  # worth trying again; anything else is a refusal
STATE_VERSION = 1


# --- the client ----------------------------------------------------------------------------------
@dataclass
class NodeProblem:
    node: str
    code: str  # gRPC status name, or "INVALID" for a batch that did not verify
    reason: str
    message: str

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT

    def __str__(self) -> str:
        return f"node {self.node}: {self.message}"


@dataclass
class PollResult:
    alerts: list[OpenedAlert]            # verified, oldest first
    cursors: dict[str, int]              # the cursors to poll with next time
    problems: list[NodeProblem] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # nodes whose batch opened and verified
    more: bool = False                   # a node has more waiting: poll again at once


class AlertClient(_RegistryClient):
    """For banks: subscribe to an enterprise's alerts and poll for new ones."""

    def __init__(self, identity: Identity, registry: str | Sequence[str]) -> None:
        if identity.principal.role is not Role.BANK:
            raise ValueError(f"alerts are for banks; {identity.principal} is not one")
        super().__init__(identity, registry)
        self.stub = self._stub(alerts_pb2_grpc.AlertServiceStub)

    async def subscribe(self, uscc: str, consent_id: str) -> list[alerts_pb2.AlertSubscription]:
        envelope = build_subscribe(self.identity, uscc=uscc, consent_id=consent_id, now_ms=now_ms())
        response = await _call(self.stub.Subscribe(alerts_pb2.SubscribeRequest(subscribe=envelope), timeout=30))
        return list(response.nodes)

    async def poll(self, uscc: str, consent_id: str, cursors: dict[str, int] | None = None) -> PollResult:
        """One poll. The new cursors come from the alerts verified, never from the relay."""
        cursors = dict(cursors or {})
        envelope, key = build_poll(self.identity, uscc=uscc, consent_id=consent_id, cursors=cursors, now_ms=now_ms())
        response = await _call(self.stub.Poll(alerts_pb2.PollRequest(poll=envelope), timeout=60))
        directory = await self.directory()
        result = PollResult([], dict(cursors))
        for node in response.nodes:
            if node.error or not node.sealed_alerts:
                result.problems.append(NodeProblem(node.node_id, node.error_code or "UNAVAILABLE", node.error_reason,
                                                   node.error or "gave no answer"))
                continue
            if node.node_id not in directory.nodes:
                directory = await self.directory(refresh=True)
            entry = directory.nodes.get(node.node_id)
            if entry is None:
                result.problems.append(NodeProblem(node.node_id, "INVALID", "", "is not in the signed directory"))
                continue
            after = cursors.get(node.node_id, 0)
            try:
                opened = open_alerts(node.sealed_alerts, key, expected_node=node.node_id,
                                     node_signing_cert=entry.signing_cert, uscc=uscc, after=after,
                                     trust=self.identity.trust(), previous_keys=entry.previous_keys)
            except AlertError as e:
                result.problems.append(NodeProblem(node.node_id, "INVALID", "", str(e)))
                continue
            result.answered.append(node.node_id)
            result.alerts.extend(opened)
            if opened:
                result.cursors[node.node_id] = opened[-1].seq
            result.more = result.more or (node.more and bool(opened))
        result.alerts.sort(key=lambda a: (a.detected_at_ms, a.node_id, a.seq))
        return result


# --- the state file ------------------------------------------------------------------------------
def default_state_path(bank: str, uscc: str, consent_id: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return base / "xinyi" / "alerts" / f"{bank}-{uscc}-{consent_id}.json"


def load_state(path: Path, bank: str, uscc: str, consent_id: str) -> dict[str, int]:
    """The cursors kept in `path` ({} when it does not exist yet)."""

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise CommandError(f"--state {path}: cannot read it ({e}); move it away to start from the beginning",
                           EXIT_USAGE) from None
    cursors = data.get("cursors") if isinstance(data, dict) else None
    if not isinstance(cursors, dict) or not all(isinstance(k, str) and isinstance(v, int) and v >= 0
                                                for k, v in cursors.items()):
        raise CommandError(f"--state {path}: is not an alerts state file (no cursors)", EXIT_USAGE)
    if (data.get("bank"), data.get("uscc")) != (bank, uscc):
        raise CommandError(f"--state {path}: holds the cursors of {data.get('bank')} watching {data.get('uscc')}, "
                           f"not of {bank} watching {uscc}; use another --state file", EXIT_USAGE)
    return dict(cursors)


def save_state(path: Path, bank: str, uscc: str, consent_id: str, cursors: dict[str, int]) -> None:
    """Write the cursors atomically (a crash leaves the old file or the new one, whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": STATE_VERSION, "bank": bank, "uscc": uscc, "consent_id": consent_id,
            "cursors": dict(sorted(cursors.items())), "updated_at_ms": now_ms()}
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- the commands --------------------------------------------------------------------------------
def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def format_alert(a: OpenedAlert) -> str:
    return f"{_when(a.detected_at_ms)} node {a.node_id} #{a.seq:<6} {a.kind:<22} {a.uscc} {a.summary}  record {a.record_id[:16]}"


def cmd_subscribe(args) -> None:

    identity = load_identity(args.identity, Role.BANK)

    async def run():
        async with AlertClient(identity, args.registry) as client:
            return await client.subscribe(args.uscc, args.consent)

    nodes = asyncio.run(run_client(run()))
    if args.json:
        print_json({"uscc": args.uscc, "consent_id": args.consent, "nodes": [
            {"node": n.node_id, "subscribed": n.subscribed, "since_ms": n.since_ms, "error": n.error or None,
             "reason": n.error_reason or None} for n in nodes]})
    else:
        for n in nodes:
            if n.subscribed:
                print(f"node {n.node_id}: subscribed to alerts about {args.uscc} detected since {_when(n.since_ms)}")
            else:
                print(f"node {n.node_id}: not subscribed: {n.error}", file=sys.stderr)
    if not any(n.subscribed for n in nodes):
        first = next((n.error for n in nodes if n.error), "no node answered")
        raise CommandError(f"no node subscribed: {first}")


def cmd_watch(args) -> None:

    identity = load_identity(args.identity, Role.BANK)
    if args.interval <= 0:
        raise CommandError("--interval: must be more than 0 seconds", EXIT_USAGE)
    bank = identity.principal.id
    path = Path(args.state) if args.state else default_state_path(bank, args.uscc, args.consent)
    cursors = load_state(path, bank, args.uscc, args.consent)
    asyncio.run(run_client(_watch(identity, args, path, cursors)))


async def _watch(identity: Identity, args, path: Path, cursors: dict[str, int]) -> None:

    bank = identity.principal.id
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass
    reported: set[str] = set()
    try:
        async with AlertClient(identity, args.registry) as client:
            while not stop.is_set():
                result = await _poll_unless_stopped(client, args, cursors, stop)
                if result is None:  # stopped, or a transient failure in a long-running watch
                    if stop.is_set():
                        break
                    await _pause(stop, args.interval)
                    continue
                for alert in result.alerts:
                    print(json.dumps(alert.to_json(), ensure_ascii=False) if args.json else format_alert(alert), flush=True)
                if result.cursors != cursors:
                    save_state(path, bank, args.uscc, args.consent, result.cursors)
                    cursors = result.cursors
                _report(result, reported, every_time=args.once)
                refused = [p for p in result.problems if not p.transient]
                if refused and not result.answered and len(refused) == len(result.problems):
                    raise CommandError(f"alerts refused by every node: {refused[0].message}")
                if result.more:
                    continue
                if args.once:
                    break
                await _pause(stop, args.interval)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
    if stop.is_set():
        print(f"stopped; cursors kept in {path}", file=sys.stderr)


async def _poll_unless_stopped(client: AlertClient, args, cursors: dict[str, int], stop: asyncio.Event) -> PollResult | None:
    poll = asyncio.ensure_future(client.poll(args.uscc, args.consent, cursors))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not poll.done():  # Ctrl-C during a poll: nothing was printed, so nothing is lost
        poll.cancel()
        try:
            await poll
        except (asyncio.CancelledError, ClientError):
            pass
        return None
    try:
        return poll.result()
    except ClientError as e:
        if args.once or e.failure.code not in TRANSIENT:
            raise
        print(f"xinyi: {e.failure.code}: {e.failure.message}; trying again in {args.interval:g} s", file=sys.stderr)
        return None


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


def _report(result: PollResult, reported: set[str], *, every_time: bool) -> None:
    """Node problems to stderr: each time for --once, else when a node's problem changes."""
    now = {f"{p.node}:{p.code}:{p.reason}" for p in result.problems}
    for p in result.problems:
        key = f"{p.node}:{p.code}:{p.reason}"
        if every_time or key not in reported:
            print(f"xinyi: {p}", file=sys.stderr)
    for node in result.answered:
        if any(k.startswith(f"{node}:") for k in reported) and not every_time:
            print(f"xinyi: node {node}: answering again", file=sys.stderr)
    reported.clear()
    reported.update(now)


def add_parser(subparsers: Any) -> None:
    """Add `xinyi alerts subscribe|watch` to the top-level subcommands."""
    alerts = subparsers.add_parser("alerts", help="banks: early-warning alerts about enterprises they monitor")
    alerts = alerts.add_subparsers(dest="alerts_cmd", required=True)

    def common(a) -> None:
        a.add_argument("--identity", required=True, help="bank identity directory, e.g. certs/bank-USCC")
        add_registry_argument(a)
        a.add_argument("--uscc", required=True, help="the enterprise's 18-character USCC")
        a.add_argument("--consent", required=True,
                       help="the enterprise's periodic loan_monitoring consent to this bank (its id)")

    a = alerts.add_parser("subscribe", help="subscribe to an enterprise's alerts at every node that holds its data")
    common(a)
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_subscribe)

    a = alerts.add_parser("watch", help="poll for new alerts and print each one, verified, as it arrives")
    common(a)
    a.add_argument("--once", action="store_true", help="fetch what is new (all of it) and exit")
    a.add_argument("--interval", type=float, default=5.0, help="seconds between polls (default 5)")
    a.add_argument("--state", help="file keeping the cursor per node (default "
                                   "~/.local/state/xinyi/alerts/BANK-USCC-CONSENT.json)")
    a.add_argument("--json", action="store_true", help="print each alert as one JSON line")
    a.set_defaults(func=cmd_watch)
