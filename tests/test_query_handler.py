"""node/query.py's QueryHandler in process: the node's whole query path (authenticate, check
replay, look up consent, authorize, check consent, fetch, minimize, sign and seal, audit) on a
real SQLite NodeStore, a real AuditLog, the default policies and certificates from a test root,
with a clock the test sets. No gRPC server, no network: each test takes milliseconds, so that
mutation testing of node/query.py (scripts/mutate.py, mutation.toml) runs it per mutant.

Queries are built and answers opened as a bank's client does (xinyi.query.build_query and
open_answer); consents are signed by the enterprise and verified and stored as the node's
consent inbox does (verify_consent, NodeStore.put_consent, put_change).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.consents import ConsentFreshness
from node.query import QueryHandler
from node.store import NodeStore, Record
from xinyi.audit.log import AuditLog
from xinyi.crypto.envelope import body_hash
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, RootCA
from xinyi.errors import Kind, Refusal, StoreUnavailable
from xinyi.policy import DEFAULT_POLICY_DIR, Authorizer
from xinyi.privacy.consent import (
    CHINA,
    StoredConsent,
    apply_change,
    build_change,
    build_consent,
    verify_change,
    verify_consent,
)
from xinyi.privacy.fairuse import SelfAccessRule
from xinyi.privacy.minimize import MinimizationRules
from xinyi.query import OpenedAnswer, build_query, build_self_query, open_answer
from xinyi.records import uscc as uscc_codes
from xinyi.v1 import audit_pb2, envelope_pb2, query_pb2

NODE_ID = "510100"
LICENCE = "B0014H144030001"  # banks carry a financial licence in their certificate; policy wants it
BANK = "914403001922038216"
OTHER_BANK = "91440300708461136T"
FIRM = uscc_codes.with_check_character("91510104MA6CW8J7X")  # Jinjiang district, Chengdu
OTHER_FIRM = uscc_codes.with_check_character("91310115MA1K3Y9P2")  # Pudong, Shanghai

# 30 s past midnight in China on 1 July 2026: still 30 June in UTC. The node's "today" is
# China's (consent history windows, retention), so the date a test expects is 1 July.
NOW = int(dt.datetime(2026, 7, 1, 0, 0, 30, tzinfo=CHINA).timestamp() * 1000)
TODAY = dt.date(2026, 7, 1)

REGISTRATION = {"name": "成都锦江测试科技有限公司", "legal_representative": "张三", "registered_capital": "1000000.00",
                "established": "2015-03-02", "status": "active"}


def tax(period: str) -> dict:
    return {"period": period, "tax_paid": "12000.00", "credit_rating": "A"}


def case(case_no: str, filed: str, status: str = "closed") -> dict:
    return {"case_no": case_no, "court": "成都市中级人民法院", "filed": filed, "role": "defendant",
            "amount": "50000.00", "status": status}


FIRM_REGISTRATION = Record(FIRM, "registration", "2026-06-30", "成都市市场监督管理局", REGISTRATION)
FIRM_TAX = Record(FIRM, "tax", "2026-06-15", "国家税务总局四川省税务局", tax("2026-05"))
FIRM_CASE = Record(FIRM, "judicial", "2026-05-01", "成都市中级人民法院", case("(2026)川01民初123号", "2026-04-01", "pending"))
OTHER_FIRM_REGISTRATION = Record(OTHER_FIRM, "registration", "2026-06-30", "上海市市场监督管理局",
                                 {**REGISTRATION, "name": "上海浦东测试有限公司", "legal_representative": "李四"})


class Clock:
    """The node's clock, in ms, set by the test."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclass(frozen=True)
class Parties:
    root: RootCA
    node: Identity
    bank: Identity
    other_bank: Identity
    firm: Identity
    other_firm: Identity


@pytest.fixture(scope="module")
def parties() -> Parties:
    root = RootCA.create()
    return Parties(
        root=root,
        node=root.issue(Principal(Role.NODE, NODE_ID)),
        bank=root.issue(Principal(Role.BANK, BANK), licence=LICENCE),
        other_bank=root.issue(Principal(Role.BANK, OTHER_BANK), licence=LICENCE),
        firm=root.issue(Principal(Role.ENTERPRISE, FIRM)),
        other_firm=root.issue(Principal(Role.ENTERPRISE, OTHER_FIRM)),
    )


@pytest.fixture(scope="module")
def policies() -> tuple[Authorizer, MinimizationRules]:
    return Authorizer.from_dir(DEFAULT_POLICY_DIR), MinimizationRules.from_dir(DEFAULT_POLICY_DIR)


@dataclass
class Asked:
    envelope: envelope_pb2.SignedEnvelope
    key: object  # the query's one-time AnswerKey
    uscc: str
    signer: Principal


class Node:
    """A node's query path as node/server.py builds it, on its own SQLite file."""

    def __init__(self, db: Path, parties: Parties, policies, clock: Clock) -> None:
        self.parties = parties
        self.authorizer, self.rules = policies
        self.clock = clock
        self.store = NodeStore(f"sqlite:///{db}")  # its schema made already (empty_node_db)
        self.audit_log: AuditLog | None = None
        self.handler: QueryHandler | None = None
        self.handler_options: dict = {}

    async def start(self, **options) -> QueryHandler:
        """Open the audit log and build the handler; what NodeServer.start does, the nonces
        of the replay window loaded back from the store."""
        self.handler_options = options or self.handler_options
        if self.audit_log is not None:
            await self.audit_log.close()
        self.audit_log = AuditLog(self.store, self.parties.node, self.clock)
        await self.audit_log.open()
        self.handler = QueryHandler(self.parties.node, self.store, self.authorizer, self.audit_log, self.rules,
                                    clock=self.clock, **self.handler_options)
        self.handler.replay.load(self.store.live_nonces(self.clock()))
        return self.handler

    async def restart(self) -> QueryHandler:
        return await self.start()

    async def stop(self) -> None:
        if self.audit_log is not None:
            await self.audit_log.close()
        self.store.close()

    # -- what the node holds -----------------------------------------------------------------
    def add(self, *records: Record) -> None:
        self.store.add_records(list(records), self.clock())

    def grant(self, grantee: str = BANK, *, by: Identity | None = None, purpose: str = "credit_assessment",
              categories=("registration", "tax", "judicial"), **options) -> StoredConsent:
        """A consent the enterprise signed, verified and stored as the node's consent inbox does."""
        by = by or self.parties.firm
        envelope = build_consent(by, grantee=grantee, purpose=purpose, categories=list(categories), days=30,
                                 now_ms=self.clock(), **options)
        consent = verify_consent(envelope, self.parties.node.trust(), self.clock())
        assert self.store.put_consent(consent)
        return consent

    def pause(self, consent: StoredConsent) -> None:
        envelope = build_change(self.parties.firm, consent.consent_id, "pause", self.clock() + 1)
        change = verify_change(envelope, consent, self.parties.node.trust())
        assert self.store.put_change(apply_change(consent, change), change.at_ms, envelope.SerializeToString())

    # -- asking ------------------------------------------------------------------------------
    def query(self, categories=("registration",), *, consent: StoredConsent | str | None = None,
              asker: Identity | None = None, uscc: str = FIRM, purpose: str = "credit_assessment") -> Asked:
        asker = asker or self.parties.bank
        consent_id = consent.consent_id if isinstance(consent, StoredConsent) else consent
        envelope, key = build_query(asker, uscc=uscc, categories=list(categories), purpose=purpose,
                                    consent_id=consent_id, now_ms=self.clock())
        return Asked(envelope, key, uscc, asker.principal)

    def self_query(self, categories=("registration", "tax"), *, asker: Identity | None = None) -> Asked:
        asker = asker or self.parties.firm
        envelope, key = build_self_query(asker, categories=list(categories), now_ms=self.clock())
        return Asked(envelope, key, asker.principal.id, asker.principal)

    async def answer(self, asked: Asked, caller: Principal | None = None):
        caller = caller or asked.signer  # sent straight to the node
        return await self.handler.answer(asked.envelope, caller=caller, trace_id="ab" * 16)

    async def refused(self, asked: Asked) -> Refusal:
        with pytest.raises(Refusal) as refused:
            await self.answer(asked)
        return refused.value

    async def ask(self, asked: Asked) -> tuple[int, OpenedAnswer]:
        """Answered: the outcome, and the answer opened and verified as the bank opens it."""
        answer = await self.answer(asked)
        return answer.outcome, self.open(asked, answer.sealed)

    def open(self, asked: Asked, sealed: bytes) -> OpenedAnswer:
        return open_answer(sealed, asked.key, expected_node=NODE_ID, node_signing_cert=self.parties.node.signing_cert_der,
                           request_hash=body_hash(asked.envelope.body), uscc=asked.uscc, trust=self.parties.node.trust())

    def answer_body(self, asked: Asked, sealed: bytes) -> query_pb2.AnswerBody:
        """The signed answer as it left the node, bytes and all (open_answer parses the JSON)."""
        envelope = envelope_pb2.SignedEnvelope.FromString(asked.key.open(sealed))
        return query_pb2.AnswerBody.FromString(envelope.body)

    # -- what the node wrote -----------------------------------------------------------------
    def audit(self) -> list[audit_pb2.AuditRecord]:
        return [e.record() for e in self.store.audit_entries(0, self.store.audit_log_size())]

    def last_audit(self) -> audit_pb2.AuditRecord:
        return self.audit()[-1]


@pytest.fixture(scope="module")
def empty_node_db(tmp_path_factory) -> Path:
    """A node database with its schema, made once: each test starts from a copy (creating the
    schema takes a fifth of a second, the copy a millisecond)."""
    path = tmp_path_factory.mktemp("schema") / "node.db"
    store = NodeStore(f"sqlite:///{path}")
    store.create_schema()
    store.close()
    return path


@pytest.fixture
async def node(tmp_path: Path, empty_node_db: Path, parties: Parties, policies):
    shutil.copyfile(empty_node_db, tmp_path / "node.db")
    n = Node(tmp_path / "node.db", parties, policies, Clock(NOW))
    await n.start()
    yield n
    await n.stop()


def categories_of(opened: OpenedAnswer) -> list[str]:
    return [r["category"] for r in opened.records]


# --- answers --------------------------------------------------------------------------------------


async def test_a_detail_answer_holds_the_categories_asked_masked_and_is_audited(node: Node):
    node.add(FIRM_REGISTRATION, FIRM_TAX, FIRM_CASE, OTHER_FIRM_REGISTRATION)
    consent = node.grant(categories=("registration", "tax", "judicial"))
    asked = node.query(["registration", "judicial"], consent=consent)
    outcome, opened = await node.ask(asked)

    assert outcome == query_pb2.NODE_OUTCOME_OK
    assert categories_of(opened) == ["registration", "judicial"]  # not tax, not the other firm's
    registration = opened.records[0]
    assert registration["legal_representative"] == "张*"  # a natural person's name, masked for a bank
    assert registration["name"] == REGISTRATION["name"]
    assert opened.indicators == [] and opened.answered_at_ms == NOW

    entry = node.last_audit()
    assert entry.decision == audit_pb2.DECISION_ALLOW and entry.reason == "answered"
    assert (entry.caller_role, entry.caller_id, entry.relayed_by, entry.action) == ("bank", BANK, "", "query")
    assert (entry.uscc, list(entry.categories), entry.consent_id) == (FIRM, ["registration", "judicial"],
                                                                      consent.consent_id)
    assert entry.request_hash == body_hash(asked.envelope.body).hex() and entry.at_ms == NOW
    assert entry.detail == "detail: 2 records, 0 indicators"
    assert "banks-may-query-for-credit-assessment-or-loan-monitoring" in entry.policy_ids
    # The use is made durable with the audit entry.
    assert [(h, a) for h, a, _ in node.store.uses_of(consent.consent_id)] == [(entry.request_hash, f"bank/{BANK}")]


async def test_a_relayed_query_is_audited_with_its_relay(node: Node):
    node.add(FIRM_REGISTRATION)
    asked = node.query(consent=node.grant())
    await node.answer(asked, caller=Principal(Role.REGISTRY, "national"))
    entry = node.last_audit()
    assert (entry.caller_id, entry.relayed_by, entry.decision) == (BANK, "national", audit_pb2.DECISION_ALLOW)


async def test_a_summary_answer_holds_indicators_not_records(node: Node):
    node.add(FIRM_REGISTRATION, FIRM_TAX)
    consent = node.grant(categories=("registration", "tax"), detail_level="summary")
    outcome, opened = await node.ask(node.query(["registration", "tax"], consent=consent))

    assert outcome == query_pb2.NODE_OUTCOME_OK and opened.records == []
    values = {(i["category"], i["name"]): i["value"] for i in opened.indicators}
    assert values[("registration", "status")] == "active"
    assert values[("registration", "years_established")] == 11  # 2015-03-02 to 2026-07-01
    assert values[("tax", "latest_period")] == "2026-05" and values[("tax", "latest_credit_rating")] == "A"
    assert node.last_audit().detail == f"summary: 0 records, {len(opened.indicators)} indicators"


async def test_an_answer_with_nothing_to_say_is_no_data_and_still_spends_the_consent(node: Node):
    node.add(OTHER_FIRM_REGISTRATION)  # the node holds registrations, none of this firm
    consent = node.grant()
    outcome, opened = await node.ask(node.query(consent=consent))
    assert outcome == query_pb2.NODE_OUTCOME_NO_DATA and opened.records == []
    assert len(node.store.uses_of(consent.consent_id)) == 1


async def test_indicator_text_reaches_the_bank_as_characters(node: Node):
    """Indicator text is sent as the characters in the signed answer's value_json, not as \\u
    escapes. Today's vocabulary gives only ASCII indicator values (enums, bands, periods), so
    the record here holds a status ingest would refuse (存续, outside the enum), put straight
    into the store: what the node does with whatever text it holds."""
    node.add(Record(FIRM, "registration", "2026-06-30", "成都市市场监督管理局", {**REGISTRATION, "status": "存续"}))
    asked = node.query(consent=node.grant(detail_level="summary"))
    answer = await node.answer(asked)
    body = node.answer_body(asked, answer.sealed)
    status = next(i for i in body.indicators if i.name == "status")
    assert status.value_json == '"存续"'
    assert {i["name"]: i["value"] for i in node.open(asked, answer.sealed).indicators}["status"] == "存续"


# --- the node's "today" comes from its clock, in China time ---------------------------------------


async def test_retention_ages_out_by_the_clock_s_day_in_china(node: Node):
    """A closed case is served five years from its filing: filed 1 July 2021, it is gone on
    1 July 2026 in China (still 30 June in UTC); filed a day later, it is still served."""
    node.add(Record(FIRM, "judicial", "2026-06-01", "成都市中级人民法院", case("(2021)川01民初1号", "2021-07-01")),
             Record(FIRM, "judicial", "2026-06-01", "成都市中级人民法院", case("(2021)川01民初2号", "2021-07-02")))
    _, opened = await node.ask(node.query(["judicial"], consent=node.grant(categories=("judicial",))))
    assert [r["case_no"] for r in opened.records] == ["(2021)川01民初2号"]


async def test_the_consent_s_history_window_starts_from_the_clock_s_day(node: Node):
    """A 12-month consent on 1 July 2026 sees records as of 1 July 2025 on, not 30 June 2025."""
    node.add(Record(FIRM, "tax", "2025-07-01", "国家税务总局四川省税务局", tax("2025-06")),
             Record(FIRM, "tax", "2025-06-30", "国家税务总局四川省税务局", tax("2025-05")))
    consent = node.grant(categories=("tax",), history_months=12)
    _, opened = await node.ask(node.query(["tax"], consent=consent))
    assert [r["as_of"] for r in opened.records] == ["2025-07-01"]


# --- categories the node holds ----------------------------------------------------------------------


async def test_a_category_the_node_holds_nothing_of_is_left_out_of_a_summary(node: Node):
    """"No tax months reported" from a node that holds no tax data would mislead."""
    node.add(FIRM_REGISTRATION)
    consent = node.grant(categories=("registration", "tax"), detail_level="summary")
    _, opened = await node.ask(node.query(["registration", "tax"], consent=consent))
    assert {i["category"] for i in opened.indicators} == {"registration"}


async def test_the_held_categories_are_read_on_the_first_query_even_at_clock_zero(node: Node):
    node.clock.now = 0
    node.add(Record(FIRM, "registration", "1969-12-31", "成都市市场监督管理局", REGISTRATION))
    outcome, opened = await node.ask(node.query(consent=node.grant()))
    assert outcome == query_pb2.NODE_OUTCOME_OK and categories_of(opened) == ["registration"]


async def test_the_held_categories_are_read_again_only_after_30_seconds(node: Node):
    """Data is loaded by another process: the node looks at what it holds again after 30 s."""
    node.add(FIRM_REGISTRATION)
    consents = [node.grant(categories=("registration", "tax")) for _ in range(3)]  # one fetch each
    _, opened = await node.ask(node.query(["registration", "tax"], consent=consents[0]))
    assert categories_of(opened) == ["registration"]
    node.add(FIRM_TAX)  # the loader adds tax records

    node.clock.now = NOW + 30_000
    _, opened = await node.ask(node.query(["registration", "tax"], consent=consents[1]))
    assert categories_of(opened) == ["registration"]  # not looked again yet
    node.clock.now = NOW + 30_001
    _, opened = await node.ask(node.query(["registration", "tax"], consent=consents[2]))
    assert categories_of(opened) == ["registration", "tax"]


# --- refusals --------------------------------------------------------------------------------------


async def refused_and_audited(node: Node, asked: Asked, reason: str, consent: StoredConsent | None = None) -> Refusal:
    """Refused for `reason`, audited as such, and nothing but the audit record (with the
    query's nonce) stored: no consent use, no record."""
    before = len(node.audit())
    records = node.store.count_records()
    refusal = await node.refused(asked)
    assert refusal.reason == reason, refusal
    entries = node.audit()
    assert len(entries) == before + 1
    entry = entries[-1]
    assert entry.decision == audit_pb2.DECISION_DENY and entry.reason.startswith(f"{reason}: ")
    assert entry.action == "query" and entry.trace_id == "ab" * 16
    assert node.store.count_records() == records
    if consent is not None:
        assert node.store.uses_of(consent.consent_id) == []
    return refusal


async def test_a_bad_signature_is_refused_and_audited(node: Node):
    node.add(FIRM_REGISTRATION)
    consent = node.grant()
    asked = node.query(consent=consent)
    asked.envelope.signature = bytes(b ^ 1 for b in asked.envelope.signature)
    refusal = await refused_and_audited(node, asked, "BAD_SIGNATURE", consent)
    assert refusal.kind is Kind.UNAUTHENTICATED
    assert node.last_audit().caller_id == BANK  # who sent it; nothing of the unverified body is believed
    assert node.last_audit().uscc == ""


async def test_a_replayed_query_is_refused_and_audited(node: Node):
    node.add(FIRM_REGISTRATION)
    consent = node.grant(fetch_type="periodic", max_fetches=5, fetch_period="day", purpose="loan_monitoring",
                         detail_level="summary", categories=("registration",))
    asked = node.query(consent=consent, purpose="loan_monitoring")
    await node.ask(asked)
    await refused_and_audited(node, asked, "REPLAYED_NONCE")
    assert len(node.store.uses_of(consent.consent_id)) == 1  # the replay took no use


async def test_a_query_naming_no_known_consent_is_refused_and_audited(node: Node):
    node.add(FIRM_REGISTRATION)
    await refused_and_audited(node, node.query(consent="0" * 32), "CONSENT_NOT_FOUND")
    assert not node.last_audit().reason.endswith("]")  # no note: there is no such consent


async def test_a_consent_given_to_another_bank_is_refused_as_unknown_and_audited_as_what_it_was(node: Node):
    node.add(FIRM_REGISTRATION)
    consent = node.grant(OTHER_BANK)
    refusal = await refused_and_audited(node, node.query(consent=consent), "CONSENT_NOT_FOUND", consent)
    assert OTHER_BANK not in refusal.message  # the bank is not told whose it is
    assert node.last_audit().reason.endswith("[CONSENT_GRANTEE_MISMATCH]")  # the auditors are


async def test_a_category_outside_the_consent_is_refused_and_audited(node: Node):
    node.add(FIRM_REGISTRATION, FIRM_CASE)
    consent = node.grant(categories=("registration",))
    refusal = await refused_and_audited(node, node.query(["registration", "judicial"], consent=consent),
                                        "CONSENT_SCOPE", consent)
    assert "does not cover judicial" in refusal.message


async def test_a_paused_consent_is_refused_and_audited(node: Node):
    node.add(FIRM_REGISTRATION)
    consent = node.grant()
    node.pause(consent)
    node.clock.now += 10
    await refused_and_audited(node, node.query(consent=consent), "CONSENT_PAUSED", consent)


async def test_a_consent_about_another_enterprise_is_refused_and_audited(node: Node):
    node.add(OTHER_FIRM_REGISTRATION)
    consent = node.grant()  # about FIRM
    await refused_and_audited(node, node.query(consent=consent, uscc=OTHER_FIRM), "CONSENT_SUBJECT_MISMATCH", consent)


# --- consent freshness --------------------------------------------------------------------------------


@pytest.mark.parametrize("age_ms, answered", [(30_000, True), (30_001, False)])
async def test_a_node_whose_consents_were_not_confirmed_within_freshness_answers_nothing(node: Node, age_ms, answered):
    confirmed = NOW - age_ms
    await node.start(freshness=ConsentFreshness(lambda: confirmed))  # the default freshness: 30 s
    node.add(FIRM_REGISTRATION)
    consent = node.grant()
    asked = node.query(consent=consent)
    if answered:  # exactly at the limit: still fresh
        outcome, _ = await node.ask(asked)
        assert outcome == query_pb2.NODE_OUTCOME_OK
        return
    refusal = await refused_and_audited(node, asked, "CONSENT_STATUS_UNCONFIRMED", consent)
    assert refusal.kind is Kind.UNAVAILABLE  # the node's own state, not the asker's fault
    assert "in the last 30 s," in refusal.message


async def test_a_worker_whose_view_is_stale_asks_its_sequencer_again_before_refusing(node: Node):
    """A worker just started, or between two polls of its sequencer: its view of the confirmation
    lags; it asks once more and answers when the sequencer's confirmation is fresh."""
    seen = {"confirmed": 0}  # a worker that has not heard from its sequencer yet
    asks = []

    async def ask_sequencer() -> None:
        asks.append(node.clock())
        seen["confirmed"] = NOW - 1_000

    await node.start(freshness=ConsentFreshness(lambda: seen["confirmed"], refresh=ask_sequencer))
    node.add(FIRM_REGISTRATION)
    outcome, _ = await node.ask(node.query(consent=node.grant()))
    assert outcome == query_pb2.NODE_OUTCOME_OK and len(asks) == 1
    outcome, _ = await node.ask(node.query(consent=node.grant()))  # fresh now: no second ask
    assert outcome == query_pb2.NODE_OUTCOME_OK and len(asks) == 1


async def test_a_consent_paused_while_the_worker_asked_its_sequencer_is_refused(node: Node):
    """The sequencer's sync may write a revocation and then confirm, while the worker waits: the
    worker reads the consent again after the wait, and does not answer under what it read before."""
    seen = {"confirmed": 0}
    await node.start(freshness=ConsentFreshness(lambda: seen["confirmed"]))
    node.add(FIRM_REGISTRATION)
    consent = node.grant()

    async def sync_then_confirm() -> None:
        node.pause(consent)
        seen["confirmed"] = NOW

    node.handler.freshness.refresh = sync_then_confirm
    await refused_and_audited(node, node.query(consent=consent), "CONSENT_PAUSED", consent)


async def test_queries_waiting_on_a_stale_view_share_one_ask_and_a_silent_sequencer_refuses_them(node: Node,
                                                                                               monkeypatch):
    import node.consents as consents

    monkeypatch.setattr(consents, "REFRESH_SECONDS", 0.05)
    asks = []

    async def silent_sequencer() -> None:
        asks.append(1)
        await asyncio.Event().wait()  # never answers

    await node.start(freshness=ConsentFreshness(lambda: 0, refresh=silent_sequencer))
    node.add(FIRM_REGISTRATION)
    asked = [node.query(consent=node.grant()) for _ in range(10)]
    outcomes = await asyncio.gather(*(node.ask(a) for a in asked), return_exceptions=True)
    assert len(asks) == 1
    assert all(isinstance(o, Refusal) and o.reason == "CONSENT_STATUS_UNCONFIRMED" for o in outcomes), outcomes


@pytest.mark.parametrize("sequencer", ["stale", "unreachable"])
async def test_a_worker_whose_sequencer_cannot_confirm_refuses(node: Node, sequencer: str):
    async def ask_sequencer() -> None:
        if sequencer == "unreachable":
            raise StoreUnavailable("the sequencer went away; nothing was answered")

    await node.start(freshness=ConsentFreshness(lambda: NOW - 30_001, refresh=ask_sequencer))
    node.add(FIRM_REGISTRATION)
    consent = node.grant()
    refusal = await refused_and_audited(node, node.query(consent=consent), "CONSENT_STATUS_UNCONFIRMED", consent)
    assert refusal.kind is Kind.UNAVAILABLE and "sequencer" not in refusal.message


async def test_a_node_with_no_registry_answers_without_confirmations(node: Node):
    await node.start(freshness=None)
    node.add(FIRM_REGISTRATION)
    outcome, _ = await node.ask(node.query(consent=node.grant()))
    assert outcome == query_pb2.NODE_OUTCOME_OK


# --- consent uses ------------------------------------------------------------------------------------


async def test_a_once_consent_is_spent_by_its_answer_also_after_a_restart(node: Node):
    node.add(FIRM_REGISTRATION)
    consent = node.grant()
    await node.ask(node.query(consent=consent))
    await refused_and_audited(node, node.query(consent=consent), "CONSENT_SPENT")
    await node.restart()  # the use was written with the answer's audit entry, not only counted in memory
    await refused_and_audited(node, node.query(consent=consent), "CONSENT_SPENT")
    assert len(node.store.uses_of(consent.consent_id)) == 1


async def test_a_failing_disk_mid_query_gives_the_consent_its_use_back(node: Node, monkeypatch):
    node.add(FIRM_REGISTRATION)
    consent = node.grant()
    fetch = node.store.fetch_records

    def failing_disk(*args, **kwargs):  # outside the product: simulated
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(node.store, "fetch_records", failing_disk)
    asked = node.query(consent=consent)
    with pytest.raises(OSError):
        await node.answer(asked)
    # The attempt is logged all the same, as denied and why, with the request the registry forwarded.
    assert_fault_audited(node, asked, consent, "STORE_UNAVAILABLE: ")
    assert "Input/output" not in node.last_audit().reason  # the error's own text stays in the operator's log
    monkeypatch.setattr(node.store, "fetch_records", fetch)
    outcome, opened = await node.ask(node.query(consent=consent))  # nothing was answered: the use is still there
    assert outcome == query_pb2.NODE_OUTCOME_OK and categories_of(opened) == ["registration"]


def assert_fault_audited(node: Node, asked: Asked, consent: StoredConsent, reason: str) -> None:
    entry = node.last_audit()
    assert entry.decision == audit_pb2.DECISION_DENY and entry.reason.startswith(reason), entry
    assert entry.action == "query" and entry.caller_id == BANK and entry.uscc == FIRM
    assert entry.request_hash == body_hash(asked.envelope.body).hex() and entry.trace_id == "ab" * 16
    assert entry.consent_id == consent.consent_id and node.store.uses_of(consent.consent_id) == []


async def test_when_the_fault_s_own_audit_entry_cannot_be_written_the_caller_hears_the_fault(node: Node, monkeypatch,
                                                                                             caplog):
    node.add(FIRM_REGISTRATION)
    consent = node.grant()
    before = len(node.audit())

    def failing_disk(*args, **kwargs):  # outside the product: simulated
        raise OSError(errno.EIO, "Input/output error")

    def log_gone(*args, **kwargs):
        raise RuntimeError("the audit log's disk went too")

    monkeypatch.setattr(node.store, "fetch_records", failing_disk)
    monkeypatch.setattr(node.audit_log, "append", log_gone)
    with caplog.at_level(logging.WARNING, logger="xinyi.node"), pytest.raises(OSError):
        await node.answer(node.query(consent=consent))
    warned = [r for r in caplog.records if "could not be written" in r.getMessage()]
    assert len(warned) == 1 and "ab" * 16 in warned[0].getMessage()
    assert warned[0].exc_info and warned[0].exc_info[0] is RuntimeError  # for the operator: why it was not
    assert len(node.audit()) == before and node.store.uses_of(consent.consent_id) == []


async def test_an_unexpected_error_mid_query_is_audited_by_class_only_and_gives_the_use_back(node: Node, monkeypatch):
    node.add(FIRM_REGISTRATION)
    consent = node.grant()
    before = len(node.audit())

    async def bug(*args, **kwargs):
        raise KeyError("secret-looking text 510104199001011234")

    monkeypatch.setattr(node.handler, "minimize", bug)
    asked = node.query(consent=consent)
    with pytest.raises(KeyError):
        await node.answer(asked)
    assert len(node.audit()) == before + 1
    assert_fault_audited(node, asked, consent, "INTERNAL_ERROR: KeyError ")
    assert "510104199001011234" not in node.last_audit().reason


async def test_a_query_cancelled_mid_fetch_gives_the_consent_its_use_back(node: Node, monkeypatch):
    node.add(FIRM_REGISTRATION)
    consent = node.grant()
    fetch = node.store.fetch_records
    started, go_on = threading.Event(), threading.Event()

    def slow_disk(*args, **kwargs):
        started.set()
        go_on.wait(5)
        return fetch(*args, **kwargs)

    monkeypatch.setattr(node.store, "fetch_records", slow_disk)
    asked = node.query(consent=consent)
    task = asyncio.create_task(node.answer(asked))
    assert await asyncio.to_thread(started.wait, 5)
    task.cancel()  # the caller went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_fault_audited(node, asked, consent, "CANCELLED: ")
    go_on.set()
    monkeypatch.setattr(node.store, "fetch_records", fetch)
    outcome, _ = await node.ask(node.query(consent=consent))
    assert outcome == query_pb2.NODE_OUTCOME_OK


# --- an enterprise reading its own records ------------------------------------------------------------


async def test_an_enterprise_reads_its_own_records_unmasked_and_only_its_own(node: Node):
    node.add(FIRM_REGISTRATION, FIRM_TAX, OTHER_FIRM_REGISTRATION)
    outcome, opened = await node.ask(node.self_query(["registration", "tax"]))
    assert outcome == query_pb2.NODE_OUTCOME_OK
    assert categories_of(opened) == ["registration", "tax"]
    assert opened.records[0]["legal_representative"] == "张三"  # its own filing
    assert opened.records[0]["record_id"] == FIRM_REGISTRATION.key
    entry = node.last_audit()
    assert (entry.caller_role, entry.purpose, entry.decision) == ("enterprise", "self_access", audit_pb2.DECISION_ALLOW)
    assert entry.detail == "self_access: 2 records, 0 indicators"


async def test_the_default_self_access_cap_answers_three_a_day_and_refuses_the_fourth(node: Node):
    assert node.handler_options == {}  # built with no self_access rule: the default applies
    assert SelfAccessRule().max_queries == 3 and SelfAccessRule().period == "day"
    node.add(FIRM_REGISTRATION)
    for _ in range(3):
        outcome, opened = await node.ask(node.self_query(["registration"]))
        assert outcome == query_pb2.NODE_OUTCOME_OK and categories_of(opened) == ["registration"]
    refusal = await refused_and_audited(node, node.self_query(["registration"]), "FETCH_LIMIT")
    assert "at most 3 times a day" in refusal.message and "3 were answered" in refusal.message


async def test_a_self_access_cap_of_one_answers_the_first_and_refuses_the_second(node: Node):
    await node.start(self_access=SelfAccessRule(max_queries=1))
    node.add(FIRM_REGISTRATION)
    outcome, _ = await node.ask(node.self_query(["registration"]))
    assert outcome == query_pb2.NODE_OUTCOME_OK
    await refused_and_audited(node, node.self_query(["registration"]), "FETCH_LIMIT")


async def test_an_enterprise_cannot_self_query_another_enterprise(node: Node):
    node.add(FIRM_REGISTRATION)
    envelope, key = build_query(node.parties.other_firm, uscc=FIRM, categories=["registration"], purpose="self_access",
                                consent_id="", now_ms=node.clock())
    await refused_and_audited(node, Asked(envelope, key, FIRM, node.parties.other_firm.principal), "SELF_ACCESS_OF_ANOTHER_ENTERPRISE")
