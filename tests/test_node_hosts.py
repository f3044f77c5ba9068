"""A node across hosts: two independent `xinyi node serve` processes (as on two hosts: separate
ports, no --workers, no sequencer) with the same identity on one PostgreSQL database. Both
advertise one address (the load balancer's, here the first one's) and both answer. The database
gives them the guarantees the sequencer gives workers on one host:
- a once-consent asked through both at the same instant is answered once and refused once;
- a nonce is taken once: the same signed query sent to the other process is refused;
- a fetch limit is counted once across both;
- one audit log, which verifies whichever process serves it, and holds an entry for every query
  answered and every refusal.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from harness import BANK, load_test_policies
from processes import NODE, Proc, free_port, network_identities, seed_node, wait_registered
from test_workers import CATEGORIES, PURPOSE, a_query, ask_on_fresh_channel

from xinyi.audit.checkpoint import parse_note
from xinyi.audit.verify import verify_log
from xinyi.cli.audit import fetch_log, log_key
from xinyi.client import AuditClient, EnterpriseClient
from xinyi.crypto.identity import Principal, Role
from xinyi.v1 import audit_pb2

ROUNDS = 4  # once-consents raced through both processes


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_two_processes_of_one_node_on_one_database(databases, tmp_path: Path) -> None:
    if databases.backend != "postgresql":
        pytest.skip("a node across hosts shares a PostgreSQL database; on SQLite it runs --workers on one host")
    logs = tmp_path / "logs"
    logs.mkdir()
    ids, dirs = network_identities(tmp_path / "certs")
    node_db, registry_db = databases.new(f"node{NODE}"), databases.new("registry")
    seed_node(node_db)

    registry, addr_a, addr_b = (f"127.0.0.1:{free_port()}" for _ in range(3))
    policies = str(load_test_policies(tmp_path))
    reg = Proc("registry", ["registry", "serve", "--identity", str(dirs["registry"]), "--listen", registry,
                            "--db", registry_db, "--policies", policies], logs)

    def node(name: str, listen: str) -> Proc:
        return Proc(name, ["node", "serve", "--identity", str(dirs["node"]), "--listen", listen, "--advertise", addr_a,
                           "--registry", registry, "--db", node_db, "--policies", policies], logs)

    a, b = node("node-a", addr_a), node("node-b", addr_b)
    bank = ids["bank"]
    expected: Counter[str] = Counter()  # what the log must hold: "ok" and each refusal reason
    try:
        reg.start()
        a.start()
        b.start()
        await wait_registered(bank, ids["auditor"], registry, addr_a, [reg, a, b])
        await b.wait_for_log("registered with", timeout=15)  # B too has confirmed consents with the registry
        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            onces = [await enterprise.grant(BANK, PURPOSE, CATEGORIES, 30) for _ in range(ROUNDS)]
            three = await enterprise.grant(BANK, PURPOSE, CATEGORIES, 30, fetch_type="periodic", max_fetches=3,
                                           fetch_period="day")
        # The registry delivered them to the advertised process; both read them from the database.

        # 1. A once-consent asked through both processes at the same instant: one answer, one refusal.
        for consent in onces:
            outcomes = Counter(await asyncio.gather(*(ask_on_fresh_channel(bank, addr, a_query(bank, consent.consent_id))
                                                      for addr in (addr_a, addr_b))))
            assert outcomes == Counter({"ok": 1, "CONSENT_SPENT": 1}), outcomes
            expected += outcomes

        # 2. A fetch limit of three, asked eight times across both: three answers.
        outcomes = Counter(await asyncio.gather(*(ask_on_fresh_channel(bank, (addr_a, addr_b)[i % 2],
                                                                       a_query(bank, three.consent_id))
                                                  for i in range(8))))
        assert outcomes == Counter({"ok": 3, "FETCH_LIMIT": 5}), outcomes
        expected += outcomes

        # 3. A nonce is taken once: replayed to the other process, and sent to both at once.
        async with EnterpriseClient(ids["enterprise"], registry) as enterprise:
            many = await enterprise.grant(BANK, PURPOSE, CATEGORIES, 30, fetch_type="periodic", max_fetches=100,
                                          fetch_period="day")
        envelope = a_query(bank, many.consent_id)
        assert await ask_on_fresh_channel(bank, addr_a, envelope) == "ok"
        assert await ask_on_fresh_channel(bank, addr_b, envelope) == "REPLAYED_NONCE"
        expected += Counter({"ok": 1, "REPLAYED_NONCE": 1})
        for _ in range(3):
            envelope = a_query(bank, many.consent_id)
            outcomes = Counter(await asyncio.gather(*(ask_on_fresh_channel(bank, addr, envelope)
                                                      for addr in (addr_a, addr_b, addr_a, addr_b))))
            assert outcomes == Counter({"ok": 1, "REPLAYED_NONCE": 3}), outcomes
            expected += outcomes

        # 4. One log, whichever process serves it: it verifies and holds every decision once.
        served = []
        for addr in (addr_b, addr_a):
            async with AuditClient(ids["auditor"], addr, Principal(Role.NODE, NODE)) as audit:
                response, directory, entries = await asyncio.wait_for(fetch_log(audit), 20)
            origin = parse_note(response.checkpoint).checkpoint.origin
            report, _ = verify_log(response.checkpoint, origin, log_key(directory, origin), entries)
            assert report.ok, report.problems
            served.append(entries)
        assert served[0] == served[1][:len(served[0])], "the two processes serve different histories"
        logged: Counter[str] = Counter()
        for _, leaf_input in served[1]:
            r = audit_pb2.AuditRecord.FromString(leaf_input)
            if r.action == "query":
                logged["ok" if r.decision == audit_pb2.DECISION_ALLOW else r.reason.split(":", 1)[0]] += 1
        assert logged == expected, f"log holds {dict(logged)}, the bank was told {dict(expected)}"
        assert not (a.log() + b.log()).count("Traceback"), "a process logged a stack trace"
    except BaseException:
        for p in (reg, a, b):
            print(p.dump_logs())
        raise
    finally:
        for p in (reg, a, b):
            p.kill()

