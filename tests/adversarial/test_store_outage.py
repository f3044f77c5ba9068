"""A PostgreSQL outage under a running network: the test starts its own PostgreSQL server
(conftest.py `private_postgres`), puts a node's store (then the registry's) on it, and stops it
as a crash would (`pg_ctl -m immediate`) while a bank queries without pause; then starts it again.

Required (item 6, item 5): while the store is down the node refuses with UNAVAILABLE and a short
generic message (no database host or port, no class names), the registry reports the node to the
bank as `unavailable` - never `denied` - and the other node keeps answering; a once-consent tried
during the outage is still there to be used afterwards; when the store is back, the node answers
again without a restart, and the post-fault invariants hold.
"""

from __future__ import annotations

import time

import pytest
from harness import BANK
from invariants import Ledger, QueryStream, ask_node, assert_clean, check_after_fault
from procnet import PURPOSE, started

from xinyi.client import ClientError

pytestmark = [pytest.mark.adversarial, pytest.mark.slow, pytest.mark.timeout(150)]

VICTIM, OTHER = "510100", "510000"
RECOVER_WITHIN = 20.0
FAILED = ("unavailable", "timeout", "denied", "invalid")


async def test_node_store_outage(private_postgres, tmp_path) -> None:
    pg = private_postgres
    urls = {VICTIM: pg.create_database("node510100"),
            "registry": f"sqlite:///{tmp_path / 'registry.db'}", OTHER: f"sqlite:///{tmp_path / 'node510000.db'}"}
    net = await started(tmp_path, db_urls=urls)
    ledger = Ledger()
    bank = net.bank()
    endpoint = net.node_addrs[VICTIM]
    async with net.watched():
        many = await net.grant(deliver_to=net.node_ids)
        once = await net.grant(once=True, deliver_to=net.node_ids)
        async with QueryStream(bank, ledger, many) as stream:
            await stream.until("both nodes answer", lambda lg: all(len(lg.answered[n]) >= 10 for n in net.node_ids), 20)
            pg.stop("immediate")
            down = time.monotonic()
            await stream.until(f"the bank sees node {VICTIM} fail while {OTHER} answers",
                               lambda lg: lg.count(VICTIM, FAILED, down) >= 5 and lg.count(OTHER, "ok", down) >= 5, 20)
            seen = ledger.seen(VICTIM, down)
            assert seen["denied"] == seen["invalid"] == 0, (
                f"a node whose database is down was reported to the bank as {dict(seen)}, not `unavailable`")

            # The node itself, asked straight: UNAVAILABLE, generic, for both consents.
            for consent in (many, once):
                view, failure = await ask_node(bank, ledger, VICTIM, endpoint, consent)
                assert failure is not None, f"node {VICTIM} answered with its database down: {view}"
                assert failure.code == "UNAVAILABLE", f"database down: {failure.code} {failure.message!r}"
                assert_clean(failure, f"node {VICTIM} with its database down")

            pg.start()
            up = time.monotonic()
            took = await stream.until(f"node {VICTIM} answers again once its database is back",
                                      lambda lg: lg.count(VICTIM, "ok", up) >= 3, RECOVER_WITHIN)
            print(f"\n[private postgres] node answers {took:.2f} s after its database came back; {dict(ledger.statuses)}")

        # The once-consent tried during the outage was not spent by it.
        view, failure = await ask_node(bank, ledger, VICTIM, endpoint, once)
        assert failure is None and view.verified and view.status == "ok", (
            f"a once-consent tried while the node's database was down cannot be used afterwards: {failure or view}")
        await check_after_fault(net, ledger)


async def test_registry_store_outage(private_postgres, tmp_path) -> None:
    pg = private_postgres
    urls = {"registry": pg.create_database("registry"),
            VICTIM: f"sqlite:///{tmp_path / 'node510100.db'}", OTHER: f"sqlite:///{tmp_path / 'node510000.db'}"}
    net = await started(tmp_path, db_urls=urls)
    ledger = Ledger()
    bank = net.bank()
    async with net.watched():
        many = await net.grant(deliver_to=net.node_ids)
        async with QueryStream(bank, ledger, many) as stream:
            await stream.until("both nodes answer", lambda lg: all(len(lg.answered[n]) >= 10 for n in net.node_ids), 20)
            pg.stop("immediate")
            down = time.monotonic()
            await stream.until("the bank's queries fail while the registry's database is down",
                               lambda lg: lg.count("call", ("UNAVAILABLE", "UNKNOWN", "INTERNAL"), down) >= 5, 20)
            net.registry.check_alive()
            # The registry is up, so every failure was written by it: UNAVAILABLE, generic.
            codes = {code: ledger.count("call", code, down) for code in ("UNAVAILABLE", "UNKNOWN", "INTERNAL")}
            assert codes["UNKNOWN"] == codes["INTERNAL"] == 0, f"registry database down: {codes}"
            # Everything the bank was told came from the running registry: nothing internal in any of it.
            ledger.assert_no_leaks(transport_too=True)
            with pytest.raises(ClientError) as refused:
                await net.enterprise().grant(BANK, PURPOSE, ["tax"], 30)
            failure = refused.value.failure
            assert failure.code == "UNAVAILABLE", f"a grant with the registry's database down: {failure}"
            assert_clean(failure, "GrantConsent with the registry's database down")
            pg.start()
            up = time.monotonic()
            took = await stream.until("the registry routes again once its database is back",
                                      lambda lg: all(lg.count(n, "ok", up) >= 3 for n in net.node_ids), RECOVER_WITHIN)
            print(f"\n[private postgres] routing again {took:.2f} s after the registry's database came back; "
                  f"{dict(ledger.statuses)}")
        await check_after_fault(net, ledger)
