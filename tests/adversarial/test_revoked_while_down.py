"""Revocation while a node is down (item 1).

The node answered under a consent, was killed, and while it was down the enterprise revoked the
consent, after a long history of other consent changes. From the moment the node is back, it
must answer nothing under the revoked consent - not straight to the bank, not through the
registry - and, once it has caught up, refuse it as revoked. "Caught up" means with every change
up to the registry's present position, not with the first batch it pulled.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from harness import BANK, SHANGHAI_FIRM
from invariants import Ledger, ask, ask_node, check_after_fault, verify_logs
from procnet import PURPOSE, started

pytestmark = [pytest.mark.adversarial, pytest.mark.slow, pytest.mark.timeout(180)]

NODE = "510100"
# Consent changes before the victim's grant and while the node is down, so that a node reading the
# history from the start has more to read than one that remembers where it was. Both fit in one of
# the registry's pages (registry.consents.SYNC_PAGE_CONSENTS, 2000 consents): a node that confirmed
# its consents after its first page, not at the registry's head, is caught by
# tests/test_consent_catch_up.py, which makes the pages small.
HISTORY = 1050
CONCURRENCY = 16
REFUSED_AS_REVOKED_WITHIN = 20.0


async def long_history(net, count: int) -> None:
    """`count` consent changes: real signed grants through the registry, CONCURRENCY at a time, by a
    Shanghai firm (no node of this network routes it, so nothing is delivered: only the registry's
    history grows, as it does with every enterprise's grants in a real network)."""
    enterprise = net.enterprise(SHANGHAI_FIRM)
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            await asyncio.wait_for(enterprise.grant(BANK, PURPOSE, ["tax"], 30), 20)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def test_node_down_during_revocation_answers_nothing_under_it_after_restart(databases, tmp_path) -> None:
    net = await started(tmp_path, databases, nodes=(NODE,))
    ledger = Ledger()
    bank = net.bank()
    endpoint = net.node_addrs[NODE]
    async with net.watched():
        t0 = time.monotonic()
        await long_history(net, HISTORY)
        consent = await net.grant(deliver_to=[NODE])
        view, failure = await ask_node(bank, ledger, NODE, endpoint, consent)
        assert failure is None and view.verified and view.status == "ok", (view, failure)
        await verify_logs(net)  # what the auditor saw signed before the crash: the log must extend it after

        net.kill(NODE)
        await long_history(net, HISTORY)
        revoked = await asyncio.wait_for(net.enterprise().revoke(consent), 20)
        assert NODE not in revoked.delivered_to, "the revocation reached a node that was killed"
        print(f"\n[{databases.backend}] 2 x {HISTORY} consent changes and the revocation in {time.monotonic() - t0:.1f} s")

        net.start_again(NODE)
        # From the first moment the node listens: straight to it and through the registry.
        reasons: set[str] = set()
        start = time.monotonic()
        revoked_seen_at = None
        while revoked_seen_at is None:  # until the node says "revoked": it has caught up with the change
            net.nodes[NODE].check_alive()
            if time.monotonic() - start > REFUSED_AS_REVOKED_WITHIN:
                raise AssertionError(f"the restarted node did not refuse the revoked consent as revoked within "
                                     f"{REFUSED_AS_REVOKED_WITHIN:g} s; reasons seen: {sorted(reasons)}")
            direct, refusal = await ask_node(bank, ledger, NODE, endpoint, consent)
            routed = await ask(bank, ledger, consent)
            for v in [direct, *(routed or [])]:
                if v is not None and v.node == NODE:
                    assert not v.verified, (
                        f"{time.monotonic() - start:.2f} s after its restart the node answered ({v.status}) under a "
                        f"consent revoked while it was down; refusals before: {sorted(reasons)}")
                    reasons.add(v.reason or v.status)
            if refusal is not None:
                reasons.add(refusal.reason or refusal.code)
                if refusal.reason == "CONSENT_REVOKED" and revoked_seen_at is None:
                    revoked_seen_at = time.monotonic() - start
            await asyncio.sleep(0.1)
        print(f"[{databases.backend}] refused as revoked {revoked_seen_at:.2f} s after the restart; "
              f"refusals seen: {sorted(reasons)}")
        await net.wait_registered(NODE)
        await check_after_fault(net, ledger)

