"""The signed query and its sealed, signed answers: building, checking, opening.

Banks use `build_query` and `open_answer`; nodes and the registry use `check_query`. Every
check names the field it refuses.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Sequence

from xinyi.clock import MINUTE_MS
from xinyi.crypto.envelope import Verified, body_hash, sign, verify
from xinyi.crypto.identity import QUERYING_ROLES, Principal, Role
from xinyi.crypto.pki import Identity, TrustAnchor
from xinyi.crypto.sealing import ANSWER_KEY_BYTES, AnswerKey
from xinyi.directory import listed_key
from xinyi.errors import Refusal, quoted
from xinyi.privacy.consent import check_consent_id
from xinyi.records import uscc as uscc_codes
from xinyi.v1 import directory_pb2, envelope_pb2, query_pb2, records_pb2

from xinyi.cache import LRU

if TYPE_CHECKING:
    from xinyi.store import BaseStore
from xinyi.records.vocab import CATEGORIES, MAX_CATEGORIES_PER_QUERY, SELF_ACCESS, category_problem, query_purpose_problem

log = logging.getLogger("xinyi.query")

TIMESTAMP_WINDOW_MS = 5 * MINUTE_MS
NONCE_BYTES = 16


def build_query(
    identity: Identity, *, uscc: str, categories: list[str], purpose: str, consent_id: str, now_ms: int
) -> tuple[envelope_pb2.SignedEnvelope, AnswerKey]:
    """A signed query and the one-time key its answers will be sealed to."""
    check_query_fields(uscc, categories, purpose, consent_id)
    answer_key = AnswerKey.generate()
    body = query_pb2.QueryBody(
        uscc=uscc,
        categories=categories,
        purpose=purpose,
        consent_id=consent_id,
        nonce=os.urandom(NONCE_BYTES),
        issued_at_ms=now_ms,
        answer_key=answer_key.public_bytes,
    )
    return sign(identity, body), answer_key


def build_self_query(
    identity: Identity, *, categories: list[str] | None = None, now_ms: int
) -> tuple[envelope_pb2.SignedEnvelope, AnswerKey]:
    """An enterprise's signed query of its own records (purpose self_access, no consent): the
    USCC is the one its certificate names; no categories means every category."""
    if identity.principal.role is not Role.ENTERPRISE:
        raise ValueError(f"a self_access query is signed by the enterprise itself, not {identity.principal}")
    return build_query(identity, uscc=identity.principal.id, categories=list(categories or CATEGORIES),
                       purpose=SELF_ACCESS, consent_id="", now_ms=now_ms)


def check_query_fields(uscc: str, categories: list[str], purpose: str, consent_id: str) -> None:
    """What a person chooses in a query; checked by the asker before signing and by every server."""
    problem = uscc_codes.problem(uscc)
    if problem:
        raise Refusal.invalid("query.uscc", problem, "INVALID_USCC")
    if not categories:
        raise Refusal.invalid("query.categories", "must name at least one category")
    if len(categories) > MAX_CATEGORIES_PER_QUERY or len(set(categories)) != len(categories):
        raise Refusal.invalid("query.categories", "must not repeat a category")
    for c in categories:
        problem = category_problem(c)
        if problem:
            raise Refusal.invalid("query.categories", problem, "UNKNOWN_CATEGORY")
    problem = query_purpose_problem(purpose)
    if problem:
        raise Refusal.invalid("query.purpose", problem, "UNKNOWN_PURPOSE")
    if purpose == SELF_ACCESS:
        if consent_id:  # the enterprise needs no one's consent to read its own records
            raise Refusal.invalid("query.consent_id", "must be empty for a self_access query: it relies on no consent")
    else:
        check_consent_id(consent_id, "query.consent_id")


def check_query(
    envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor, now_ms: int
) -> Verified[query_pb2.QueryBody]:
    """Authenticate a query (signature and certificate) and validate every field of it."""
    try:
        v = verify(envelope, query_pb2.QueryBody, trust, roles=QUERYING_ROLES, field="query")
    except Refusal as wrong:
        if wrong.reason != "WRONG_SIGNER_ROLE":
            raise
        try:  # an enterprise signs its own self_access queries (checked below); any other role is refused as it was
            v = verify(envelope, query_pb2.QueryBody, trust, roles={Role.ENTERPRISE}, field="query")
        except Refusal as again:
            raise (wrong if again.reason == "WRONG_SIGNER_ROLE" else again) from None
    q = v.message
    if v.signer.role is Role.ENTERPRISE and q.purpose != SELF_ACCESS:
        allowed = ", ".join(sorted(str(r) for r in QUERYING_ROLES))
        raise Refusal.unauthenticated(
            "query.signer_cert", f"signer is an enterprise, which signs only {SELF_ACCESS} queries of its own records; "
            f"only {allowed} may sign a query for {quoted(q.purpose)}", "WRONG_SIGNER_ROLE")
    check_query_fields(q.uscc, list(q.categories), q.purpose, q.consent_id)
    if len(q.nonce) != NONCE_BYTES:
        raise Refusal.invalid("query.nonce", f"must be {NONCE_BYTES} random bytes")
    skew = q.issued_at_ms - now_ms
    if abs(skew) > TIMESTAMP_WINDOW_MS:
        direction = "ahead of" if skew > 0 else "behind"
        raise Refusal.invalid(
            "query.issued_at_ms",
            f"is {abs(skew) // 1000} s {direction} this server's clock; at most 300 s is accepted (check the clock, then sign a fresh query)",
            "STALE_TIMESTAMP",
        )
    if len(q.answer_key) != ANSWER_KEY_BYTES:
        raise Refusal.invalid("query.answer_key", f"must be a {ANSWER_KEY_BYTES}-byte X25519 public key")
    return v


async def refuse_replay(store: "BaseStore", query: Verified[query_pb2.QueryBody], now_ms: int) -> None:
    """Remember the signer's nonce for twice the timestamp window; refuse one seen before.

    Every relying party keeps its own record (the registry and each node), durably, so a
    replay is refused even after a restart.
    """
    fresh = await asyncio.to_thread(
        store.remember_nonce, str(query.signer), query.message.nonce, now_ms + 2 * TIMESTAMP_WINDOW_MS, now_ms
    )
    if not fresh:
        raise replayed_nonce()


# How often the replay guard drops the nonces that expired: memory follows the query rate over
# the replay window, without a sawtooth of a whole window.
NONCE_PRUNE_MS = TIMESTAMP_WINDOW_MS // 10


class ReplayGuard:
    """The query nonces each signer used within the replay window, kept in memory (loaded from
    the store at start) and made durable with the request's audit entry, in the same group
    commit: no answer leaves before its nonce is on disk, and no commit is spent on it alone.

    A nonce is kept until its query's timestamp leaves the window (issued_at + 5 minutes): from
    then on the query is refused as stale anyway. Expired nonces are dropped every 30 s, so the
    guard holds about five minutes' worth of queries, however long the node runs.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, bytes], int] = {}
        self._pruned_at = 0

    def __len__(self) -> int:
        return len(self._seen)

    def load(self, live: list[tuple[str, bytes, int]]) -> None:
        for signer, nonce, expires in live:
            self._seen[(sys.intern(signer), nonce)] = expires

    async def claim(self, signer: str, nonce: bytes, now_ms: int, issued_at_ms: int | None = None, *,
                    request_hash: str = "") -> tuple[str, dict]:
        """Refuse a nonce seen before; else remember it and return the row to persist
        (`request_hash`: the query taking it, kept with it)."""
        row = self.take(signer, nonce, now_ms, issued_at_ms)
        if row is None:
            raise replayed_nonce()
        if request_hash:
            row[1]["request_hash"] = request_hash
        return row

    def forget(self, signer: str, nonce: bytes) -> None:
        """Release a nonce whose record was never written (the store failed): the same query
        may be sent again."""
        self._seen.pop((signer, nonce), None)

    def take(self, signer: str, nonce: bytes, now_ms: int, issued_at_ms: int | None = None) -> tuple[str, dict] | None:
        """The row to persist for a new nonce; None for one seen before. `issued_at_ms` is the
        query's own (checked) timestamp; without it the nonce is kept for the longest a query
        can stay fresh, two windows from now."""
        if now_ms - self._pruned_at > NONCE_PRUNE_MS:
            self._seen = {k: v for k, v in self._seen.items() if v >= now_ms}
            self._pruned_at = now_ms
        key = (sys.intern(signer), nonce)  # one copy of each signer's name, however many nonces
        if self._seen.get(key, -1) >= now_ms:
            return None
        expires = (now_ms + 2 * TIMESTAMP_WINDOW_MS if issued_at_ms is None
                   else max(issued_at_ms + TIMESTAMP_WINDOW_MS, now_ms))
        self._seen[key] = expires
        return ("seen_nonces", {"signer": signer, "nonce": nonce, "expires_at_ms": expires})


class SharedReplayGuard(ReplayGuard):
    """The replay guard of a store that several processes (on several hosts) serve: the
    database's primary key on (signer, nonce) decides, whichever process a replay reaches. What
    this process remembers only refuses its own replays early, without a round trip."""

    def __init__(self, store: "BaseStore") -> None:
        super().__init__()
        self.store = store

    async def claim(self, signer: str, nonce: bytes, now_ms: int, issued_at_ms: int | None = None, *,
                    request_hash: str = "") -> tuple[str, dict]:
        row = await super().claim(signer, nonce, now_ms, issued_at_ms, request_hash=request_hash)
        try:
            taken = await asyncio.to_thread(self.store.remember_nonce, signer, nonce, row[1]["expires_at_ms"], now_ms,
                                            flushed_by_audit=True, request_hash=request_hash)
        except BaseException:
            super().forget(signer, nonce)  # the store decides; unreachable, it decided nothing
            raise
        if not taken:
            raise replayed_nonce()
        return row  # written again with the audit entry, where it changes nothing (ON CONFLICT DO NOTHING)

    def forget(self, signer: str, nonce: bytes) -> None:
        """Release the nonce here and in the store (best effort: the store may be what failed),
        so that the same query sent again, to any process, is not taken for a replay."""
        super().forget(signer, nonce)
        _in_background(self.store.forget_nonce, signer, nonce,
                       failed="could not release a nonce whose query was not recorded (its retry is told so)")


def _in_background(work: Callable[..., None], *args, failed: str = "") -> None:
    """Run a store write off the event loop without waiting for it (the store may be what is
    failing); a failure is logged as `failed` when given, else `work` logs its own."""
    def run() -> None:
        try:
            work(*args)
        except Exception as e:  # noqa: BLE001 - best effort by design
            log.warning("%s: %s", failed or work.__name__, str(e).splitlines()[0])

    asyncio.get_running_loop().run_in_executor(None, run)


def replay_guard_for(store: "BaseStore") -> ReplayGuard:
    """The guard a store needs: the database decides when other processes share it."""
    return SharedReplayGuard(store) if store.shared else ReplayGuard()


def replayed_nonce() -> Refusal:
    return Refusal.invalid(
        "query.nonce", "was already used by this signer: a replayed query is refused; sign a new one", "REPLAYED_NONCE"
    )


def is_self_access(query: Verified[query_pb2.QueryBody]) -> bool:
    return query.message.purpose == SELF_ACCESS


def check_self_access(query: Verified[query_pb2.QueryBody]) -> None:
    """An enterprise reads only its own records: the USCC its signing certificate names (never a
    request field) must be the one asked about. Any other signer is left to policy, which
    refuses self_access to everyone but the enterprise itself. The message names only the
    signer: who holds the other enterprise's records is not the signer's business."""
    if query.signer.role is Role.ENTERPRISE and query.signer.id != query.message.uscc:
        raise Refusal.denied("SELF_ACCESS_OF_ANOTHER_ENTERPRISE",
                             f"query.uscc: {query.signer} may read only its own records ({SELF_ACCESS}); this query asks "
                             "about another enterprise, which only an institution holding that enterprise's consent may",
                             field_name="query.uscc")


def self_access_key(uscc: str) -> str:
    """The key an enterprise's self_access queries are counted under in the use ledger (beside
    consent ids, which are 32 hex characters: no clash)."""
    return f"{SELF_ACCESS}/{uscc}"


class _ConsentUses:
    """One consent's uses: the requests counted, each asker's use times in order, and which of
    them are only reserved (their answer is not yet sealed and audited)."""

    __slots__ = ("requests", "times", "pending", "pending_since")

    def __init__(self, rows: list[tuple[str, str, int]]) -> None:
        self.requests: set[str] = set()
        self.times: dict[str, list[int]] = {}
        # Uses reserved here whose answer is not yet sealed and audited: until they settle the
        # store does not hold them, so this entry must not be dropped from memory.
        self.pending: set[str] = set()
        self.pending_since = 0.0  # monotonic time the oldest pending use was reserved
        for request_hash, asker, at_ms in rows:
            self.add(request_hash, asker, at_ms)

    def add(self, request_hash: str, asker: str, at_ms: int) -> None:
        self.requests.add(request_hash)
        bisect.insort(self.times.setdefault(asker, []), at_ms)

    def remove(self, request_hash: str, asker: str, at_ms: int) -> None:
        self.requests.discard(request_hash)
        times = self.times.get(asker, [])
        i = bisect.bisect_left(times, at_ms)
        if i < len(times) and times[i] == at_ms:
            del times[i]

    def since(self, asker: str, start_ms: int) -> int:
        times = self.times.get(asker, [])
        return len(times) - bisect.bisect_left(times, start_ms)


# Consents whose uses are kept in memory: the least recently used are dropped beyond this, and
# read from the store again when next used.
USE_CACHE_LIMIT = 4096
# A use whose request never reached the audit log (the request failed on the way) stops holding
# its consent in memory after this long; no audit commit takes anywhere near it.
UNSETTLED_SECONDS = 600.0


def _unsettled(uses: _ConsentUses) -> bool:
    return bool(uses.pending) and time.monotonic() - uses.pending_since < UNSETTLED_SECONDS
# A reserved use: ("consent_uses", row), the row written with the audit entry of its answer.
Use = tuple[str, dict]


class _Settles:
    """What both ledgers do with a use once its answer's audit commit is known."""

    async def audited(self, uses: list[Use], append: Awaitable[int]) -> int:
        """Await `append` (the audit entry of the answer, committed with the rows of `uses`);
        keep the uses when it committed, give them back when it failed. A cancelled caller does
        not cancel the commit: the uses are settled when its outcome is known."""
        commit = asyncio.ensure_future(append)
        try:
            index = await asyncio.shield(commit)
        except asyncio.CancelledError:
            commit.add_done_callback(lambda done: self._settle_all(
                uses, answered=not done.cancelled() and done.exception() is None))
            raise
        except BaseException:
            self._settle_all(uses, answered=False)
            raise
        self._settle_all(uses, answered=True)
        return index

    def _settle_all(self, uses: list[Use], *, answered: bool) -> None:
        for _, row in uses:
            self.settle(row, answered=answered)

    def settle(self, row: dict, *, answered: bool) -> None:
        raise NotImplementedError


class UseLedger(_Settles):
    """Each consent's uses, read from the store the first time the consent is used and counted
    in memory after that. One process counts for a store: with --workers, the sequencer
    (node.sequencer); on a store several processes share, SharedUseLedger instead. Counting is
    a binary search, however often a consent has been used.

    A use counts only when its answer was sealed and audited: `reserve` holds it in memory (so
    that concurrent requests cannot exceed the limit), `audited` appends the answer's audit entry
    with the use's row in the same commit and keeps the use only when that commit succeeded, and
    `release` gives back a use whose request failed before (a refusal, a sealing error, a
    cancelled call). A failing disk or a bad request never spends a consent.

    At most `limit` consents are held; the least recently used is dropped and read again from
    the store when next used, once its uses are settled: a consent with a reserved use is kept.
    """

    def __init__(self, store: "BaseStore", limit: int | None = None) -> None:
        self.store = store
        self._uses: LRU[str, _ConsentUses] = LRU(limit or USE_CACHE_LIMIT, keep=_unsettled)
        self._lock = asyncio.Lock()

    async def reserve(self, consent_id: str, request_hash: str, asker: str, now_ms: int, *, window_start_ms: int,
                      limit: int) -> tuple[bool, int, Use | None]:
        """(allowed, uses in the window before this one, the reserved use or None for a request
        already counted)."""
        uses = self._uses.get(consent_id)
        if uses is None:
            async with self._lock:  # one read of the store per consent
                uses = self._uses.get(consent_id)
                if uses is None:
                    uses = _ConsentUses(await asyncio.to_thread(self.store.uses_of, consent_id))
                    self._uses.put(consent_id, uses)
        if request_hash in uses.requests:
            return True, 0, None
        used = uses.since(asker, window_start_ms)
        if used >= limit:
            return False, used, None
        uses.add(request_hash, asker, now_ms)
        if not uses.pending:
            uses.pending_since = time.monotonic()
        uses.pending.add(request_hash)
        row = {"consent_id": consent_id, "request_hash": request_hash, "asker": asker, "at_ms": now_ms}
        return True, used, ("consent_uses", row)

    async def release(self, use: Use | None) -> None:
        """Give back a reserved use: nothing was answered under it."""
        if use is not None:
            self.settle(use[1], answered=False)

    def settle(self, row: dict, *, answered: bool) -> None:
        """A reserved use's row was committed with its answer (answered), or will never be (not):
        keep it, or forget it. A use that is not reserved (already settled) is left alone."""
        uses = self._uses.get(row["consent_id"])
        if uses is None or row["request_hash"] not in uses.pending:
            return
        uses.pending.discard(row["request_hash"])
        if not answered:
            uses.remove(row["request_hash"], row["asker"], row["at_ms"])

    def __len__(self) -> int:
        return len(self._uses)


# A use held in the database by a process that died before its answer was audited stops
# counting after this long; every request is answered or refused well within it.
HOLD_SECONDS = 120.0


class SharedUseLedger(_Settles):
    """UseLedger's interface for a store that several processes (on several hosts) serve: each
    reservation is a row taken in one transaction under the consent's lock, counted with the
    uses already answered (BaseStore.hold_use), so two processes at the same instant cannot both
    take a consent's last use. The answer's audit commit turns the hold into a use; a request
    that answered nothing drops it; a process that died leaves one that expires (HOLD_SECONDS)."""

    def __init__(self, store: "BaseStore") -> None:
        self.store = store

    async def reserve(self, consent_id: str, request_hash: str, asker: str, now_ms: int, *, window_start_ms: int,
                      limit: int) -> tuple[bool, int, Use | None]:
        allowed, used, counted = await asyncio.to_thread(
            self.store.hold_use, consent_id, request_hash, asker, now_ms, window_start_ms=window_start_ms,
            limit=limit, hold_ms=int(HOLD_SECONDS * 1000))
        if not allowed or counted:
            return allowed, used, None
        return True, used, ("consent_uses", {"consent_id": consent_id, "request_hash": request_hash, "asker": asker,
                                             "at_ms": now_ms})

    async def release(self, use: Use | None) -> None:
        """Give back a held use (nothing was answered under it); never raises: a hold that
        could not be dropped expires."""
        if use is not None:
            await asyncio.shield(asyncio.to_thread(self._drop, use[1]))

    def settle(self, row: dict, *, answered: bool) -> None:
        if not answered:  # an answered use's hold went with its audit commit
            _in_background(self._drop, row)

    def _drop(self, row: dict) -> None:
        try:
            self.store.drop_use_hold(row["consent_id"], row["request_hash"])
        except Exception as e:  # noqa: BLE001 - the hold expires instead
            log.warning("a consent use hold was not given back (it expires in %g s): %s", HOLD_SECONDS, e)

    def __len__(self) -> int:
        return 0  # nothing is kept in memory


def use_ledger_for(store: "BaseStore") -> "UseLedger | SharedUseLedger":
    """The ledger a store needs: the database counts when other processes share it."""
    return SharedUseLedger(store) if store.shared else UseLedger(store)


@dataclass(frozen=True)
class OpenedAnswer:
    """One node's answer, opened and verified by the asker."""

    node_id: str
    records: list[dict]
    indicators: list[dict]
    answered_at_ms: int
    signer: Principal


class AnswerError(Exception):
    """An answer that cannot be trusted: it did not open, verify or match the query."""


class UnlistedKey(AnswerError):
    """Signed with a key the reader's directory does not list: a newer directory may (the node
    renewed its key); the reader fetches it once and tries again."""


def open_answer(
    sealed: bytes,
    answer_key: AnswerKey,
    *,
    expected_node: str,
    node_signing_cert: bytes,
    request_hash: bytes,
    uscc: str,
    trust: TrustAnchor,
    previous_keys: Sequence[directory_pb2.KeyPeriod] = (),
) -> OpenedAnswer:
    """Open a sealed answer and check it came from `expected_node` and answers this query.

    `node_signing_cert` is the node's signing certificate as listed in the signed directory,
    `previous_keys` the ones it lists as replaced: an answer signed with one of those while it
    was in use still opens (a rotation under load).
    """
    try:
        plaintext = answer_key.open(sealed)
    except ValueError as e:
        raise AnswerError(str(e)) from None
    env = envelope_pb2.SignedEnvelope()
    try:
        env.ParseFromString(plaintext)
        v = verify(env, query_pb2.AnswerBody, trust, roles={Role.NODE}, field="answer")
    except Refusal as e:
        raise AnswerError(f"answer from {expected_node} does not verify: {e}") from None
    except Exception:  # noqa: BLE001 - malformed bytes from the network
        raise AnswerError(f"answer from {expected_node} is malformed") from None
    if v.signer != Principal(Role.NODE, expected_node):
        raise AnswerError(f"answer for node {expected_node} was signed by {v.signer}")
    a = v.message
    if not listed_key(node_signing_cert, previous_keys, v.signer_cert_der, a.answered_at_ms):
        raise UnlistedKey(f"answer from {expected_node} was signed with a key the directory does not list for it")
    if a.request_hash != request_hash:
        raise AnswerError(f"answer from {expected_node} answers another request")
    if a.uscc != uscc or a.node_id != expected_node:
        raise AnswerError(f"answer from {expected_node} is about {a.uscc} from {a.node_id}")
    return OpenedAnswer(
        node_id=a.node_id,
        records=[record_to_dict(r) for r in a.records],
        indicators=[indicator_to_dict(i) for i in a.indicators],
        answered_at_ms=a.answered_at_ms,
        signer=v.signer,
    )


def record_to_dict(r: records_pb2.CreditRecord) -> dict:
    out = {"category": r.category, "as_of": r.as_of, "source": r.source, **json.loads(r.fields_json),
           "record_id": r.record_id}
    if r.disputed:
        out["disputed"] = True  # the enterprise objected; the node is verifying it
    return out


def indicator_to_dict(i: records_pb2.Indicator) -> dict:
    return {"category": i.category, "name": i.name, "value": json.loads(i.value_json), "as_of": i.as_of}


__all__ = ["build_query", "build_self_query", "check_query", "check_self_access", "open_answer", "OpenedAnswer", "AnswerError", "body_hash"]
