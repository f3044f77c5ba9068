"""In-process tests of the consent checks in xinyi/privacy/consent.py, one boundary and one branch at a time.

Written for mutation testing (mutation.toml lists this file for the module): every comparison, boolean
operator, constant and refusal of the checks is pinned by a test that fails when it changes, with real
signed consents, delegations and changes and a fixed clock; no servers, milliseconds per test.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from xinyi.clock import DAY_MS, MINUTE_MS
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA, TrustAnchor
from xinyi.errors import Kind, Refusal
from xinyi.privacy.consent import (
    MAX_CONSENT_DAYS,
    ConsentAsk,
    Status,
    StoredConsent,
    _check_fields,
    apply_change,
    build_change,
    build_consent,
    build_delegation,
    check_consent_id,
    check_covers,
    check_grantable,
    consent_id_for,
    is_joint_for,
    status_of,
    use_refusal,
    verify_change,
    verify_consent,
    verify_delegation,
)
from xinyi.privacy.fairuse import FairUse
from xinyi.records.uscc import with_check_character
from xinyi.records.vocab import purpose_problem
from xinyi.v1 import consent_pb2, envelope_pb2

NOW = 1_800_000_000_000  # the clock: a fixed time in ms, never the wall clock
FIRM = with_check_character("91510104MA6CW8J7X")
OTHER_FIRM = with_check_character("91310115MA1K3Y9P2")
BANK = "914403001922038216"
OTHER_BANK = "91440300708461136T"
GUARANTOR = "91100000100003962T"
LICENCE = "B0014H144030001"
LONG_AGO = dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc)  # before any certificate here was issued


@pytest.fixture(scope="module")
def ids():
    root = RootCA.create()
    return {
        "trust": TrustAnchor(root.cert),
        "firm": root.issue(Principal(Role.ENTERPRISE, FIRM)),
        "other_firm": root.issue(Principal(Role.ENTERPRISE, OTHER_FIRM)),
        "bank": root.issue(Principal(Role.BANK, BANK), licence=LICENCE),
        "rep": root.issue(Principal(Role.REPRESENTATIVE, "zhang-wei")),
    }


def refused(call, *args, **kwargs) -> Refusal:
    with pytest.raises(Refusal) as caught:
        call(*args, **kwargs)
    return caught.value


def assert_refusal(refusal: Refusal, kind: Kind, reason: str, field: str) -> None:
    assert (refusal.kind, refusal.reason) == (kind, reason), refusal
    assert [v.field for v in refusal.violations] == [field]
    assert str(refusal).startswith(f"{field}: ")  # the message names the field


def stored(**changes) -> StoredConsent:
    """A stored consent, active at NOW, for BANK with GUARANTOR beside it."""
    base = StoredConsent(consent_id="a" * 32, uscc=FIRM, grantee=BANK, purpose="credit_assessment",
                         categories=("registration", "tax"), valid_from_ms=NOW - DAY_MS, valid_until_ms=NOW + DAY_MS,
                         envelope=b"", co_grantee=GUARANTOR, state_at_ms=NOW - DAY_MS)
    return replace(base, **changes)


# --- check_consent_id: present, then 32 lower-case hex characters ---------------------------------
def test_a_missing_consent_id_is_denied_as_missing_naming_the_field():
    assert_refusal(refused(check_consent_id, ""), Kind.DENIED, "CONSENT_MISSING", "consent_id")
    assert_refusal(refused(check_consent_id, "", "query.consent_id"), Kind.DENIED, "CONSENT_MISSING", "query.consent_id")


@pytest.mark.parametrize("bad", ["A" * 32, "a" * 31, "a" * 33, "g" * 32, " " + "a" * 31])
def test_a_malformed_consent_id_is_invalid(bad):
    assert_refusal(refused(check_consent_id, bad, "change.consent_id"), Kind.INVALID, "INVALID_FIELD",
                   "change.consent_id")


def test_a_well_formed_consent_id_is_returned():
    assert check_consent_id("0123456789abcdef" * 2) == "0123456789abcdef" * 2


# --- status_of: revoked, then the validity window, then paused, then spent --------------------------
def test_status_is_active_inside_the_window_from_its_first_ms_to_its_last():
    c = stored()
    assert status_of(c, NOW) is Status.ACTIVE  # default uses: 0, a once consent not yet used
    assert status_of(c, c.valid_from_ms) is Status.ACTIVE
    assert status_of(c, c.valid_until_ms - 1) is Status.ACTIVE


def test_status_is_expired_from_valid_until_and_not_yet_valid_before_valid_from():
    c = stored()
    assert status_of(c, c.valid_until_ms) is Status.EXPIRED
    assert status_of(c, c.valid_from_ms - 1) is Status.NOT_YET_VALID


def test_revoked_wins_over_the_window_and_the_window_over_paused():
    assert status_of(stored(state="revoked"), NOW) is Status.REVOKED
    assert status_of(stored(state="revoked"), NOW + 2 * DAY_MS) is Status.REVOKED
    assert status_of(stored(state="paused"), NOW) is Status.PAUSED
    assert status_of(stored(state="paused"), NOW + 2 * DAY_MS) is Status.EXPIRED
    assert status_of(stored(state="paused"), NOW - 2 * DAY_MS) is Status.NOT_YET_VALID
    assert status_of(stored(state="paused"), NOW, uses=1) is Status.PAUSED


def test_a_once_consent_is_spent_by_its_first_use_a_periodic_one_never():
    assert status_of(stored(), NOW, uses=0) is Status.ACTIVE
    assert status_of(stored(), NOW, uses=1) is Status.SPENT
    assert status_of(stored(), NOW, uses=2) is Status.SPENT
    periodic = stored(fetch_type="periodic", max_fetches=4, fetch_period="month")
    assert status_of(periodic, NOW, uses=5) is Status.ACTIVE
    assert status_of(periodic, NOW, uses=0) is Status.ACTIVE


# --- StoredConsent.fetch_window_start / fetch_limit: where uses count from, and how many ------------
UTC = dt.timezone.utc
BEIJING_EARLY = int(dt.datetime(2026, 3, 14, 19, 20, 45, 123000, tzinfo=UTC).timestamp() * 1000)  # 03:20 on the 15th


def test_a_once_consent_counts_uses_from_the_start_and_allows_one():
    once = stored(max_fetches=5)
    assert once.fetch_window_start(BEIJING_EARLY) == 0
    assert once.fetch_limit == 1


def test_a_periodic_consent_counts_from_the_beijing_day_or_month_and_allows_max_fetches():
    daily = stored(fetch_type="periodic", max_fetches=3, fetch_period="day")
    monthly = replace(daily, fetch_period="month")
    # 03:20 in Beijing is still the 14th in UTC: the window follows Beijing's calendar.
    assert daily.fetch_window_start(BEIJING_EARLY) == int(dt.datetime(2026, 3, 14, 16, tzinfo=UTC).timestamp() * 1000)
    assert monthly.fetch_window_start(BEIJING_EARLY) == int(dt.datetime(2026, 2, 28, 16, tzinfo=UTC).timestamp() * 1000)
    assert (daily.fetch_limit, monthly.fetch_limit) == (3, 3)


# --- verify_delegation: signed by an enterprise, for itself, naming a representative ----------------
def test_a_delegation_signed_by_the_enterprise_is_returned(ids):
    body = verify_delegation(build_delegation(ids["firm"], "zhang-wei", days=10, now_ms=NOW), ids["trust"])
    assert (body.uscc, body.representative, body.valid_until_ms) == (FIRM, "zhang-wei", NOW + 10 * DAY_MS)


def test_a_delegation_signed_by_anyone_but_an_enterprise_is_refused(ids):
    env = sign(ids["bank"], consent_pb2.DelegationBody(uscc=BANK, representative="zhang-wei", valid_until_ms=NOW))
    assert_refusal(refused(verify_delegation, env, ids["trust"]), Kind.UNAUTHENTICATED, "WRONG_SIGNER_ROLE",
                   "delegation.signer_cert")


def test_a_delegation_for_another_enterprise_is_refused(ids):
    env = sign(ids["firm"], consent_pb2.DelegationBody(uscc=OTHER_FIRM, representative="zhang-wei",
                                                       valid_until_ms=NOW + DAY_MS))
    assert_refusal(refused(verify_delegation, env, ids["trust"]), Kind.UNAUTHENTICATED, "DELEGATION_SIGNER_MISMATCH",
                   "delegation.uscc")


def test_a_delegation_naming_no_representative_is_invalid(ids):
    env = build_delegation(ids["firm"], "", days=10, now_ms=NOW)
    assert_refusal(refused(verify_delegation, env, ids["trust"]), Kind.INVALID, "INVALID_FIELD",
                   "delegation.representative")


# --- verify_consent: the signer, the delegation behind a representative, and what is stored ---------
def test_a_consent_signed_by_its_enterprise_is_stored_with_every_field_read(ids):
    env = build_consent(ids["firm"], grantee=BANK, purpose="loan_monitoring", categories=["tax", "registration"],
                        days=30, now_ms=NOW, detail_level="summary", history_months=6, fetch_type="periodic",
                        max_fetches=3, fetch_period="month", co_grantee=GUARANTOR)
    c = verify_consent(env, ids["trust"], NOW + 7)
    assert c == StoredConsent(
        consent_id=consent_id_for(env.body), uscc=FIRM, grantee=BANK, purpose="loan_monitoring",
        categories=("registration", "tax"), valid_from_ms=NOW, valid_until_ms=NOW + 30 * DAY_MS,
        envelope=env.SerializeToString(deterministic=True), detail_level="summary", history_months=6,
        fetch_type="periodic", max_fetches=3, fetch_period="month", signed_by=f"enterprise/{FIRM}",
        co_grantee=GUARANTOR, delegation=None, state="active", state_at_ms=NOW, received_at_ms=NOW + 7)


def test_a_once_consent_is_stored_with_one_fetch_whatever_it_says_and_no_period(ids):
    for said in (0, 5):
        body = consent_pb2.ConsentBody(
            uscc=FIRM, grantee=BANK, purpose="credit_assessment", categories=["tax", "registration", "tax"],
            valid_from_ms=NOW, valid_until_ms=NOW + DAY_MS, issued_at_ms=NOW - 3,
            detail_level=consent_pb2.DETAIL_LEVEL_DETAIL, history_months=12, fetch_type=consent_pb2.FETCH_TYPE_ONCE,
            max_fetches=said, fetch_period=consent_pb2.FETCH_PERIOD_DAY)
        c = verify_consent(sign(ids["firm"], body), ids["trust"], NOW)
        assert (c.max_fetches, c.fetch_type, c.detail_level) == (1, "once", "detail")
        assert c.categories == ("registration", "tax") and c.state_at_ms == NOW - 3 and c.co_grantee == ""


def test_an_enterprise_consenting_for_another_enterprise_is_refused(ids):
    env = build_consent(ids["firm"], uscc=OTHER_FIRM, grantee=BANK, purpose="credit_assessment", categories=["tax"],
                        days=10, now_ms=NOW)
    assert_refusal(refused(verify_consent, env, ids["trust"], NOW), Kind.UNAUTHENTICATED, "CONSENT_SIGNER_MISMATCH",
                   "consent.uscc")


def test_a_consent_signed_by_a_bank_or_a_certificate_not_valid_at_the_time_asked_is_refused(ids):
    by_bank = build_consent(ids["bank"], uscc=FIRM, grantee=OTHER_BANK, purpose="credit_assessment",
                            categories=["tax"], days=10, now_ms=NOW)
    assert_refusal(refused(verify_consent, by_bank, ids["trust"], NOW), Kind.UNAUTHENTICATED, "WRONG_SIGNER_ROLE",
                   "consent.signer_cert")
    env = build_consent(ids["firm"], grantee=BANK, purpose="credit_assessment", categories=["tax"], days=10, now_ms=NOW)
    assert_refusal(refused(verify_consent, env, ids["trust"], NOW, at=LONG_AGO), Kind.UNAUTHENTICATED,
                   "BAD_CERTIFICATE", "consent.signer_cert")


def rep_consent(ids, issued_at_ms: int, uscc: str = FIRM):
    return build_consent(ids["rep"], uscc=uscc, grantee=BANK, purpose="credit_assessment", categories=["tax"],
                         days=10, now_ms=issued_at_ms)


def test_a_representatives_consent_is_stored_with_its_delegation(ids):
    delegation = build_delegation(ids["firm"], "zhang-wei", days=10, now_ms=NOW)
    c = verify_consent(rep_consent(ids, NOW + 1), ids["trust"], NOW + 2, delegation)
    assert c.delegation == delegation.SerializeToString(deterministic=True)
    assert (c.uscc, c.signed_by, c.state_at_ms) == (FIRM, "representative/zhang-wei", NOW + 1)


def test_a_representative_without_a_delegation_is_not_delegated(ids):
    for delegation in (None, envelope_pb2.SignedEnvelope()):  # none, or one with no body
        assert_refusal(refused(verify_consent, rep_consent(ids, NOW), ids["trust"], NOW, delegation), Kind.DENIED,
                       "NOT_DELEGATED", "consent.signer_cert")


def test_a_delegation_for_another_enterprise_or_representative_does_not_delegate(ids):
    for_other_firm = build_delegation(ids["other_firm"], "zhang-wei", days=10, now_ms=NOW)
    for_other_rep = build_delegation(ids["firm"], "li-na", days=10, now_ms=NOW)
    for delegation in (for_other_firm, for_other_rep):
        assert_refusal(refused(verify_consent, rep_consent(ids, NOW), ids["trust"], NOW, delegation), Kind.DENIED,
                       "NOT_DELEGATED", "consent.signer_cert")


def test_the_delegation_behind_a_consent_is_itself_verified(ids):
    forged = sign(ids["bank"], consent_pb2.DelegationBody(uscc=FIRM, representative="zhang-wei",
                                                          valid_until_ms=NOW + DAY_MS))
    assert_refusal(refused(verify_consent, rep_consent(ids, NOW), ids["trust"], NOW, forged), Kind.UNAUTHENTICATED,
                   "WRONG_SIGNER_ROLE", "delegation.signer_cert")


def test_a_delegation_is_in_force_from_its_issue_to_its_end_inclusive_unless_revoked(ids):
    delegation = build_delegation(ids["firm"], "zhang-wei", days=10, now_ms=NOW)
    for signed_at in (NOW, NOW + 10 * DAY_MS):
        assert verify_consent(rep_consent(ids, signed_at), ids["trust"], NOW, delegation).uscc == FIRM
    for signed_at in (NOW - 1, NOW + 10 * DAY_MS + 1):
        assert_refusal(refused(verify_consent, rep_consent(ids, signed_at), ids["trust"], NOW, delegation),
                       Kind.DENIED, "DELEGATION_NOT_IN_FORCE", "consent.signer_cert")
    revoked = build_delegation(ids["firm"], "zhang-wei", days=10, now_ms=NOW, revoked=True)
    assert_refusal(refused(verify_consent, rep_consent(ids, NOW + 1), ids["trust"], NOW, revoked), Kind.DENIED,
                   "DELEGATION_NOT_IN_FORCE", "consent.signer_cert")


def test_the_fields_of_a_signed_consent_are_checked(ids):
    env = build_consent(ids["firm"], grantee=FIRM, purpose="credit_assessment", categories=["tax"], days=10, now_ms=NOW)
    assert_refusal(refused(verify_consent, env, ids["trust"], NOW), Kind.INVALID, "INVALID_FIELD", "consent.grantee")


# --- _check_fields: each field of a consent body, at its boundary ----------------------------------
def body(**changes) -> consent_pb2.ConsentBody:
    """A valid once consent body; `changes` override its fields."""
    fields = dict(uscc=FIRM, grantee=BANK, purpose="credit_assessment", categories=["registration", "tax"],
                  valid_from_ms=NOW, valid_until_ms=NOW + DAY_MS, issued_at_ms=NOW,
                  detail_level=consent_pb2.DETAIL_LEVEL_DETAIL, history_months=12,
                  fetch_type=consent_pb2.FETCH_TYPE_ONCE)
    fields.update(changes)
    return consent_pb2.ConsentBody(**fields)


PERIODIC = dict(fetch_type=consent_pb2.FETCH_TYPE_PERIODIC, max_fetches=1, fetch_period=consent_pb2.FETCH_PERIOD_MONTH)


@pytest.mark.parametrize("good", [
    {}, {"co_grantee": GUARANTOR}, {"valid_until_ms": NOW + 1}, {"valid_until_ms": NOW + MAX_CONSENT_DAYS * DAY_MS},
    {"detail_level": consent_pb2.DETAIL_LEVEL_SUMMARY}, {"history_months": 1}, {"history_months": 1200}, PERIODIC,
    {**PERIODIC, "fetch_period": consent_pb2.FETCH_PERIOD_DAY}, {**PERIODIC, "max_fetches": 1000},
    {"categories": ["tax"]},
], ids=repr)
def test_a_consent_body_at_each_limit_passes(good):
    assert _check_fields(body(**good)) is None


@pytest.mark.parametrize("changes, field, words", [
    ({"grantee": "not-a-uscc"}, "consent.grantee", "must be the USCC of a bank or guarantor"),
    ({"grantee": FIRM}, "consent.grantee", "cannot grant consent to itself"),
    ({"co_grantee": "91100000100003962X"}, "consent.co_grantee", "must be the USCC of a bank or guarantor"),
    ({"co_grantee": BANK}, "consent.co_grantee", "another institution"),
    ({"co_grantee": FIRM}, "consent.co_grantee", "another institution"),
    ({"categories": []}, "consent.categories", "at least one category"),
    ({"categories": ["tax", "horoscope"]}, "consent.categories", "'horoscope'"),
    ({"valid_until_ms": NOW}, "consent.valid_until_ms", "must be after valid_from_ms"),
    ({"valid_until_ms": NOW - 1}, "consent.valid_until_ms", "must be after valid_from_ms"),
    ({"valid_until_ms": NOW + MAX_CONSENT_DAYS * DAY_MS + 1}, "consent.valid_until_ms", "at most 366 days"),
    ({"detail_level": consent_pb2.DETAIL_LEVEL_UNSPECIFIED}, "consent.detail_level", "summary or detail"),
    ({"detail_level": 3}, "consent.detail_level", "summary or detail"),
    ({"history_months": 0}, "consent.history_months", "at least 1 month"),
    ({"history_months": -1}, "consent.history_months", "at least 1 month"),
    ({"history_months": 1201}, "consent.history_months", "at most 1200 months"),
    ({"history_months": 2**31 - 1}, "consent.history_months", "at most 1200 months"),
    ({"fetch_type": consent_pb2.FETCH_TYPE_UNSPECIFIED}, "consent.fetch_type", "once or periodic"),
    ({"fetch_type": 3}, "consent.fetch_type", "once or periodic"),
    ({**PERIODIC, "max_fetches": 0}, "consent.max_fetches", "at least 1 fetch"),
    ({**PERIODIC, "fetch_period": consent_pb2.FETCH_PERIOD_UNSPECIFIED}, "consent.fetch_period", "day or month"),
    ({**PERIODIC, "fetch_period": 3}, "consent.fetch_period", "day or month"),
], ids=repr)
def test_a_consent_body_past_a_limit_is_invalid_naming_the_field(changes, field, words):
    refusal = refused(_check_fields, body(**changes))
    assert_refusal(refusal, Kind.INVALID, "INVALID_FIELD", field)
    assert words in str(refusal)


def test_an_unknown_purpose_is_refused_in_the_vocabularys_words():
    refusal = refused(_check_fields, body(purpose="fortune_telling"))
    assert_refusal(refusal, Kind.INVALID, "INVALID_FIELD", "consent.purpose")
    assert refusal.violations[0].description == purpose_problem("fortune_telling")


# --- check_grantable: current at grant time, started (5 minutes' grace), within fair use ------------
def test_a_consent_ending_now_is_not_grantable_one_ending_a_ms_later_is():
    assert check_grantable(stored(valid_until_ms=NOW + 1), NOW) is None
    assert_refusal(refused(check_grantable, stored(valid_until_ms=NOW), NOW), Kind.INVALID, "INVALID_FIELD",
                   "consent.valid_until_ms")


def test_a_consent_may_start_at_most_five_minutes_after_the_grant():
    assert check_grantable(stored(valid_from_ms=NOW + 5 * MINUTE_MS), NOW) is None
    assert_refusal(refused(check_grantable, stored(valid_from_ms=NOW + 5 * MINUTE_MS + 1), NOW), Kind.INVALID,
                   "INVALID_FIELD", "consent.valid_from_ms")


@pytest.fixture(scope="module")
def fair_use() -> FairUse:
    return FairUse.from_dir()


def test_fair_use_is_checked_only_when_given(fair_use):
    too_long = stored(valid_until_ms=NOW + 40 * DAY_MS)  # credit_assessment allows 30 days
    assert check_grantable(too_long, NOW) is None
    refusal = refused(check_grantable, too_long, NOW, fair_use)
    assert (refusal.kind, refusal.reason) == (Kind.PRECONDITION, "FAIR_USE_MAX_DAYS")
    assert check_grantable(stored(), NOW, fair_use) is None  # a once consent stored with max_fetches 1


def test_a_periodic_consents_fetches_are_checked_against_fair_use(fair_use):
    monitoring = stored(purpose="loan_monitoring", categories=("tax",), detail_level="summary", history_months=12,
                        fetch_type="periodic", max_fetches=4, fetch_period="month")
    assert check_grantable(monitoring, NOW, fair_use) is None  # its 4 fetches a month, the most allowed
    refusal = refused(check_grantable, replace(monitoring, max_fetches=5), NOW, fair_use)
    assert (refusal.reason, [v.field for v in refusal.violations]) == ("FAIR_USE_MAX_FETCHES", ["consent.max_fetches"])


# --- verify_change: signed by the enterprise the consent is about, for this consent -----------------
def test_a_change_by_the_consents_enterprise_is_returned(ids):
    for action, value in (("pause", consent_pb2.CONSENT_ACTION_PAUSE), ("resume", consent_pb2.CONSENT_ACTION_RESUME),
                          ("revoke", consent_pb2.CONSENT_ACTION_REVOKE)):
        change = verify_change(build_change(ids["firm"], "a" * 32, action, NOW), stored(), ids["trust"])
        assert (change.consent_id, change.uscc, change.action, change.at_ms) == ("a" * 32, FIRM, value, NOW)


def test_a_change_of_an_unknown_or_anothers_consent_is_not_found_alike(ids):
    unknown = refused(verify_change, build_change(ids["firm"], "a" * 32, "pause", NOW), None, ids["trust"])
    anothers = refused(verify_change, build_change(ids["other_firm"], "a" * 32, "pause", NOW), stored(), ids["trust"])
    for refusal in (unknown, anothers):
        assert (refusal.kind, refusal.reason, refusal.violations) == (Kind.NOT_FOUND, "CONSENT_NOT_FOUND", ())
        assert str(refusal).startswith("change.consent_id: ") and "a" * 32 in str(refusal)
    assert str(unknown) == str(anothers)  # who gave a consent is never told
    assert (unknown.audit_note, anothers.audit_note) == ("", "CONSENT_OF_ANOTHER_ENTERPRISE")


def test_the_consent_id_a_change_names_is_quoted_to_40_characters(ids):
    for cid, shown in (("x" * 40, "'" + "x" * 40 + "'"), ("x" * 41, "'" + "x" * 40 + "…[1 more characters]'")):
        refusal = refused(verify_change, build_change(ids["firm"], cid, "pause", NOW), None, ids["trust"])
        assert f"no consent {shown} given by the signer" in str(refusal)


def test_a_change_signed_by_a_bank_or_a_certificate_not_valid_at_the_time_asked_is_refused(ids):
    by_bank = sign(ids["bank"], consent_pb2.ConsentChangeBody(consent_id="a" * 32, uscc=FIRM, at_ms=NOW,
                                                              action=consent_pb2.CONSENT_ACTION_PAUSE))
    assert_refusal(refused(verify_change, by_bank, stored(), ids["trust"]), Kind.UNAUTHENTICATED, "WRONG_SIGNER_ROLE",
                   "change.signer_cert")
    change = build_change(ids["firm"], "a" * 32, "pause", NOW)
    assert_refusal(refused(verify_change, change, stored(), ids["trust"], at=LONG_AGO), Kind.UNAUTHENTICATED,
                   "BAD_CERTIFICATE", "change.signer_cert")


def change_body(**changes) -> consent_pb2.ConsentChangeBody:
    fields = dict(consent_id="a" * 32, uscc=FIRM, action=consent_pb2.CONSENT_ACTION_PAUSE, at_ms=NOW)
    fields.update(changes)
    return consent_pb2.ConsentChangeBody(**fields)


@pytest.mark.parametrize("changes, field", [
    ({"consent_id": "b" * 32}, "change.consent_id"),
    ({"uscc": OTHER_FIRM}, "change.consent_id"),
    ({"action": consent_pb2.CONSENT_ACTION_UNSPECIFIED}, "change.action"),
    ({"action": 4}, "change.action"),
], ids=repr)
def test_a_change_naming_another_consent_or_no_action_is_invalid(ids, changes, field):
    env = sign(ids["firm"], change_body(**changes))
    assert_refusal(refused(verify_change, env, stored(), ids["trust"]), Kind.INVALID, "INVALID_FIELD", field)


# --- apply_change: later changes apply, in signed-time order; a revocation is final -----------------
def test_a_later_change_sets_the_state_and_its_time():
    c = stored(state_at_ms=NOW)
    for action, state in ((consent_pb2.CONSENT_ACTION_PAUSE, "paused"), (consent_pb2.CONSENT_ACTION_RESUME, "active"),
                          (consent_pb2.CONSENT_ACTION_REVOKE, "revoked")):
        assert apply_change(c, change_body(action=action, at_ms=NOW + 1)) == replace(c, state=state,
                                                                                     state_at_ms=NOW + 1)


def test_a_change_signed_at_or_before_the_current_state_changes_nothing():
    c = stored(state="paused", state_at_ms=NOW)
    assert apply_change(c, change_body(action=consent_pb2.CONSENT_ACTION_RESUME, at_ms=NOW)) is None
    assert apply_change(c, change_body(action=consent_pb2.CONSENT_ACTION_RESUME, at_ms=NOW - 1)) is None


def test_nothing_changes_a_revoked_consent():
    c = stored(state="revoked", state_at_ms=NOW)
    assert apply_change(c, change_body(action=consent_pb2.CONSENT_ACTION_RESUME, at_ms=NOW + DAY_MS)) is None


# --- check_covers: the asker, the enterprise, the status, the purpose, every category --------------
def ask(asker: str = BANK, role: Role = Role.BANK, **changes) -> ConsentAsk:
    fields = dict(consent_id="a" * 32, asker=Principal(role, asker), uscc=FIRM, purpose="credit_assessment",
                  categories=("tax", "registration"))
    fields.update(changes)
    return ConsentAsk(**fields)


def test_a_consent_covers_its_grantee_and_co_grantee_for_what_it_names():
    c = stored()
    assert check_covers(c, ask(), NOW) is c
    assert check_covers(c, ask(GUARANTOR, Role.GUARANTOR, categories=("tax",)), NOW) is c


def test_an_unknown_consent_and_anothers_are_refused_alike():
    unknown = refused(check_covers, None, ask(), NOW)
    anothers = refused(check_covers, stored(), ask(OTHER_BANK), NOW)
    for refusal in (unknown, anothers):
        assert_refusal(refusal, Kind.DENIED, "CONSENT_NOT_FOUND", "consent_id")
        assert "a" * 32 in str(refusal)
    assert str(unknown) == str(anothers)
    assert (unknown.audit_note, anothers.audit_note) == ("", "CONSENT_GRANTEE_MISMATCH")
    # An asker with no id is no one, not the absent second institution of a consent without one.
    nobody = refused(check_covers, stored(co_grantee=""), ask(""), NOW)
    assert_refusal(nobody, Kind.DENIED, "CONSENT_NOT_FOUND", "consent_id")


@pytest.mark.parametrize("consent, now, reason, words", [
    (stored(state="paused"), NOW, "CONSENT_PAUSED", "is paused"),
    (stored(state="revoked"), NOW, "CONSENT_REVOKED", "is revoked"),
    (stored(), NOW + DAY_MS, "CONSENT_EXPIRED", "is expired"),
    (stored(), NOW - DAY_MS - 1, "CONSENT_NOT_YET_VALID", "is not yet valid"),
], ids=repr)
def test_a_consent_not_active_is_refused_with_its_status(consent, now, reason, words):
    refusal = refused(check_covers, consent, ask(), now)
    assert_refusal(refusal, Kind.DENIED, reason, "consent_id")
    assert f"consent {'a' * 32} {words}" in str(refusal)


def test_a_consent_about_another_enterprise_or_purpose_is_refused():
    assert_refusal(refused(check_covers, stored(), ask(uscc=OTHER_FIRM), NOW), Kind.DENIED, "CONSENT_SUBJECT_MISMATCH",
                   "consent_id")
    refusal = refused(check_covers, stored(), ask(purpose="guarantee"), NOW)
    assert_refusal(refusal, Kind.DENIED, "CONSENT_PURPOSE_MISMATCH", "consent_id")
    assert "covers purpose credit_assessment, not guarantee" in str(refusal)


def test_every_category_asked_must_be_covered_and_the_missing_ones_are_named():
    refusal = refused(check_covers, stored(), ask(categories=("tax", "judicial", "customs")), NOW)
    assert_refusal(refusal, Kind.DENIED, "CONSENT_SCOPE", "consent_id")
    assert str(refusal).endswith("does not cover customs, judicial")


# --- is_joint_for: only the co-grantee a consent names ---------------------------------------------
def test_only_the_co_grantee_is_joint():
    assert is_joint_for(stored(), Principal(Role.GUARANTOR, GUARANTOR)) is True
    assert is_joint_for(stored(), Principal(Role.BANK, BANK)) is False
    assert is_joint_for(stored(co_grantee=""), Principal(Role.BANK, BANK)) is False
    assert is_joint_for(stored(co_grantee=""), Principal(Role.BANK, "")) is False  # no co-grantee names no one
    assert is_joint_for(None, Principal(Role.GUARANTOR, GUARANTOR)) is False


# --- use_refusal: spent for once, the per-period limit for periodic ---------------------------------
def test_a_once_consent_used_is_spent():
    refusal = use_refusal(stored(), 1)
    assert_refusal(refusal, Kind.DENIED, "CONSENT_SPENT", "consent_id")
    assert f"consent {'a' * 32} allows one fetch and was used" in str(refusal)


def test_a_periodic_consent_used_up_hits_its_fetch_limit():
    refusal = use_refusal(stored(fetch_type="periodic", max_fetches=4, fetch_period="month"), 4)
    assert_refusal(refusal, Kind.DENIED, "FETCH_LIMIT", "consent_id")
    assert f"consent {'a' * 32} allows 4 fetches a month; 4 were made" in str(refusal)
