"""Crash test with real processes: SIGKILL a node under query load, restart it, audit it.

The node promises that an answer leaves it only after its audit entry is committed
(xinyi/audit/log.py, node/query.py). So after `kill -9` in the middle of a query load, every
answer the bank received and verified must be found in the restarted node's audit log, and the
whole log must still verify against a checkpoint the restarted node signs.

The registry and the node run as separate processes started with the real CLI
(`python -m xinyi.cli registry serve` / `node serve`), exactly as scripts/demo.py does; the
bank, the enterprise and the auditor are clients in the test process.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from harness import BANK, CHENGDU_FIRM, LOAD_TEST_CONSENT, SEED, load_test_policies
from processes import NODE, Proc, free_port, network_identities, wait_registered

from node.store import NodeStore
from xinyi.audit.checkpoint import parse_note
from xinyi.audit.verify import verify_log
from xinyi.cli.audit import fetch_log, log_key
from xinyi.client import AuditClient, BankClient, ClientError, EnterpriseClient
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity
from xinyi.v1 import audit_pb2

# Real processes started and stopped again and again: run by `make test-slow` and CI, not `make test`.
pytestmark = pytest.mark.slow

CATEGORIES = ["registration", "tax", "judicial"]
PURPOSE = "credit_assessment"

WORKERS = 8
LOAD_SECONDS = 2.0     # the load stops after this long ...
MAX_QUERIES = 4000     # ... or after this many queries, whichever comes first
KILL_AFTER = 0.7       # SIGKILL the node this long after the load started
QUERY_TIMEOUT = 5.0    # one query, bank side (the registry gives each node 3 s)


async def query_load(bank_identity: Identity, registry: str, consent_id: str, node: Proc):
    """WORKERS concurrent banks' worth of queries; the node is SIGKILLed KILL_AFTER into it.

    Returns (received: request_hash -> seconds since start, failed count, killed_at seconds).
    """
    received: dict[str, float] = {}
    failed = 0
    issued = 0
    start = time.monotonic()
    stop = asyncio.Event()

    async def worker() -> None:
        nonlocal failed, issued
        async with BankClient(bank_identity, registry) as bank:
            while not stop.is_set() and issued < MAX_QUERIES and time.monotonic() - start < LOAD_SECONDS:
                issued += 1
                try:
                    result = await asyncio.wait_for(bank.query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent_id), QUERY_TIMEOUT)
                except (ClientError, asyncio.TimeoutError):
                    failed += 1
                    continue
                views = [v for v in result.nodes if v.node == NODE]
                if views and views[0].verified and views[0].status in ("ok", "no_data"):
                    received[result.request_hash] = time.monotonic() - start
                else:
                    failed += 1  # node unavailable (killed) or timed out: nothing was received

    async def killer() -> float:
        await asyncio.sleep(KILL_AFTER)
        node.proc.kill()  # SIGKILL: no graceful stop, no final checkpoint
        return time.monotonic() - start

    tasks = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    kill_task = asyncio.create_task(killer())
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), LOAD_SECONDS + QUERY_TIMEOUT + 3)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        killed_at = await kill_task
    return received, failed, killed_at


@pytest.mark.timeout(90)
async def test_answers_received_before_sigkill_are_in_the_restarted_nodes_log(databases, tmp_path: Path) -> None:
    t0 = time.monotonic()
    certs = tmp_path / "certs"
    logs = tmp_path / "logs"
    logs.mkdir()

    # 1. PKI, a seeded node database, the registry and the node as processes.
    ids, dirs = network_identities(certs)

    node_db = databases.new(f"node{NODE}")
    registry_db = databases.new("registry")
    store = NodeStore(node_db)
    try:
        store.create_schema()
        records = [r for r in SEED["510100"] + SEED["510000"] if r.uscc == CHENGDU_FIRM]
        assert store.add_records(records, now_ms()) == len(records)
    finally:
        store.close()

    registry = f"127.0.0.1:{free_port()}"
    node_addr = f"127.0.0.1:{free_port()}"
    policies = str(load_test_policies(tmp_path))  # many fetches under one consent
    reg = Proc("registry", ["registry", "serve", "--identity", str(dirs["registry"]), "--listen", registry,
                            "--db", registry_db, "--policies", policies], logs)
    node = Proc(f"node-{NODE}", ["node", "serve", "--identity", str(dirs["node"]), "--listen", node_addr,
                                 "--registry", registry, "--db", node_db, "--policies", policies], logs)
    procs = [reg, node]
    timings: dict[str, float] = {}
    try:
        reg.start()
        node.start()
        await wait_registered(ids["bank"], ids["auditor"], registry, node_addr, procs)
        timings["started"] = time.monotonic() - t0

        # 2. A consent, then the query load; the node is SIGKILLed in the middle of it.
        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            consent = await asyncio.wait_for(enterprise.grant(BANK, PURPOSE, CATEGORIES, 30, **LOAD_TEST_CONSENT), 10)
        assert NODE in consent.delivered_to, f"the consent was not delivered to node {NODE}: {consent}"

        received, failed, killed_at = await query_load(ids["bank"], registry, consent.consent_id, node)
        timings["load"] = time.monotonic() - t0
        node.kill()  # reap it
        assert node.proc.returncode == -9, f"node was not SIGKILLed (status {node.proc.returncode})"
        reg.check_alive()
        before = sum(1 for at in received.values() if at < killed_at)
        after = len(received) - before
        print(f"\n[{databases.backend}] answers received: {len(received)} ({before} before the kill at "
              f"{killed_at:.2f} s, {after} after it); failed or unavailable: {failed}")
        # Otherwise the test could not fail: there must be answers whose log entries to look for.
        assert before > 0, "no answer was received before the kill"
        assert failed > 0, "the kill was not observed by any query"

        # 3. The same command, the same database: the node comes back and registers again.
        node.start()
        await wait_registered(ids["bank"], ids["auditor"], registry, node_addr, procs)
        timings["restarted"] = time.monotonic() - t0

        # 4. The auditor reads the restarted node's whole log and verifies it.
        async with AuditClient(ids["auditor"], node_addr, Principal(Role.NODE, NODE)) as audit:
            response, directory, entries = await asyncio.wait_for(fetch_log(audit), 20)
        origin = parse_note(response.checkpoint).checkpoint.origin
        assert origin == f"xinyi/{NODE}"
        report, _ = verify_log(response.checkpoint, origin, log_key(directory, origin), entries)
        assert report.ok, report.problems
        assert report.size == len(entries) > 0

        logged = set()
        for _, leaf_input in entries:
            r = audit_pb2.AuditRecord.FromString(leaf_input)
            if r.action == "query" and r.decision == audit_pb2.DECISION_ALLOW:
                logged.add(r.request_hash)
        missing = sorted(set(received) - logged)
        assert not missing, (f"{len(missing)} of {len(received)} answers the bank received and verified are not in "
                             f"node {NODE}'s audit log after the crash: {missing[:5]}")
        timings["audited"] = time.monotonic() - t0
        print(f"[{databases.backend}] log size {report.size}, {len(logged)} allowed queries logged; timings (s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    except BaseException:
        for p in procs:
            print(p.dump_logs())
        raise
    finally:
        for p in procs:
            p.kill()
