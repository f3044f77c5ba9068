"""Early-warning alerts: detection rules on hand-made records, the signed and sealed statements,
the rules file, and the node's AlertDesk with a real NodeStore and AuditLog on SQLite and
PostgreSQL (subscribe, ingest, poll after a cursor, nothing twice, an offline bank, revocation
stopping alerts at once), and the registry's relay in front of it. The end-to-end tests at the
bottom run through the real servers once AlertService / NodeAlertService are wired in."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from node.alerts import AlertDesk, AlertStore, alert_store_of, register_tables
from node.ingest import ingest_file
from node.store import NodeStore, Record
from registry.alerts import AlertRelay
from registry.directory import NetworkDirectory
from registry.store import RegistryStore
from xinyi.audit.log import AuditLog
from xinyi.clock import DAY_MS, now_ms
from xinyi.compute.alerts import (
    AlertError,
    AlertRules,
    AlertRulesError,
    StoredAlert,
    build_poll,
    build_subscribe,
    check_monitoring_consent,
    check_poll,
    check_subscribe,
    detect,
    open_alerts,
    sign_alerts,
)
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.crypto.sealing import AnswerKey, seal_to
from xinyi.errors import Kind, Refusal
from xinyi.policy import Authorizer
from xinyi.privacy.consent import apply_change, build_change, build_consent, verify_change, verify_consent
from xinyi.records import uscc as uscc_codes
from xinyi.v1 import alerts_pb2

ROOT = Path(__file__).resolve().parent.parent
LICENCE = "B0014H144030001"
BANK = "914403001922038216"
OTHER_BANK = "91440300708461136T"
FIRM = uscc_codes.with_check_character("91510104MA6CW8J7X")  # Jinjiang, Chengdu
OTHER_FIRM = uscc_codes.with_check_character("91510700MA62TRE4X")  # Mianyang
TODAY = dt.date.today()
RULES = AlertRules()  # the defaults: every kind, a 20 % headcount fall, 180 days


# --- hand-made records ---------------------------------------------------------------------------
def case(case_no="(2026)川0104民初1号", role="defendant", status="pending", uscc=FIRM, as_of="2025-10-01") -> Record:
    return Record(uscc, "judicial", as_of, "成都市锦江区人民法院",
                  {"case_no": case_no, "court": "成都市锦江区人民法院", "filed": "2025-09-01", "role": role,
                   "amount": "50000.00", "status": status})


def penalty(decision_no="成锦市监罚〔2025〕12号", uscc=FIRM, as_of="2025-10-02") -> Record:
    return Record(uscc, "admin_penalty", as_of, "成都市锦江区市场监督管理局",
                  {"decision_no": decision_no, "authority": "成都市锦江区市场监督管理局", "decided": "2025-09-20",
                   "reason": "未按规定公示年度报告", "amount": "5000.00"})


def listing(list_name="严重失信主体名单", listed="2025-09-01", reason="拒不履行法院生效判决", uscc=FIRM) -> Record:
    return Record(uscc, "dishonesty_list", "2025-10-03", "四川省发展和改革委员会",
                  {"list_name": list_name, "authority": "四川省发展和改革委员会", "listed": listed, "reason": reason})


def tax(period: str, rating: str, paid="12000.00", uscc=FIRM) -> Record:
    return Record(uscc, "tax", f"{period}-28", "国家税务总局四川省税务局",
                  {"period": period, "tax_paid": paid, "credit_rating": rating})


def headcount(period: str, count: int, paid="30000.00", uscc=FIRM) -> Record:
    return Record(uscc, "social_security", f"{period}-28", "成都市社会保险事业管理局",
                  {"period": period, "insured_headcount": count, "contributions_paid": paid})


def kinds(found) -> list[str]:
    return [d.kind for d in found]


# --- detection -----------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["pending", "enforcement"])
def test_a_new_open_case_as_defendant_is_detected(status):
    found = detect([], [case(status=status)], RULES)
    assert kinds(found) == ["new_case_as_defendant"]
    assert found[0].summary == f"new court case as defendant, {status}"
    assert found[0].record.key == case(status=status).key


@pytest.mark.parametrize("record", [case(status="closed"), case(role="plaintiff")], ids=["closed", "as-plaintiff"])
def test_a_closed_case_or_one_the_firm_brings_is_no_alarm(record):
    assert detect([], [record], RULES) == []


def test_a_known_case_supplied_again_with_a_new_status_is_not_a_new_case():
    assert detect([case(status="pending")], [case(status="enforcement")], RULES) == []
    # ... and one case twice in one load alerts once.
    assert kinds(detect([], [case(status="pending"), case(status="enforcement")], RULES)) == ["new_case_as_defendant"]


def test_a_new_penalty_is_detected_a_known_decision_is_not():
    assert [(d.kind, d.summary) for d in detect([], [penalty()], RULES)] == [("new_penalty", "new administrative penalty")]
    assert detect([penalty()], [penalty()], RULES) == []  # the same record loaded again
    reworded = dataclasses.replace(penalty(), fields={**penalty().fields, "reason": "另一措辞"})
    assert detect([penalty()], [reworded], RULES) == []  # same decision number: the same penalty
    assert kinds(detect([penalty()], [penalty("成锦市监罚〔2025〕99号")], RULES)) == ["new_penalty"]


def test_a_dishonesty_listing_is_detected_once():
    assert [(d.kind, d.summary) for d in detect([], [listing()], RULES)] == [("dishonesty_listing", "listed as dishonest")]
    assert detect([listing()], [listing(reason="措辞不同")], RULES) == []
    assert kinds(detect([listing()], [listing(listed="2025-11-01")], RULES)) == ["dishonesty_listing"]


def test_a_tax_rating_drop_is_detected_a_rise_or_same_rating_is_not():
    found = detect([tax("2025-09", "A")], [tax("2025-10", "C")], RULES)
    assert [(d.kind, d.summary) for d in found] == [("tax_rating_drop", "rating A -> C, period 2025-10")]
    assert found[0].record.fields["period"] == "2025-10"
    assert detect([tax("2025-09", "B")], [tax("2025-10", "A")], RULES) == []  # a rise
    assert detect([tax("2025-09", "B")], [tax("2025-10", "B")], RULES) == []  # unchanged
    assert kinds(detect([tax("2025-09", "M")], [tax("2025-10", "D")], RULES)) == ["tax_rating_drop"]


def test_a_rating_is_compared_with_the_previous_period_only_when_the_newest_is_news():
    # An older period loaded late (backfill) says nothing about the newest one.
    assert detect([tax("2025-10", "C")], [tax("2025-08", "A")], RULES) == []
    # The newest period's rating supplied again (another amount, same rating): already known.
    assert detect([tax("2025-09", "A"), tax("2025-10", "C")], [tax("2025-10", "C", paid="1.00")], RULES) == []
    # Both periods in one load: compared with each other.
    assert kinds(detect([], [tax("2025-09", "A"), tax("2025-10", "B")], RULES)) == ["tax_rating_drop"]
    # A single period has nothing to drop from.
    assert detect([], [tax("2025-10", "D")], RULES) == []


def test_a_headcount_fall_at_or_over_the_threshold_is_detected():
    found = detect([headcount("2025-09", 100)], [headcount("2025-10", 65)], RULES)
    assert [(d.kind, d.summary) for d in found] == [("headcount_fall", "headcount -35%, period 2025-10")]
    # Exactly the threshold (20 %) counts; 10 % under a 20 % threshold does not; nor does growth.
    assert kinds(detect([headcount("2025-09", 100)], [headcount("2025-10", 80)], RULES)) == ["headcount_fall"]
    assert detect([headcount("2025-09", 100)], [headcount("2025-10", 90)], RULES) == []
    assert detect([headcount("2025-09", 100)], [headcount("2025-10", 120)], RULES) == []
    assert detect([headcount("2025-09", 0)], [headcount("2025-10", 0)], RULES) == []
    # A lower threshold catches the 10 % fall.
    sensitive = AlertRules(headcount_fall_threshold=Decimal("0.05"))
    assert kinds(detect([headcount("2025-09", 100)], [headcount("2025-10", 90)], sensitive)) == ["headcount_fall"]


def test_records_already_held_raise_nothing_and_kinds_switched_off_are_not_detected():
    everything = [case(), penalty(), listing(), tax("2025-09", "A"), tax("2025-10", "D"),
                  headcount("2025-09", 100), headcount("2025-10", 10)]
    assert sorted(kinds(detect([], everything, RULES))) == sorted(
        ["new_case_as_defendant", "new_penalty", "dishonesty_listing", "tax_rating_drop", "headcount_fall"])
    assert detect(everything, everything, RULES) == []
    only_tax = AlertRules(kinds=frozenset({"tax_rating_drop"}))
    assert kinds(detect([], everything, only_tax)) == ["tax_rating_drop"]


def test_each_enterprise_is_compared_with_its_own_records():
    found = detect([tax("2025-09", "A", uscc=FIRM)], [tax("2025-10", "C", uscc=OTHER_FIRM)], RULES)
    assert found == []  # the other firm has one period only
    found = detect([tax("2025-09", "A", uscc=OTHER_FIRM)], [tax("2025-10", "C", uscc=OTHER_FIRM), case()], RULES)
    assert [(d.kind, d.record.uscc) for d in found] == [("new_case_as_defendant", FIRM), ("tax_rating_drop", OTHER_FIRM)]


# --- the rules file ------------------------------------------------------------------------------
def test_the_repository_rules_load_and_a_directory_without_them_uses_the_defaults(tmp_path):
    rules = AlertRules.from_dir(ROOT / "policies")
    assert rules.headcount_fall_threshold == Decimal("0.2") and rules.retention_days == 180
    assert rules.kinds == frozenset(RULES.kinds)
    assert AlertRules.from_dir(tmp_path) == AlertRules()


@pytest.mark.parametrize("text, key", [
    ('[alerts]\nkinds = ["tax_rating_drop"]\nheadcount_fall_threshold = 1.5\nretention_days = 180\n', "headcount_fall_threshold"),
    ('[alerts]\nkinds = ["weather"]\nheadcount_fall_threshold = 0.2\nretention_days = 180\n', "kinds"),
    ('[alerts]\nkinds = []\nheadcount_fall_threshold = 0.2\nretention_days = 0\n', "retention_days"),
    ('[alerts]\nkinds = []\nheadcount_fall_threshold = 0.2\nretention_days = 10\ncolour = "red"\n', "colour"),
    ('[alerts]\nkinds = []\nretention_days = 10\n', "headcount_fall_threshold"),
])
def test_a_wrong_rules_file_is_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "alerts.toml"
    path.write_text(text)
    with pytest.raises(AlertRulesError) as e:
        AlertRules.from_file(path)
    assert str(path) in str(e.value) and key in str(e.value)


# --- identities and consents ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def root() -> RootCA:
    return RootCA.create()


@pytest.fixture(scope="module")
def ids(root):
    def issue(role, pid, licence=""):
        return root.issue(Principal(role, pid), licence=licence)

    return {
        "node": issue(Role.NODE, "510100"),
        "other_node": issue(Role.NODE, "510000"),
        "registry": issue(Role.REGISTRY, "national"),
        "bank": issue(Role.BANK, BANK, LICENCE),
        "other_bank": issue(Role.BANK, OTHER_BANK, LICENCE),
        "firm": issue(Role.ENTERPRISE, FIRM),
        "other_firm": issue(Role.ENTERPRISE, OTHER_FIRM),
    }


def monitoring(ids, *, firm="firm", grantee=BANK, categories=("judicial", "admin_penalty", "dishonesty_list", "tax",
                                                                 "social_security"), **overrides):
    grant = dict(purpose="loan_monitoring", days=90, detail_level="summary", fetch_type="periodic", max_fetches=4,
                 fetch_period="month")
    grant.update(overrides)
    envelope = build_consent(ids[firm], grantee=grantee, categories=list(categories), now_ms=now_ms(), **grant)
    return verify_consent(envelope, ids[firm].trust(), now_ms())


def once_assessment(ids):
    envelope = build_consent(ids["firm"], grantee=BANK, purpose="credit_assessment", categories=["tax", "judicial"],
                             days=30, now_ms=now_ms())
    return verify_consent(envelope, ids["firm"].trust(), now_ms())


# --- signed statements ---------------------------------------------------------------------------
def test_signed_subscribe_and_poll_verify_and_name_their_fields(ids):
    trust = ids["node"].trust()
    v = check_subscribe(build_subscribe(ids["bank"], uscc=FIRM, consent_id="a" * 32, now_ms=now_ms()), trust, now_ms())
    assert v.signer == Principal(Role.BANK, BANK) and v.message.uscc == FIRM
    envelope, key = build_poll(ids["bank"], uscc=FIRM, consent_id="a" * 32, cursors={"510100": 7}, now_ms=now_ms())
    v = check_poll(envelope, trust, now_ms())
    assert dict(v.message.cursors) == {"510100": 7} and v.message.answer_key == key.public_bytes

    # Only a bank signs them.
    with pytest.raises(Refusal) as e:
        check_subscribe(build_subscribe(ids["firm"], uscc=FIRM, consent_id="a" * 32, now_ms=now_ms()), trust, now_ms())
    assert (e.value.kind, e.value.reason) == (Kind.UNAUTHENTICATED, "WRONG_SIGNER_ROLE")
    # Altered after signing.
    altered = build_subscribe(ids["bank"], uscc=FIRM, consent_id="a" * 32, now_ms=now_ms())
    body = alerts_pb2.SubscribeBody.FromString(altered.body)
    body.uscc = OTHER_FIRM
    altered.body = body.SerializeToString()
    with pytest.raises(Refusal) as e:
        check_subscribe(altered, trust, now_ms())
    assert e.value.reason == "BAD_SIGNATURE"
    # Stale.
    with pytest.raises(Refusal) as e:
        check_poll(build_poll(ids["bank"], uscc=FIRM, consent_id="a" * 32, now_ms=now_ms() - 600_000)[0], trust, now_ms())
    assert e.value.reason == "STALE_TIMESTAMP" and e.value.violations[0].field == "poll.issued_at_ms"
    # The bank's own checks before signing.
    with pytest.raises(Refusal) as e:
        build_poll(ids["bank"], uscc=FIRM, consent_id="a" * 32, cursors={"not-a-node": 1}, now_ms=now_ms())
    assert e.value.violations[0].field == "poll.cursors"
    with pytest.raises(Refusal) as e:
        build_subscribe(ids["bank"], uscc="123", consent_id="a" * 32, now_ms=now_ms())
    assert e.value.reason == "INVALID_USCC"


def test_the_consent_behind_alerts_must_be_an_active_periodic_monitoring_one(ids):
    bank = Principal(Role.BANK, BANK)
    good = monitoring(ids)
    assert check_monitoring_consent(good, good.consent_id, bank, FIRM, now_ms()) is good

    def reason(consent, signer=bank, uscc=FIRM, at=None):
        with pytest.raises(Refusal) as e:
            check_monitoring_consent(consent, "b" * 32, signer, uscc, at or now_ms())
        assert e.value.kind is Kind.DENIED
        return e.value.reason

    assert reason(None) == "CONSENT_NOT_FOUND"
    assert reason(once_assessment(ids)) == "NOT_A_MONITORING_CONSENT"
    assert reason(good, signer=Principal(Role.BANK, OTHER_BANK)) == "CONSENT_NOT_FOUND"  # as if unknown: not its own
    assert reason(good, uscc=OTHER_FIRM) == "CONSENT_SUBJECT_MISMATCH"
    assert reason(dataclasses.replace(good, state="revoked")) == "CONSENT_REVOKED"
    assert reason(dataclasses.replace(good, state="paused")) == "CONSENT_PAUSED"
    assert reason(good, at=now_ms() + 91 * DAY_MS) == "CONSENT_EXPIRED"
    assert reason(monitoring(ids, categories=("registration",))) == "CONSENT_SCOPE"


def _sealed(identity, alerts, key: AnswerKey) -> bytes:
    return seal_to(key.public_bytes, sign_alerts(identity, alerts).SerializeToString())


def test_the_bank_opens_a_sealed_batch_and_verifies_every_alert(ids):
    key = AnswerKey.generate()
    stored = [StoredAlert(5, FIRM, "tax_rating_drop", "rating A -> C, period 2025-10", "k" * 64, 1000),
              StoredAlert(9, FIRM, "new_penalty", "new administrative penalty", "p" * 64, 2000)]
    node, cert = ids["node"], ids["node"].signing_cert_der
    opened = open_alerts(_sealed(node, stored, key), key, expected_node="510100", node_signing_cert=cert, uscc=FIRM,
                         after=4, trust=node.trust())
    assert [(a.seq, a.kind, a.summary, a.record_id) for a in opened] == [
        (5, "tax_rating_drop", "rating A -> C, period 2025-10", "k" * 64), (9, "new_penalty", "new administrative penalty", "p" * 64)]
    assert opened[0].signer == Principal(Role.NODE, "510100") and opened[0].to_json()["verified"] is True

    def refused(sealed, **kw) -> str:
        args = dict(expected_node="510100", node_signing_cert=cert, uscc=FIRM, after=0, trust=node.trust()) | kw
        with pytest.raises(AlertError) as e:
            open_alerts(sealed, args.pop("key", key), **args)
        return str(e.value)

    good = _sealed(node, stored, key)
    assert "does not open" in refused(good, key=AnswerKey.generate())  # sealed to another poll
    assert "not after" in refused(good, after=5)  # at or before the cursor: a replay
    assert "is about" in refused(good, uscc=OTHER_FIRM)
    assert "signed by node/510000" in refused(_sealed(ids["other_node"], stored, key))  # another node's signature
    assert "does not list" in refused(good, node_signing_cert=ids["other_node"].signing_cert_der)


# --- the node: real store and audit log, both back ends ------------------------------------------
class NodeEnv:
    def __init__(self, ids, db_url: str, tmp: Path) -> None:
        self.ids = ids
        self.db_url = db_url
        self.tmp = tmp
        self.store = NodeStore(db_url)
        register_tables(self.store)
        self.store.create_schema()
        self.audit_log = AuditLog(self.store, ids["node"], now_ms)
        self.authorizer = Authorizer.from_dir()
        self.desk = AlertDesk(ids["node"], self.store, self.authorizer, self.audit_log, RULES)
        self.bank = Principal(Role.BANK, BANK)
        self._files = 0

    def consent(self, consent) -> str:
        assert self.store.put_consent(consent)
        return consent.consent_id

    def change(self, consent_id: str, action: str) -> None:
        stored = self.store.get_consent(consent_id)
        change = verify_change(build_change(self.ids["firm"], consent_id, action, now_ms()), stored,
                               self.ids["firm"].trust())
        self.store.put_change(apply_change(stored, change), change.at_ms, b"change")

    def ingest(self, *records: Record, store: NodeStore | None = None):
        self._files += 1
        path = self.tmp / f"load{self._files}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"uscc": r.uscc, "category": r.category, "as_of": r.as_of, "source": r.source,
                                    **r.fields}, ensure_ascii=False) + "\n")
        report = ingest_file(path, store or self.store, today=TODAY, alert_rules=RULES)
        assert report.error_count == 0, report.errors
        return report

    async def subscribe(self, consent_id: str, *, signer="bank", caller=None, uscc=FIRM):
        envelope = build_subscribe(self.ids[signer], uscc=uscc, consent_id=consent_id, now_ms=now_ms())
        return await self.desk.subscribe(caller or self.ids[signer].principal, envelope, "trace")

    async def poll(self, consent_id: str, cursor: int = 0, *, caller=None, uscc=FIRM):
        envelope, key = build_poll(self.ids["bank"], uscc=uscc, consent_id=consent_id,
                                   cursors={"510100": cursor} if cursor else {}, now_ms=now_ms())
        answer = await self.desk.poll(caller or self.bank, envelope, "trace")
        alerts = open_alerts(answer.sealed_alerts, key, expected_node="510100",
                             node_signing_cert=self.ids["node"].signing_cert_der, uscc=uscc, after=cursor,
                             trust=self.ids["bank"].trust())
        return alerts, answer

    def audit(self) -> list:
        return [e.record() for e in self.store.audit_entries(0, 1 << 30)]


@pytest.fixture
async def env(ids, db_url, tmp_path):
    e = NodeEnv(ids, db_url, tmp_path)
    await e.audit_log.open()
    yield e
    await e.audit_log.close()
    e.store.close()


async def test_subscribing_needs_a_periodic_monitoring_consent(env: NodeEnv):
    once = env.consent(once_assessment(env.ids))
    with pytest.raises(Refusal) as e:
        await env.subscribe(once)
    assert (e.value.kind, e.value.reason) == (Kind.DENIED, "NOT_A_MONITORING_CONSENT")
    with pytest.raises(Refusal) as e:
        await env.subscribe("c" * 32)
    assert e.value.reason == "CONSENT_NOT_FOUND"
    for_other_bank = env.consent(monitoring(env.ids, grantee=OTHER_BANK))
    with pytest.raises(Refusal) as e:
        await env.subscribe(for_other_bank)
    assert e.value.reason == "CONSENT_NOT_FOUND" and OTHER_BANK not in e.value.message  # as if unknown
    assert await asyncio.to_thread(env.desk.alerts.subscribed, [FIRM]) == set()

    good = env.consent(monitoring(env.ids))
    sub = await env.subscribe(good)
    assert sub.subscribed and sub.node_id == "510100" and sub.since_ms > 0
    again = await env.subscribe(good)  # idempotent: the first subscription's time holds
    assert again.since_ms == sub.since_ms
    await asyncio.sleep(0.2)  # group commit
    decisions = [(r.action, r.decision, r.caller_id, r.reason.split(":")[0]) for r in env.audit()]
    assert decisions[0] == ("subscribe_alerts", 2, BANK, "NOT_A_MONITORING_CONSENT")
    assert [d[1] for d in decisions] == [2, 2, 2, 1, 1]  # three refusals, two subscriptions, all audited


async def test_poll_returns_ingested_alerts_after_the_cursor_and_nothing_twice(env: NodeEnv):
    consent = env.consent(monitoring(env.ids))
    env.ingest(tax("2025-09", "A"), headcount("2025-09", 100))  # before anyone subscribed: no alerts
    assert await asyncio.to_thread(env.desk.alerts.count_alerts) == 0
    await env.subscribe(consent)

    report = env.ingest(tax("2025-10", "C"), headcount("2025-10", 65), case(), case("(2026)川0104民初2号", role="plaintiff"))
    assert report.alerts == 3 and "3 alerts raised" in report.summary()  # the plaintiff case raises none
    alerts, answer = await env.poll(consent)
    assert [(a.kind, a.summary) for a in alerts] == [("new_case_as_defendant", "new court case as defendant, pending"),
                                                     ("tax_rating_drop", "rating A -> C, period 2025-10"),
                                                     ("headcount_fall", "headcount -35%, period 2025-10")]
    assert len(alerts) == 3 and answer.next_cursor == alerts[-1].seq and not answer.more
    assert {a.record_id for a in alerts} == {tax("2025-10", "C").key, headcount("2025-10", 65).key, case().key}

    again, answer = await env.poll(consent, answer.next_cursor)
    assert again == [] and answer.next_cursor == alerts[-1].seq  # nothing twice

    # The same file loaded again raises nothing; a new penalty raises one more.
    assert env.ingest(tax("2025-10", "C"), headcount("2025-10", 65), case()).alerts == 0
    env.ingest(penalty())
    newer, answer = await env.poll(consent, answer.next_cursor)
    assert [a.kind for a in newer] == ["new_penalty"] and newer[0].seq > alerts[-1].seq

    await asyncio.sleep(0.2)
    polls = [r for r in env.audit() if r.action == "poll_alerts"]
    assert [r.reason for r in polls] == ["3 alerts after seq 0", f"0 alerts after seq {alerts[-1].seq}",
                                         f"1 alerts after seq {alerts[-1].seq}"]
    assert all(r.uscc == FIRM and r.consent_id == consent and r.purpose == "loan_monitoring" for r in polls)


async def test_alerts_wait_at_the_node_while_the_bank_is_offline(env: NodeEnv):
    consent = env.consent(monitoring(env.ids))
    await env.subscribe(consent)
    # Three loads while nobody polls; 120 penalties are more than one poll carries.
    env.ingest(tax("2025-09", "A"))
    env.ingest(tax("2025-10", "B"))
    env.ingest(*(penalty(f"成锦市监罚〔2025〕{i}号") for i in range(120)))
    first, answer = await env.poll(consent)
    assert len(first) == 100 and answer.more
    assert first[0].kind == "tax_rating_drop" and [a.seq for a in first] == sorted(a.seq for a in first)
    rest, answer = await env.poll(consent, answer.next_cursor)
    assert len(rest) == 21 and not answer.more
    assert {a.seq for a in first}.isdisjoint(a.seq for a in rest)


async def test_a_revoked_or_paused_consent_stops_alerts_at_once(env: NodeEnv):
    consent = env.consent(monitoring(env.ids))
    await env.subscribe(consent)
    env.ingest(case())
    alerts, _ = await env.poll(consent)
    assert [a.kind for a in alerts] == ["new_case_as_defendant"]

    env.change(consent, "pause")
    with pytest.raises(Refusal) as e:
        await env.poll(consent)
    assert (e.value.kind, e.value.reason) == (Kind.DENIED, "CONSENT_PAUSED")
    env.change(consent, "resume")
    assert len((await env.poll(consent))[0]) == 1

    env.ingest(penalty())  # detected, kept, but never delivered under the revoked consent
    env.change(consent, "revoke")
    with pytest.raises(Refusal) as e:
        await env.poll(consent, alerts[-1].seq)
    assert e.value.reason == "CONSENT_REVOKED"
    await asyncio.sleep(0.2)
    last = env.audit()[-1]
    assert (last.action, last.decision, last.reason.split(":")[0]) == ("poll_alerts", 2, "CONSENT_REVOKED")
    # The next load drops the subscription whose consent ended: nothing more is detected for it.
    env.ingest(listing())
    assert await asyncio.to_thread(env.desk.alerts.subscribed, [FIRM]) == set()


async def test_polling_needs_a_subscription_and_delivers_only_what_the_consent_covers(env: NodeEnv):
    tax_only = env.consent(monitoring(env.ids, categories=("tax",)))
    with pytest.raises(Refusal) as e:
        await env.poll(tax_only)
    assert (e.value.kind, e.value.reason) == (Kind.PRECONDITION, "NOT_SUBSCRIBED")
    await env.subscribe(tax_only)
    env.ingest(tax("2025-09", "A"), tax("2025-10", "D"), case(), penalty())
    alerts, _ = await env.poll(tax_only)
    assert [a.kind for a in alerts] == ["tax_rating_drop"]  # the case and the penalty are not its business
    assert await asyncio.to_thread(env.desk.alerts.count_alerts, FIRM) == 3


async def test_a_later_subscriber_gets_only_alerts_detected_after_it_subscribed(env: NodeEnv):
    mine = env.consent(monitoring(env.ids))
    theirs = env.consent(monitoring(env.ids, grantee=OTHER_BANK))
    envelope = build_subscribe(env.ids["other_bank"], uscc=FIRM, consent_id=theirs, now_ms=now_ms())
    await env.desk.subscribe(Principal(Role.BANK, OTHER_BANK), envelope)
    env.ingest(case())
    await asyncio.sleep(0.01)
    await env.subscribe(mine)
    env.ingest(penalty())
    alerts, _ = await env.poll(mine)
    assert [a.kind for a in alerts] == ["new_penalty"]


async def test_only_the_bank_itself_or_the_registry_hands_over_its_statements(env: NodeEnv):
    consent = env.consent(monitoring(env.ids))
    sub = await env.subscribe(consent, caller=Principal(Role.REGISTRY, "national"))
    assert sub.subscribed
    with pytest.raises(Refusal) as e:
        await env.subscribe(consent, caller=Principal(Role.BANK, OTHER_BANK))
    assert e.value.reason == "RELAY_NOT_ALLOWED"
    alerts, _ = await env.poll(consent, caller=Principal(Role.REGISTRY, "national"))
    assert alerts == []
    # A poll sent twice is a replay.
    envelope, _ = build_poll(env.ids["bank"], uscc=FIRM, consent_id=consent, now_ms=now_ms())
    await env.desk.poll(env.bank, envelope)
    with pytest.raises(Refusal) as e:
        await env.desk.poll(env.bank, envelope)
    assert e.value.reason == "REPLAYED_NONCE"
    await asyncio.sleep(0.2)
    relayed = [r for r in env.audit() if r.relayed_by]
    assert relayed and all(r.relayed_by == "national" and r.caller_id == BANK for r in relayed)


async def test_ingesting_for_enterprises_nobody_watches_raises_nothing(env: NodeEnv):
    consent = env.consent(monitoring(env.ids))
    await env.subscribe(consent)
    report = env.ingest(tax("2025-09", "A", uscc=OTHER_FIRM), tax("2025-10", "D", uscc=OTHER_FIRM),
                        case(uscc=OTHER_FIRM), tax("2025-09", "A"))
    assert report.alerts == 0 and report.inserted == 4
    assert await asyncio.to_thread(env.desk.alerts.count_alerts) == 0


async def test_the_ingest_command_finds_the_alert_tables_in_the_database(env: NodeEnv):
    """`xinyi node ingest` opens its own NodeStore: detection works when the node made the tables."""
    consent = env.consent(monitoring(env.ids))
    await env.subscribe(consent)
    own = NodeStore(env.db_url)
    try:
        assert "alerts" not in own.metadata.tables
        own.create_schema()
        assert alert_store_of(own) is not None
        assert env.ingest(penalty(), store=own).alerts == 1
    finally:
        own.close()
    fresh = NodeStore(env.db_url.replace("test.db", "fresh.db")) if env.db_url.startswith("sqlite") else None
    if fresh is not None:  # a new database has every node table (the migrations make them): nobody watches
        fresh.create_schema()
        assert alert_store_of(fresh) is not None
        assert env.ingest(penalty(), store=fresh).alerts == 0
        fresh.close()


async def test_old_alerts_are_pruned_and_a_seq_is_never_reused(env: NodeEnv):
    alerts: AlertStore = env.desk.alerts
    consent = env.consent(monitoring(env.ids))
    await env.subscribe(consent)
    env.ingest(penalty("a"), penalty("b"))
    top = max(a.seq for a in (await env.poll(consent))[0])
    assert await asyncio.to_thread(alerts.prune, now_ms() + 1, 0) == (2, 0)  # everything is past a 0 ms retention
    assert await asyncio.to_thread(alerts.count_alerts) == 0
    env.ingest(penalty("c"))
    fresh, _ = await env.poll(consent, top)
    assert [a.seq > top for a in fresh] == [True]  # a bank at cursor `top` still gets it


# --- the registry's relay in front of the node ----------------------------------------------------
class DirectLink:
    """registry.alerts.NodeAlertLink without gRPC: the registry calls the node's desk directly."""

    def __init__(self, desks: dict[str, AlertDesk]) -> None:
        self.desks = desks
        self.registry = Principal(Role.REGISTRY, "national")

    async def subscribe(self, node, envelope):
        try:
            return await self.desks[node.node_id].subscribe(self.registry, envelope)
        except Refusal as r:
            return alerts_pb2.AlertSubscription(node_id=node.node_id, error=f"{r.kind.value}: {r}",
                                                error_code=r.kind.value, error_reason=r.reason)

    async def poll(self, node, envelope):
        try:
            return await self.desks[node.node_id].poll(self.registry, envelope)
        except Refusal as r:
            return alerts_pb2.NodeAlerts(node_id=node.node_id, error=f"{r.kind.value}: {r}", error_code=r.kind.value,
                                         error_reason=r.reason)


@pytest.fixture
async def relay(env: NodeEnv, databases):
    store = RegistryStore(databases.new("registry"))
    store.create_schema()
    log = AuditLog(store, env.ids["registry"], now_ms)
    await log.open()
    directory = NetworkDirectory(env.ids["registry"], store, now_ms)
    await directory.load()
    await directory.register(Principal(Role.NODE, "510100"), "127.0.0.1:1", env.ids["node"].signing_cert_der, [])
    r = AlertRelay(directory, store, env.authorizer, DirectLink({"510100": env.desk}), log, now_ms)
    yield r
    await log.close()
    store.close()


async def test_the_registry_relays_and_rechecks_the_consent_on_every_poll(env: NodeEnv, relay: AlertRelay):
    consent = monitoring(env.ids)
    env.consent(consent)
    relay.store.put_consent(consent)
    bank = Principal(Role.BANK, BANK)
    subs = await relay.subscribe(bank, build_subscribe(env.ids["bank"], uscc=FIRM, consent_id=consent.consent_id,
                                                        now_ms=now_ms()))
    assert [(s.node_id, s.subscribed) for s in subs] == [("510100", True)]
    env.ingest(case())
    envelope, key = build_poll(env.ids["bank"], uscc=FIRM, consent_id=consent.consent_id, now_ms=now_ms())
    [node] = await relay.poll(bank, envelope)
    opened = open_alerts(node.sealed_alerts, key, expected_node="510100",
                         node_signing_cert=env.ids["node"].signing_cert_der, uscc=FIRM, after=0,
                         trust=env.ids["bank"].trust())
    assert [a.kind for a in opened] == ["new_case_as_defendant"]

    # Sent by someone other than the signer: refused at the registry.
    envelope, _ = build_poll(env.ids["bank"], uscc=FIRM, consent_id=consent.consent_id, now_ms=now_ms())
    with pytest.raises(Refusal) as e:
        await relay.poll(Principal(Role.BANK, OTHER_BANK), envelope)
    assert e.value.reason == "SIGNER_IS_NOT_CALLER"

    # Revoked at the registry (before the node has heard): the poll stops there, at once.
    stored = relay.store.get_consent(consent.consent_id)
    change = verify_change(build_change(env.ids["firm"], consent.consent_id, "revoke", now_ms()), stored,
                           env.ids["firm"].trust())
    relay.store.put_change(apply_change(stored, change), change.at_ms, b"change")
    envelope, _ = build_poll(env.ids["bank"], uscc=FIRM, consent_id=consent.consent_id, now_ms=now_ms())
    with pytest.raises(Refusal) as e:
        await relay.poll(bank, envelope)
    assert (e.value.kind, e.value.reason) == (Kind.DENIED, "CONSENT_REVOKED")
    await asyncio.sleep(0.2)
    records = [e.record() for e in relay.store.audit_entries(0, 100)]
    assert [(r.action, r.decision) for r in records] == [("subscribe_alerts", 1), ("poll_alerts", 1),
                                                         ("poll_alerts", 2), ("poll_alerts", 2)]
    assert records[1].detail == "510100=ok" and records[3].reason.startswith("CONSENT_REVOKED")


async def test_a_node_refusal_is_that_nodes_outcome_not_the_polls(env: NodeEnv, relay: AlertRelay):
    consent = monitoring(env.ids)
    relay.store.put_consent(consent)  # the registry knows it; the node does not (yet)
    bank = Principal(Role.BANK, BANK)
    subs = await relay.subscribe(bank, build_subscribe(env.ids["bank"], uscc=FIRM, consent_id=consent.consent_id,
                                                        now_ms=now_ms()))
    assert [(s.subscribed, s.error_code, s.error_reason) for s in subs] == [(False, "PERMISSION_DENIED", "CONSENT_NOT_FOUND")]


# --- end to end, through the real servers (run once AlertService / NodeAlertService are wired) ----
@pytest.fixture
async def wired(network):
    """The `network` fixture, or a skip while the servers do not serve the alert services yet."""
    from xinyi.cli.alerts import AlertClient
    from xinyi.client import ClientError

    probe = network._track(AlertClient(network.identity(Role.BANK, BANK), network.registry_addr))
    try:
        await probe.subscribe(FIRM, "0" * 32)
    except ClientError as e:
        if e.failure.code == "UNIMPLEMENTED":
            pytest.skip("AlertService is not served yet: wire node/alerts_service.py and registry/alerts_service.py "
                        "into node/server.py and registry/server.py")
        assert e.failure.reason == "CONSENT_NOT_FOUND"
    return network


async def _grant_monitoring(net, categories=("judicial", "admin_penalty", "tax", "social_security")) -> str:
    record = await net.enterprise(FIRM).grant(BANK, "loan_monitoring", list(categories), 90, detail_level="summary",
                                              fetch_type="periodic", max_fetches=4, fetch_period="month")
    return record.consent_id


def _load(net, node_id: str, *records: Record) -> int:
    path = net.tmp / f"alerts-{node_id}-{now_ms()}.jsonl"
    path.write_text("".join(json.dumps({"uscc": r.uscc, "category": r.category, "as_of": r.as_of, "source": r.source,
                                        **r.fields}, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return ingest_file(path, net.nodes[node_id].store, today=TODAY).alerts


def _watch_args(net, consent: str, state: Path, **kw):
    import argparse

    bank_dir = net.identity(Role.BANK, BANK).save(net.tmp / "ids")
    return argparse.Namespace(identity=str(bank_dir), registry=net.registry_addr, uscc=FIRM, consent=consent,
                              once=True, interval=0.2, state=str(state), json=True, **kw)


async def test_e2e_a_bank_subscribes_and_polls_signed_sealed_alerts_from_every_node(wired):
    from xinyi.cli.alerts import AlertClient

    net = wired
    consent = await _grant_monitoring(net)
    bank = net._track(AlertClient(net.identity(Role.BANK, BANK), net.registry_addr))
    subs = await bank.subscribe(FIRM, consent)
    assert sorted((s.node_id, s.subscribed) for s in subs) == [("510000", True), ("510100", True)]

    # Sichuan's tax office rates the firm C for 2026-06 (A for 2026-05 in the seed); Chengdu's court
    # files a new case against it.
    assert await asyncio.to_thread(_load, net, "510000", tax("2026-06", "C")) == 1
    assert await asyncio.to_thread(_load, net, "510100", case("(2026)川01民初999号")) == 1

    result = await bank.poll(FIRM, consent)
    assert not result.problems and sorted(result.answered) == ["510000", "510100"]
    assert sorted((a.node_id, a.kind, a.summary) for a in result.alerts) == [
        ("510000", "tax_rating_drop", "rating A -> C, period 2026-06"),
        ("510100", "new_case_as_defendant", "new court case as defendant, pending")]
    assert set(result.cursors) == {"510000", "510100"}
    again = await bank.poll(FIRM, consent, result.cursors)
    assert again.alerts == [] and again.cursors == result.cursors  # nothing twice

    # Each node and the registry audited the subscription and every poll.
    for server in (net.registry, net.nodes["510000"], net.nodes["510100"]):
        await asyncio.sleep(0.1)
        actions = [e.record().action for e in await asyncio.to_thread(server.store.find_audit, uscc=FIRM)]
        assert actions.count("subscribe_alerts") >= 1 and actions.count("poll_alerts") == 2


async def test_e2e_revoking_the_consent_stops_the_alerts_at_once(wired):
    from xinyi.cli.alerts import AlertClient
    from xinyi.client import ClientError

    net = wired
    consent = await _grant_monitoring(net)
    bank = net._track(AlertClient(net.identity(Role.BANK, BANK), net.registry_addr))
    await bank.subscribe(FIRM, consent)
    await asyncio.to_thread(_load, net, "510100", penalty())
    assert [a.kind for a in (await bank.poll(FIRM, consent)).alerts] == ["new_penalty"]
    await net.enterprise(FIRM).revoke(consent)
    with pytest.raises(ClientError) as e:
        await bank.poll(FIRM, consent)
    assert (e.value.failure.code, e.value.failure.reason) == ("PERMISSION_DENIED", "CONSENT_REVOKED")


async def test_e2e_a_once_assessment_consent_cannot_be_subscribed(wired):
    from xinyi.cli.alerts import AlertClient
    from xinyi.client import ClientError

    consent = await wired.grant(FIRM, BANK, "credit_assessment", ("tax", "judicial"), 30)
    bank = wired._track(AlertClient(wired.identity(Role.BANK, BANK), wired.registry_addr))
    with pytest.raises(ClientError) as e:
        await bank.subscribe(FIRM, consent)
    assert (e.value.failure.code, e.value.failure.reason) == ("PERMISSION_DENIED", "NOT_A_MONITORING_CONSENT")


async def test_e2e_watch_prints_each_alert_once_and_keeps_its_cursors(wired, tmp_path, capsys):
    from xinyi.cli.alerts import AlertClient, cmd_watch
    from xinyi.cli.common import CommandError

    net = wired
    consent = await _grant_monitoring(net)
    await net._track(AlertClient(net.identity(Role.BANK, BANK), net.registry_addr)).subscribe(FIRM, consent)
    state = tmp_path / "watch.json"
    args = _watch_args(net, consent, state)
    await asyncio.to_thread(cmd_watch, args)  # nothing yet
    assert capsys.readouterr().out == ""

    # The bank is offline while two loads arrive; the next watch prints both, once.
    await asyncio.to_thread(_load, net, "510000", tax("2026-06", "D"))
    await asyncio.to_thread(_load, net, "510100", penalty())
    await asyncio.to_thread(cmd_watch, args)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((p["node"], p["kind"]) for p in printed) == [("510000", "tax_rating_drop"), ("510100", "new_penalty")]
    assert all(p["verified"] for p in printed)
    saved = json.loads(state.read_text())
    assert saved["uscc"] == FIRM and saved["cursors"] == {p["node"]: p["seq"] for p in printed}
    await asyncio.to_thread(cmd_watch, args)
    assert capsys.readouterr().out == ""  # kept cursors: nothing twice

    await net.enterprise(FIRM).revoke(consent)
    with pytest.raises(CommandError) as e:
        await asyncio.to_thread(cmd_watch, args)
    assert e.value.code == 1 and "revoked" in str(e.value)
