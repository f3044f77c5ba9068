"""An enterprise with a million accesses: how long one page of its history takes at a node.

    python bench/accesses.py [--entries 1000000] [--others 100000] [--pg URL]

Seeds the audit log directly through the store (the enterprise's entries interleaved with other
firms'), opens the node's audit log over it (the Merkle tree is rebuilt from the stored leaf
hashes), then asks the node's AccessDesk for pages: the newest, one in the middle (by cursor),
the oldest, and oldest first. Each page is checked as the enterprise's client checks it (the
signed checkpoint against the node's key, every inclusion proof, the order) and must hold the
entries it should; the figures are wall-clock times, reported, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.access import AccessDesk  # noqa: E402
from node.store import NodeStore  # noqa: E402
from xinyi.audit import merkle  # noqa: E402
from xinyi.audit.entry import AuditEntry  # noqa: E402
from xinyi.audit.log import AuditLog  # noqa: E402
from xinyi.clock import now_ms  # noqa: E402
from xinyi.crypto.identity import Principal, Role  # noqa: E402
from xinyi.crypto.pki import RootCA  # noqa: E402
from xinyi.policy import Authorizer  # noqa: E402
from xinyi.privacy.access import build_access_request, verify_node_accesses  # noqa: E402
from xinyi.v1 import access_pb2, directory_pb2  # noqa: E402

FIRM = "91510104MA6CW8J7X9"
OTHER = "91310115MA1K3Y9P2X"
BANK = "914403001922038216"
BATCH = 20_000


def seed(store: NodeStore, entries: int, others: int) -> float:
    """entries about FIRM and `others` about another firm, spread evenly; returns seconds."""
    started = time.perf_counter()
    total = entries + others
    every = total / others if others else 0
    start_ms = now_ms() - total
    rows, idx, next_other = [], 0, every
    while idx < total:
        uscc = OTHER if others and idx + 1 >= next_other else FIRM
        if uscc == OTHER:
            next_other += every
        record = AuditEntry(at_ms=start_ms + idx, caller_role="bank", caller_id=BANK, action="query", decision="deny",
                            uscc=uscc, categories=("tax",), purpose="credit_assessment",
                            reason="CONSENT_NOT_FOUND: no consent for this bank", request_hash=f"{idx:064x}",
                            ).to_record(idx, b"")
        leaf = record.SerializeToString(deterministic=True)
        rows.append({"idx": idx, "leaf_input": leaf, "leaf_hash": merkle.leaf_hash(leaf), "at_ms": record.at_ms,
                     "caller_id": BANK, "action": "query", "uscc": uscc, "decision": "deny",
                     "request_hash": record.request_hash})
        idx += 1
        if len(rows) == BATCH:
            store.append_audit_batch(rows)
            rows = []
    if rows:
        store.append_audit_batch(rows)
    return time.perf_counter() - started


class _Directory:
    """The part of the signed directory the client's check reads: the node's signing key (no
    trust anchor, so no revocation lists to check it against)."""

    registry_id = "national"
    trust = as_of = None

    def __init__(self, node_id: str, signing_cert: bytes) -> None:
        self.nodes = {node_id: directory_pb2.NodeEntry(node_id=node_id, signing_cert=signing_cert)}

    def node_keys(self, node_id: str) -> list[bytes]:
        entry = self.nodes.get(node_id)
        return [entry.signing_cert] if entry is not None else []

    def registry_certs(self) -> list[bytes]:
        return []


async def pages(url: str, entries: int, others: int) -> dict:
    root = RootCA.create()
    node = root.issue(Principal(Role.NODE, "510100"))
    enterprise = root.issue(Principal(Role.ENTERPRISE, FIRM))
    store = NodeStore(url)
    store.create_schema()
    out: dict = {"entries_about_the_firm": entries, "other_entries": others}
    out["seed_seconds"] = round(seed(store, entries, others), 1)
    started = time.perf_counter()
    log = AuditLog(store, node, now_ms)
    await log.open()
    out["open_log_seconds"] = round(time.perf_counter() - started, 1)
    desk = AccessDesk("510100", log, Authorizer.from_dir(), now_ms)
    directory = _Directory("510100", node.signing_cert_der)

    async def page(cursor: str = "", oldest_first: bool = False, after: int | None = None):
        request = access_pb2.NodeAccessesRequest(request=build_access_request(enterprise, now_ms()), cursor=cursor,
                                                 oldest_first=oldest_first)
        t = time.perf_counter()
        answer = await desk.accesses(enterprise.principal, request, trace_id="")
        ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        proven = verify_node_accesses(answer, directory, FIRM, newest_first=not oldest_first, after=after)
        check_ms = (time.perf_counter() - t) * 1000
        return answer, proven, ms, check_ms

    answer, proven, ms, check_ms = await page()
    assert len(proven) == 1000, len(proven)
    newest = [a.index for a in proven]
    assert newest == sorted(newest, reverse=True) and all(a.record.uscc == FIRM for a in proven)
    out["first_page_ms"] = round(ms, 1)
    t = time.perf_counter()  # what count_total adds to a first page
    assert await asyncio.to_thread(store.count_audit, uscc=FIRM, end=entries + others) == entries
    out["count_total_ms"] = round((time.perf_counter() - t) * 1000, 1)
    out["first_page_bytes"] = answer.ByteSize()
    out["client_check_ms"] = round(check_ms, 1)
    # A page from the middle: the cursor a client would hold after half the history.
    middle = entries + others // 2
    answer, proven, ms, _ = await page(f"n{middle}", after=middle)
    assert len(proven) == 1000 and proven[0].index < middle
    out["middle_page_ms"] = round(ms, 1)
    # The last page, newest first: the oldest entries.
    answer, proven, ms, _ = await page("n1100", after=1100)
    assert proven[-1].index == 0 and not answer.next_cursor
    out["last_page_ms"] = round(ms, 1)
    answer, proven, ms, _ = await page(oldest_first=True)
    assert proven[0].index == 0 and len(proven) == 1000
    out["oldest_first_page_ms"] = round(ms, 1)
    await log.close()
    store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries about the enterprise")
    parser.add_argument("--others", type=int, default=100_000, help="entries about other firms, interleaved")
    parser.add_argument("--pg", help="also on PostgreSQL at this URL (a fresh schema is made and dropped)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = asyncio.run(pages(f"sqlite:///{tmp}/node.db", args.entries, args.others))
    if args.pg:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        schema = f"bench_{os.getpid()}"
        admin = create_engine(args.pg)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = make_url(args.pg).update_query_dict({"options": f"-csearch_path={schema}"})
            results["postgresql"] = asyncio.run(pages(url.render_as_string(hide_password=False), args.entries, args.others))
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
