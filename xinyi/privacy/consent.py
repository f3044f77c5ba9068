"""Consent: the signed artefact, its lifecycle, representatives, and the checks a node makes.

A consent is a signed ConsentBody, by the enterprise or by a representative it named in a
signed DelegationBody. Its id is a hash of the signed bytes: it is never changed, only replaced.
Pause, resume and revoke are signed ConsentChangeBody statements by the enterprise; revoke is
final. Every node verifies every signature itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from dataclasses import dataclass, replace
from enum import StrEnum

from xinyi.clock import DAY_MS, MINUTE_MS, utc_text
from xinyi.crypto.envelope import sign, verify
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, TrustAnchor
from xinyi.errors import Kind, Refusal, quoted
from xinyi.records import uscc as uscc_codes
from xinyi.records.vocab import category_problem, purpose_problem
from xinyi.v1 import consent_pb2, envelope_pb2

MAX_CONSENT_DAYS = 366
# A hundred years: the node's own bound (fair use's, 12 or 24, is the registry's), so that no signed
# consent can put the start of its history window before year 1 and fail a query instead of refusing it.
MAX_HISTORY_MONTHS = 1200
CHINA = dt.timezone(dt.timedelta(hours=8))  # fetch periods follow the Beijing calendar
_CONSENT_ID = re.compile(r"^[0-9a-f]{32}$")
_SIGNERS = frozenset({Role.ENTERPRISE, Role.REPRESENTATIVE})

DETAIL_LEVELS = {consent_pb2.DETAIL_LEVEL_SUMMARY: "summary", consent_pb2.DETAIL_LEVEL_DETAIL: "detail"}
FETCH_TYPES = {consent_pb2.FETCH_TYPE_ONCE: "once", consent_pb2.FETCH_TYPE_PERIODIC: "periodic"}
FETCH_PERIODS = {consent_pb2.FETCH_PERIOD_DAY: "day", consent_pb2.FETCH_PERIOD_MONTH: "month"}
ACTIONS = {consent_pb2.CONSENT_ACTION_PAUSE: "paused", consent_pb2.CONSENT_ACTION_RESUME: "active",
           consent_pb2.CONSENT_ACTION_REVOKE: "revoked"}


class Status(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    SPENT = "spent"


STATUS_TO_PROTO = {
    Status.ACTIVE: consent_pb2.CONSENT_STATUS_ACTIVE,
    Status.PAUSED: consent_pb2.CONSENT_STATUS_PAUSED,
    Status.REVOKED: consent_pb2.CONSENT_STATUS_REVOKED,
    Status.EXPIRED: consent_pb2.CONSENT_STATUS_EXPIRED,
    Status.NOT_YET_VALID: consent_pb2.CONSENT_STATUS_NOT_YET_VALID,
    Status.SPENT: consent_pb2.CONSENT_STATUS_SPENT,
}


@dataclass(frozen=True)
class StoredConsent:
    """A consent as stored: the signed bytes, what was read from them, and its current state."""

    consent_id: str
    uscc: str
    grantee: str
    purpose: str
    categories: tuple[str, ...]
    valid_from_ms: int
    valid_until_ms: int
    envelope: bytes
    detail_level: str = "detail"
    history_months: int = 24
    fetch_type: str = "once"
    max_fetches: int = 1
    fetch_period: str = ""
    signed_by: str = ""
    co_grantee: str = ""  # a second institution for the same loan (a guarantor beside the bank)
    delegation: bytes | None = None
    state: str = "active"  # active, paused or revoked: the latest signed change
    state_at_ms: int = 0
    received_at_ms: int = 0

    def fetch_window_start(self, now_ms: int) -> int:
        """Uses count from here: the consent's start for once, the current day or month for periodic."""
        if self.fetch_type == "once":
            return 0
        now = dt.datetime.fromtimestamp(now_ms / 1000, CHINA)
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.fetch_period == "month":
            start = start.replace(day=1)
        return int(start.timestamp() * 1000)

    @property
    def fetch_limit(self) -> int:
        return 1 if self.fetch_type == "once" else self.max_fetches


def consent_id_for(body: bytes) -> str:
    return hashlib.sha256(b"xinyi-consent/v1\n" + body).hexdigest()[:32]


def check_consent_id(consent_id: str, field: str = "consent_id") -> str:
    if not consent_id:
        raise Refusal.denied("CONSENT_MISSING", f"{field}: no consent given; the enterprise must grant one first",
                             field_name=field)
    if not _CONSENT_ID.match(consent_id):
        raise Refusal.invalid(field, f"{quoted(consent_id)} is not a consent id (32 lower-case hex characters)")
    return consent_id


def status_of(consent: StoredConsent, now_ms: int, uses: int = 0) -> Status:
    if consent.state == "revoked":
        return Status.REVOKED
    if now_ms >= consent.valid_until_ms:
        return Status.EXPIRED
    if now_ms < consent.valid_from_ms:
        return Status.NOT_YET_VALID
    if consent.state == "paused":
        return Status.PAUSED
    if consent.fetch_type == "once" and uses >= 1:
        return Status.SPENT
    return Status.ACTIVE


# --- building (the enterprise's side) --------------------------------------------------------------
def build_consent(
    identity: Identity,
    *,
    uscc: str | None = None,
    grantee: str,
    purpose: str,
    categories: list[str],
    days: int,
    now_ms: int,
    detail_level: str = "detail",
    history_months: int = 12,
    fetch_type: str = "once",
    max_fetches: int = 0,
    fetch_period: str = "",
    co_grantee: str = "",
) -> envelope_pb2.SignedEnvelope:
    """A signed consent, valid from now for `days` days. A representative passes `uscc`."""
    levels = {v: k for k, v in DETAIL_LEVELS.items()}
    fetches = {v: k for k, v in FETCH_TYPES.items()}
    periods = {v: k for k, v in FETCH_PERIODS.items()}
    for name, value, known in (("detail_level", detail_level, levels), ("fetch_type", fetch_type, fetches)):
        if value not in known:
            raise Refusal.invalid(name, f"must be one of {', '.join(known)}, not {value!r}")
    if fetch_period and fetch_period not in periods:
        raise Refusal.invalid("fetch_period", f"must be day or month, not {fetch_period!r}")
    body = consent_pb2.ConsentBody(
        uscc=uscc or identity.principal.id,
        grantee=grantee,
        purpose=purpose,
        categories=sorted(set(categories)),
        valid_from_ms=now_ms,
        valid_until_ms=now_ms + days * DAY_MS,
        nonce=os.urandom(16),
        issued_at_ms=now_ms,
        detail_level=levels[detail_level],
        history_months=history_months,
        fetch_type=fetches[fetch_type],
        max_fetches=max_fetches,
        fetch_period=periods.get(fetch_period, consent_pb2.FETCH_PERIOD_UNSPECIFIED),
        co_grantee=co_grantee,
    )
    return sign(identity, body)


def build_change(identity: Identity, consent_id: str, action: str, now_ms: int) -> envelope_pb2.SignedEnvelope:
    actions = {"pause": consent_pb2.CONSENT_ACTION_PAUSE, "resume": consent_pb2.CONSENT_ACTION_RESUME,
               "revoke": consent_pb2.CONSENT_ACTION_REVOKE}
    body = consent_pb2.ConsentChangeBody(consent_id=consent_id, uscc=identity.principal.id, action=actions[action],
                                         at_ms=now_ms, nonce=os.urandom(16))
    return sign(identity, body)


def build_delegation(identity: Identity, representative: str, *, days: int, now_ms: int, revoked: bool = False):
    body = consent_pb2.DelegationBody(uscc=identity.principal.id, representative=representative,
                                      valid_until_ms=now_ms + days * DAY_MS, revoked=revoked, issued_at_ms=now_ms,
                                      nonce=os.urandom(16))
    return sign(identity, body)


# --- verifying (every party that relies on a consent) ----------------------------------------------
def verify_delegation(envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor) -> consent_pb2.DelegationBody:
    v = verify(envelope, consent_pb2.DelegationBody, trust, roles={Role.ENTERPRISE}, field="delegation")
    body = v.message
    if v.signer.id != body.uscc:
        raise Refusal.unauthenticated("delegation.uscc", f"must be the signer's own USCC: {v.signer} names "
                                      "representatives only for itself", "DELEGATION_SIGNER_MISMATCH")
    if not body.representative:
        raise Refusal.invalid("delegation.representative", "must name the representative's id")
    return body


def verify_consent(
    envelope: envelope_pb2.SignedEnvelope,
    trust: TrustAnchor,
    now_ms: int,
    delegation: envelope_pb2.SignedEnvelope | None = None,
    *,
    at: dt.datetime | None = None,
) -> StoredConsent:
    """Verify a signed consent (and the delegation behind a representative's signature) and
    check its fields; return it ready to store. `at`: the signer's certificate is checked as of
    then (a stored consent, as of its signing), not now."""
    v = verify(envelope, consent_pb2.ConsentBody, trust, roles=_SIGNERS, field="consent", at=at)
    body = v.message
    delegation_bytes = None
    if v.signer.role is Role.ENTERPRISE:
        if v.signer.id != body.uscc:
            raise Refusal.unauthenticated(
                "consent.uscc", f"must be the signer's own USCC: {v.signer} consents only for itself",
                "CONSENT_SIGNER_MISMATCH",
            )
    else:
        if delegation is None or not delegation.body:
            raise Refusal.denied("NOT_DELEGATED", f"consent.signer_cert: {v.signer} holds no delegation from the "
                                 "enterprise the consent names", field_name="consent.signer_cert")
        d = verify_delegation(delegation, trust)
        if d.uscc != body.uscc or d.representative != v.signer.id:
            raise Refusal.denied("NOT_DELEGATED", "consent.signer_cert: the delegation does not name this signer for "
                                 "the enterprise the consent names", field_name="consent.signer_cert")
        if d.revoked or not d.issued_at_ms <= body.issued_at_ms <= d.valid_until_ms:
            raise Refusal.denied("DELEGATION_NOT_IN_FORCE", f"consent.signer_cert: {v.signer}'s delegation was not in "
                                 "force when the consent was signed",
                                 field_name="consent.signer_cert")
        delegation_bytes = delegation.SerializeToString(deterministic=True)
    _check_fields(body)
    return StoredConsent(
        consent_id=consent_id_for(v.body),
        uscc=body.uscc,
        grantee=body.grantee,
        purpose=body.purpose,
        categories=tuple(sorted(set(body.categories))),
        valid_from_ms=body.valid_from_ms,
        valid_until_ms=body.valid_until_ms,
        envelope=envelope.SerializeToString(deterministic=True),
        detail_level=DETAIL_LEVELS[body.detail_level],
        history_months=body.history_months,
        fetch_type=FETCH_TYPES[body.fetch_type],
        max_fetches=body.max_fetches if body.fetch_type == consent_pb2.FETCH_TYPE_PERIODIC else 1,
        fetch_period=FETCH_PERIODS.get(body.fetch_period, ""),
        signed_by=str(v.signer),
        co_grantee=body.co_grantee,
        delegation=delegation_bytes,
        state="active",
        state_at_ms=body.issued_at_ms,
        received_at_ms=now_ms,
    )


def _check_fields(body: consent_pb2.ConsentBody) -> None:
    problem = uscc_codes.problem(body.grantee)
    if problem:
        raise Refusal.invalid("consent.grantee", f"must be the USCC of a bank or guarantor: {problem}")
    if body.grantee == body.uscc:
        raise Refusal.invalid("consent.grantee", "an enterprise cannot grant consent to itself")
    if body.co_grantee:
        problem = uscc_codes.problem(body.co_grantee)
        if problem:
            raise Refusal.invalid("consent.co_grantee", f"must be the USCC of a bank or guarantor: {problem}")
        if body.co_grantee in (body.grantee, body.uscc):
            raise Refusal.invalid("consent.co_grantee", "must be another institution than the grantee and the enterprise")
    problem = purpose_problem(body.purpose)
    if problem:
        raise Refusal.invalid("consent.purpose", problem)
    if not body.categories:
        raise Refusal.invalid("consent.categories", "must name at least one category")
    for c in body.categories:
        problem = category_problem(c)
        if problem:
            raise Refusal.invalid("consent.categories", problem)
    if body.valid_until_ms <= body.valid_from_ms:
        raise Refusal.invalid("consent.valid_until_ms", "must be after valid_from_ms")
    if body.valid_until_ms - body.valid_from_ms > MAX_CONSENT_DAYS * DAY_MS:
        raise Refusal.invalid("consent.valid_until_ms", f"a consent may last at most {MAX_CONSENT_DAYS} days")
    if body.detail_level not in DETAIL_LEVELS:
        raise Refusal.invalid("consent.detail_level", "must be summary or detail")
    if body.history_months < 1:
        raise Refusal.invalid("consent.history_months", "must be at least 1 month")
    if body.history_months > MAX_HISTORY_MONTHS:
        raise Refusal.invalid("consent.history_months", f"must be at most {MAX_HISTORY_MONTHS} months")
    if body.fetch_type not in FETCH_TYPES:
        raise Refusal.invalid("consent.fetch_type", "must be once or periodic")
    if body.fetch_type == consent_pb2.FETCH_TYPE_PERIODIC:
        if body.max_fetches < 1:
            raise Refusal.invalid("consent.max_fetches", "a periodic consent must allow at least 1 fetch per period")
        if body.fetch_period not in FETCH_PERIODS:
            raise Refusal.invalid("consent.fetch_period", "a periodic consent needs a period: day or month")


def check_grantable(consent: StoredConsent, now_ms: int, fair_use=None) -> None:
    """At grant time (not on later delivery): the consent must be current and within fair use."""
    if consent.valid_until_ms <= now_ms:
        raise Refusal.invalid("consent.valid_until_ms", "is already in the past")
    if consent.valid_from_ms > now_ms + 5 * MINUTE_MS:
        raise Refusal.invalid("consent.valid_from_ms", "lies in the future; a consent starts when it is granted")
    if fair_use is not None:
        fair_use.check(
            purpose=consent.purpose, categories=list(consent.categories), detail_level=consent.detail_level,
            history_months=consent.history_months, valid_from_ms=consent.valid_from_ms,
            valid_until_ms=consent.valid_until_ms, fetch_type=consent.fetch_type,
            max_fetches=consent.max_fetches if consent.fetch_type == "periodic" else 0,
            fetch_period=consent.fetch_period,
        )


def verify_change(
    envelope: envelope_pb2.SignedEnvelope, consent: StoredConsent | None, trust: TrustAnchor, *,
    at: dt.datetime | None = None,
) -> consent_pb2.ConsentChangeBody:
    """Verify a pause, resume or revoke: signed by the enterprise the consent is about (its
    certificate checked as of `at`, default now)."""
    v = verify(envelope, consent_pb2.ConsentChangeBody, trust, roles={Role.ENTERPRISE}, field="change", at=at)
    body = v.message
    if consent is None or v.signer.id != consent.uscc:
        # The same answer for an unknown consent and another enterprise's: who gave a consent is
        # never told, and ids cannot be probed. The audit log keeps which it was.
        raise Refusal(Kind.NOT_FOUND, "CONSENT_NOT_FOUND",
                      f"change.consent_id: no consent {quoted(body.consent_id, 40)} given by the signer is known",
                      audit_note="" if consent is None else "CONSENT_OF_ANOTHER_ENTERPRISE")
    if body.consent_id != consent.consent_id or body.uscc != consent.uscc:
        raise Refusal.invalid("change.consent_id", "does not match the consent being changed")
    if body.action not in ACTIONS:
        raise Refusal.invalid("change.action", "must be pause, resume or revoke")
    return body


def apply_change(consent: StoredConsent, change: consent_pb2.ConsentChangeBody) -> StoredConsent | None:
    """The consent after the change, or None when the change makes no difference (already
    revoked, or older than the state it would replace: changes apply in signed-time order)."""
    if consent.state == "revoked" or change.at_ms <= consent.state_at_ms:
        return None
    return replace(consent, state=ACTIONS[change.action], state_at_ms=change.at_ms)


def why_unchanged(consent: StoredConsent, change: consent_pb2.ConsentChangeBody, verb: str) -> str:
    """Why apply_change made no difference, with the times a person reads."""
    since = utc_text(consent.state_at_ms)
    if consent.state == "revoked":
        return f"consent {consent.consent_id} was revoked at {since}; a revocation is final, a {verb} cannot undo it"
    return (f"consent {consent.consent_id} is {consent.state} since {since}; a {verb} signed at "
            f"{utc_text(change.at_ms)}, not after that, does not change it")


@dataclass(frozen=True)
class ConsentAsk:
    """What a query asks of a consent."""

    consent_id: str
    asker: Principal
    uscc: str
    purpose: str
    categories: tuple[str, ...]


def check_covers(consent: StoredConsent | None, ask: ConsentAsk, now_ms: int) -> StoredConsent:
    """Refuse unless an active consent names this asker, enterprise, purpose and every category."""

    def deny(reason: str, message: str) -> Refusal:
        return Refusal.denied(reason, f"consent_id: {message}", field_name="consent_id")

    # An empty id names no one, though a consent without a second institution holds an empty co_grantee.
    if consent is None or not ask.asker.id or ask.asker.id not in (consent.grantee, consent.co_grantee):
        # The same answer for an unknown consent and another institution's: neither the
        # institution it names nor the enterprise that gave it is told, and ids cannot be probed.
        # The audit log keeps which it was.
        raise Refusal.denied("CONSENT_NOT_FOUND", f"consent_id: no consent {ask.consent_id} for this institution is "
                             "known to this node", field_name="consent_id",
                             audit_note="" if consent is None else "CONSENT_GRANTEE_MISMATCH")
    if consent.uscc != ask.uscc:
        raise deny("CONSENT_SUBJECT_MISMATCH", f"consent {consent.consent_id} is not about the enterprise asked about")
    status = status_of(consent, now_ms)
    if status is not Status.ACTIVE:
        raise deny(f"CONSENT_{status.upper()}", f"consent {consent.consent_id} is {status.replace('_', ' ')}")
    if consent.purpose != ask.purpose:
        raise deny("CONSENT_PURPOSE_MISMATCH", f"consent {consent.consent_id} covers purpose {consent.purpose}, not {ask.purpose}")
    missing = sorted(set(ask.categories) - set(consent.categories))
    if missing:
        raise deny("CONSENT_SCOPE", f"consent {consent.consent_id} does not cover {', '.join(missing)}")
    return consent


def is_joint_for(consent: StoredConsent | None, asker: Principal) -> bool:
    """True when `asker` is the second institution a joint consent names (Cedar's context.joint)."""
    return consent is not None and bool(consent.co_grantee) and consent.co_grantee == asker.id


def use_refusal(consent: StoredConsent, used: int) -> Refusal:
    if consent.fetch_type == "once":
        return Refusal.denied("CONSENT_SPENT", f"consent_id: consent {consent.consent_id} allows one fetch and was used",
                              field_name="consent_id")
    return Refusal.denied("FETCH_LIMIT", f"consent_id: consent {consent.consent_id} allows {consent.max_fetches} fetches a "
                          f"{consent.fetch_period}; {used} were made", field_name="consent_id")


def to_record(consent: StoredConsent, now_ms: int, *, changes=(), uses: int = 0, last_used_ms: int = 0,
              delivered_to=(), pending=(), nodes=(), spent: bool | None = None) -> consent_pb2.ConsentRecord:
    """The wire form of a stored consent. `spent`: whether a once consent is used up (default:
    when it has a use); `nodes`: ConsentNodeStatus entries, one per node."""
    levels = {v: k for k, v in DETAIL_LEVELS.items()}
    fetches = {v: k for k, v in FETCH_TYPES.items()}
    periods = {v: k for k, v in FETCH_PERIODS.items()}
    record = consent_pb2.ConsentRecord(
        consent_id=consent.consent_id,
        status=STATUS_TO_PROTO[status_of(consent, now_ms, uses if spent is None else int(spent))],
        uscc=consent.uscc,
        grantee=consent.grantee,
        purpose=consent.purpose,
        categories=consent.categories,
        valid_until_ms=consent.valid_until_ms,
        signed_by=consent.signed_by,
        co_grantee=consent.co_grantee,
        detail_level=levels.get(consent.detail_level, 0),
        history_months=consent.history_months,
        fetch_type=fetches.get(consent.fetch_type, 0),
        max_fetches=consent.max_fetches,
        fetch_period=periods.get(consent.fetch_period, 0),
        uses=uses,
        last_used_ms=last_used_ms,
        delivered_to=list(delivered_to),
        pending=list(pending),
        nodes=list(nodes),
    )
    record.consent.ParseFromString(consent.envelope)
    if consent.delegation:
        record.delegation.ParseFromString(consent.delegation)
    for change in changes:
        record.changes.add().ParseFromString(change)
    return record
