"""`xinyi node serve --workers 2` as real processes: two workers on one port, one audit log.

What must hold however the kernel spreads connections among the workers:
- both workers serve (each holds established connections on the shared port);
- a nonce is taken once for the whole node: one signed query sent over many connections is
  answered once and refused as a replay everywhere else;
- a consent's fetch limit is counted once for the whole node, and only for answered queries;
- a revocation stops every worker at once (no worker answers from a stale copy);
- a killed worker is started again and the node keeps answering;
- the node's audit log is one ordered sequence that verifies, holding exactly the answers the
  bank received and the refusals it was given;
- SIGTERM stops the workers and the sequencer, and removes the sequencer's socket;
- workers whose sequencer was SIGKILLed stop (they could answer nothing without the audit log).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from harness import BANK, CHENGDU_FIRM, LOAD_TEST_CONSENT, load_test_policies
from processes import NODE, XINYI, Proc, free_port, network_identities, seed_node, wait_registered

from xinyi.audit.checkpoint import parse_note
from xinyi.audit.verify import verify_log
from xinyi.cli.audit import fetch_log, log_key
from xinyi.client import AuditClient, BankClient, EnterpriseClient, OperatorClient
from xinyi.clock import now_ms
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, RootCA
from xinyi.query import build_query
from xinyi.rpc.channels import secure_channel
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import audit_pb2, node_pb2_grpc, query_pb2

# Real processes started and stopped again and again: run by `make test-slow` and CI, not `make test`.
pytestmark = pytest.mark.slow

CATEGORIES = ["registration", "tax"]
PURPOSE = "credit_assessment"
CONNECTIONS = 16  # fresh connections: all on one worker by chance has odds 2 ** -15


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return sorted(kids)


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie's cmdline is empty)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def established_on(pid: int, port: int) -> int:
    """Established TCP connections on local `port` whose socket `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01" and cols[9] in inodes:
                count += 1
    return count


async def ask_on_fresh_channel(bank: Identity, node_addr: str, envelope) -> str:
    """One query on a new connection; "ok" or the refusal's reason."""
    channel = secure_channel(bank, node_addr, Principal(Role.NODE, NODE))
    try:
        await node_pb2_grpc.NodeServiceStub(channel).Query(query_pb2.QueryRequest(query=envelope), timeout=10)
        return "ok"
    except grpc.aio.AioRpcError as e:
        return RpcFailure.from_error(e).reason or e.code().name
    finally:
        await channel.close()


def a_query(bank: Identity, consent_id: str):
    envelope, _ = build_query(bank, uscc=CHENGDU_FIRM, categories=CATEGORIES, purpose=PURPOSE, consent_id=consent_id,
                              now_ms=now_ms())
    return envelope


def unsealable_query(bank: Identity, consent_id: str):
    """A signed query whose one-time answer key is the X25519 point of order 1."""
    body = query_pb2.QueryBody(uscc=CHENGDU_FIRM, categories=CATEGORIES, purpose=PURPOSE, consent_id=consent_id,
                               nonce=os.urandom(16), issued_at_ms=now_ms(), answer_key=bytes(32))
    return sign(bank, body)


@pytest.mark.timeout(180)
async def test_two_workers_share_a_port_and_keep_one_audit_log(databases, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    ids, dirs = network_identities(tmp_path / "certs")
    node_db, registry_db = databases.new(f"node{NODE}"), databases.new("registry")
    seed_node(node_db)

    registry, port = f"127.0.0.1:{free_port()}", free_port()
    node_addr = f"127.0.0.1:{port}"
    policies = str(load_test_policies(tmp_path))
    reg = Proc("registry", ["registry", "serve", "--identity", str(dirs["registry"]), "--listen", registry,
                            "--db", registry_db, "--policies", policies], logs)
    node = Proc("node", ["node", "serve", "--identity", str(dirs["node"]), "--listen", node_addr, "--registry", registry,
                         "--db", node_db, "--policies", policies, "--workers", "2"], logs)
    bank = ids["bank"]
    expected: Counter[str] = Counter()  # what the log must hold: "allow" and each refusal reason
    try:
        reg.start()
        node.start()
        await wait_registered(bank, ids["auditor"], registry, node_addr, [reg, node])
        workers = children_of(node.proc.pid)
        assert len(workers) == 2, f"expected 2 worker processes under the supervisor, found {workers}"
        argv = Path(f"/proc/{workers[0]}/cmdline").read_bytes().split(b"\0")
        socket = Path(argv[argv.index(b"--sequencer") + 1].decode())
        assert socket.is_socket() and socket.parent.stat().st_mode & 0o777 == 0o700

        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            many = await enterprise.grant(BANK, PURPOSE, CATEGORIES, 30, **LOAD_TEST_CONSENT)
            three = await enterprise.grant(BANK, PURPOSE, CATEGORIES, 30, fetch_type="periodic", max_fetches=3,
                                           fetch_period="day")

        # 1. Both workers serve: banks on fresh connections are spread over them.
        clients = [BankClient(bank, registry) for _ in range(CONNECTIONS)]
        try:
            answers = await asyncio.gather(*(c.query_node(node_addr, NODE, CHENGDU_FIRM, CATEGORIES, PURPOSE,
                                                          many.consent_id) for c in clients for _ in range(3)))
            assert all(a.verified and a.status == "ok" for a in answers), answers
            expected["allow"] += len(answers)
            held = {pid: established_on(pid, port) for pid in workers}
            assert sum(held.values()) >= CONNECTIONS and all(held.values()), f"connections per worker: {held}"
        finally:
            for c in clients:
                await c.close()

        # 2. One nonce, many connections: answered once for the whole node.
        envelope = a_query(bank, many.consent_id)
        outcomes = Counter(await asyncio.gather(*(ask_on_fresh_channel(bank, node_addr, envelope) for _ in range(8))))
        assert outcomes == Counter({"ok": 1, "REPLAYED_NONCE": 7}), outcomes
        expected += outcomes

        # 3. Three fetches a day, asked eight times at once on eight connections.
        outcomes = Counter(await asyncio.gather(*(ask_on_fresh_channel(bank, node_addr, a_query(bank, three.consent_id))
                                                  for _ in range(8))))
        assert outcomes == Counter({"ok": 3, "FETCH_LIMIT": 5}), outcomes
        expected += outcomes

        # 3b. Queries that cannot be answered (their one-time key cannot be sealed to) spend nothing,
        # whichever worker refused them: after four of them, a limit of 2 still answers exactly 2.
        # (One after the other: while one is being refused it holds its fetch, as it must.)
        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            two = await enterprise.grant(BANK, PURPOSE, CATEGORIES, 30, fetch_type="periodic", max_fetches=2,
                                         fetch_period="day")
        outcomes = Counter([await ask_on_fresh_channel(bank, node_addr, unsealable_query(bank, two.consent_id))
                            for _ in range(4)])
        assert outcomes == Counter({"INVALID_FIELD": 4}), outcomes
        expected += outcomes
        outcomes = Counter(await asyncio.gather(*(ask_on_fresh_channel(bank, node_addr, a_query(bank, two.consent_id))
                                                  for _ in range(8))))
        assert outcomes == Counter({"ok": 2, "FETCH_LIMIT": 6}), outcomes
        expected += outcomes

        # 4. A revocation reaches one worker; none answers under the consent after it.
        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            revoked = await enterprise.revoke(many.consent_id)
        assert NODE in revoked.delivered_to, revoked
        outcomes = Counter(await asyncio.gather(*(ask_on_fresh_channel(bank, node_addr, a_query(bank, many.consent_id))
                                                  for _ in range(CONNECTIONS))))
        assert outcomes == Counter({"CONSENT_REVOKED": CONNECTIONS}), outcomes
        expected += outcomes

        # 5. A worker killed with SIGKILL is started again; the node goes on answering.
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = children_of(node.proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"the killed worker was not replaced: workers now {children_of(node.proc.pid)}")
        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            fresh = await enterprise.grant(BANK, PURPOSE, CATEGORIES, 30, **LOAD_TEST_CONSENT)
        outcomes: Counter[str] = Counter()
        while time.monotonic() < deadline and outcomes.get("ok", 0) < CONNECTIONS:
            # A connection the kernel gives the new worker before it listens is refused by TCP, not by
            # the node: no query reached a node, so none is in the log.
            outcome = await ask_on_fresh_channel(bank, node_addr, a_query(bank, fresh.consent_id))
            outcomes[outcome] += 1
        assert outcomes["ok"] == CONNECTIONS, outcomes
        assert set(outcomes) <= {"ok", "UNAVAILABLE"}, outcomes
        expected["allow"] += CONNECTIONS

        # 6. One log: ordered, verifiable, holding exactly what the bank was told.
        async with AuditClient(ids["auditor"], node_addr, Principal(Role.NODE, NODE)) as audit:
            response, directory, entries = await asyncio.wait_for(fetch_log(audit), 20)
        origin = parse_note(response.checkpoint).checkpoint.origin
        report, _ = verify_log(response.checkpoint, origin, log_key(directory, origin), entries)
        assert report.ok, report.problems
        assert [i for i, _ in entries] == list(range(len(entries)))
        logged: Counter[str] = Counter()
        for _, leaf_input in entries:
            r = audit_pb2.AuditRecord.FromString(leaf_input)
            if r.action == "query":
                logged["allow" if r.decision == audit_pb2.DECISION_ALLOW else r.reason.split(":", 1)[0]] += 1
        expected["allow"] += expected.pop("ok")
        assert logged == expected, f"log holds {dict(logged)}, the bank was told {dict(expected)}"

        # 6b. The operator's report, from whichever worker answers: the same queries, and the
        # sequencer's registration and consent sync as the worker follows them.
        async with OperatorClient(ids["node"], node_addr) as operator:
            quality = await operator.report()
        answered = sum(day.answered for day in quality.queries)
        refused = sum(day.refused for day in quality.queries)
        assert (answered, refused) == (logged["allow"], sum(logged.values()) - logged["allow"]), quality.queries
        s = quality.sync
        assert (s.live, s.registry_configured, s.registered, s.consents_fresh) == (True, True, True, True), s
        assert quality.node_id == NODE and quality.records > 0 and s.directory_version > 0, quality

        # 7. SIGTERM: workers first, then the sequencer; its socket goes with it.
        node.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(node.proc.wait, 30) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers[1:])
        assert not socket.parent.exists()

        # 8. Started again on the same store; then the supervisor is SIGKILLed: its workers, with
        # no audit log to write to, stop rather than refuse every query, and free the port.
        node.start()
        await wait_registered(bank, ids["auditor"], registry, node_addr, [reg, node])
        orphans = children_of(node.proc.pid)
        assert len(orphans) == 2
        node.kill()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(running(pid) for pid in orphans):
            await asyncio.sleep(0.2)
        alive = [pid for pid in orphans if running(pid)]
        assert not alive, f"workers {alive} kept running without their sequencer"
    except BaseException:
        for p in (reg, node):
            print(p.dump_logs())
        raise
    finally:
        for p in (reg, node):
            p.kill()


async def test_workers_need_a_fixed_port_and_a_supervisor(tmp_path: Path) -> None:
    root = RootCA.create()
    root.save(tmp_path)
    identity = root.issue(Principal(Role.NODE, NODE)).save(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        *XINYI, "node", "serve", "--identity", str(identity), "--listen", "127.0.0.1:0",
        "--registry", "127.0.0.1:1", "--db", f"sqlite:///{tmp_path}/n.db", "--workers", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"--workers" in err and b"fixed port" in err
    assert b"Traceback" not in err
    # The workers' own flag is not for operators: without a supervisor it is refused.
    proc = await asyncio.create_subprocess_exec(
        *XINYI, "node", "serve", "--identity", str(identity), "--listen", "127.0.0.1:0",
        "--registry", "127.0.0.1:1", "--db", f"sqlite:///{tmp_path}/n.db", "--sequencer", str(tmp_path / "s.sock"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"--sequencer" in err and b"Traceback" not in err
    # A worker whose supervisor is already gone does not start (nobody would keep its audit log).
    proc = await asyncio.create_subprocess_exec(
        *XINYI, "node", "serve", "--identity", str(identity), "--listen", "127.0.0.1:0",
        "--registry", "127.0.0.1:1", "--db", f"sqlite:///{tmp_path}/n.db", "--sequencer", str(tmp_path / "s.sock"),
        env=dict(os.environ, XINYI_WORKER_OF="1"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and b"supervising process 1 is gone" in err and b"Traceback" not in err
