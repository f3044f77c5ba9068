"""A full disk under a node's SQLite store, under a steady query stream.

The node's database lives on a small filesystem of its own (conftest.py `small_disk`, a tmpfs;
skipped where mount is not permitted), which the test fills to the last byte. Required (items 5
and 6): the node refuses with UNAVAILABLE and a generic message, the bank sees it `unavailable`
(never `denied`), its log is not corrupted (it verifies, and a restart on the same file rebuilds
the same log), a once-consent tried while the disk was full is still usable, and when space
returns the node answers again without a restart; then the post-fault invariants hold.
"""

from __future__ import annotations

import time

import pytest
from invariants import Ledger, QueryStream, ask_node, assert_clean, check_after_fault
from procnet import started

pytestmark = [pytest.mark.adversarial, pytest.mark.slow, pytest.mark.timeout(150)]

VICTIM, OTHER = "510100", "510000"
FAILED = ("unavailable", "timeout", "denied", "invalid")


async def test_full_disk_under_a_node(small_disk, tmp_path) -> None:
    urls = {VICTIM: f"sqlite:///{small_disk.path / 'node510100.db'}",
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
            filled = small_disk.fill()
            full = time.monotonic()
            # SQLite may still find room in pages it already holds: the stream goes on until it does not.
            await stream.until(f"node {VICTIM} fails on the full disk while {OTHER} answers",
                               lambda lg: lg.count(VICTIM, FAILED, full) >= 5 and lg.count(OTHER, "ok", full) >= 5, 30)
            seen = ledger.seen(VICTIM, full)
            assert seen["denied"] == seen["invalid"] == 0, (
                f"a node on a full disk was reported to the bank as {dict(seen)}, not `unavailable`")

            for consent in (many, once):
                view, failure = await ask_node(bank, ledger, VICTIM, endpoint, consent)
                assert failure is not None, f"node {VICTIM} answered with its disk full (unaudited?): {view}"
                assert failure.code == "UNAVAILABLE", f"disk full: {failure.code} {failure.message!r}"
                assert_clean(failure, f"node {VICTIM} with its disk full")

            small_disk.free()
            freed = time.monotonic()
            took = await stream.until(f"node {VICTIM} answers again once space returns",
                                      lambda lg: lg.count(VICTIM, "ok", freed) >= 3, 20)
            print(f"\n[full disk] filled {filled} bytes; node answers {took:.2f} s after space returned; "
                  f"{dict(ledger.statuses)}")

        view, failure = await ask_node(bank, ledger, VICTIM, endpoint, once)
        assert failure is None and view.verified and view.status == "ok", (
            f"a once-consent tried while the node's disk was full cannot be used afterwards: {failure or view}")
        await check_after_fault(net, ledger)

        # The log on the disk that was full is whole: a restart on the same file rebuilds it, and
        # it still verifies and extends what the auditor verified before the restart.
        net.kill(VICTIM)
        net.start_again(VICTIM)
        await net.wait_registered(VICTIM)
        await check_after_fault(net, ledger)
