"""Early warning ("platform + risk control"): alerts about an enterprise a bank monitors.

Under an active periodic loan_monitoring consent a bank subscribes to an enterprise's alerts.
Each node detects them when data is ingested, by comparing the enterprise's records it already
held with the new ones (`detect`):

    new_case_as_defendant   a court case not seen before, the enterprise the defendant, pending
                            or in enforcement
    new_penalty             an administrative penalty decision not seen before
    dishonesty_listing      a dishonesty-list record not seen before
    tax_rating_drop         the newest period's tax credit rating below the previous period's
                            (A > B > M > C > D)
    headcount_fall          the newest period's insured headcount below the previous period's by
                            at least the configured share (policies/alerts.toml)

Delivery is by polling with a cursor, not by server streaming. The bank signs a PollAlertsBody
naming, per node, the last alert seq it holds; the registry relays it to every node that routes
for the enterprise; each node returns its alerts after that cursor, each signed by the node, the
batch sealed to the poll's one-time key. Why polling:

  * an alert is never lost while the bank is offline: alerts are stored at the node, and the
    bank's cursor, not a connection, decides what is new; a bank that comes back after a week
    polls and gets the week's alerts (within the retention in policies/alerts.toml);
  * no long-lived streams through the registry: every poll is an ordinary short unary call, so
    the registry holds no per-bank connection state and restarts of the registry or of a node
    cost nothing but one failed poll;
  * it works through HTTP proxies, load balancers and firewalls that cut idle or long streams;
  * each poll re-checks the consent, at the registry and at every node, so revoking (or
    pausing) a consent stops the alerts at once: the very next poll is refused.

The cursor is advanced by the bank from the alerts it verified (their signed seq), never from
what the relay says, so a relay can withhold a batch (the bank asks again) but cannot make the
bank skip an alert; an old sealed batch cannot be replayed, since each poll has a new key.

Polls are not fetches: they do not count against the consent's fetch ceiling. An alert says
only what its kind says ("rating A -> C", "headcount -35%") and names the record; reading the
data itself is a query under the consent, which counts.

Domain core: no gRPC. Banks use `build_subscribe`, `build_poll`, `open_alerts`; nodes and the
registry use `check_subscribe`, `check_poll`, `refuse_replay`, `check_monitoring_consent`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Protocol, Sequence

from xinyi.clock import DAY_MS, MINUTE_MS
from xinyi.config import read_toml
from xinyi.crypto.envelope import Verified, sign, verify
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, TrustAnchor
from xinyi.crypto.sealing import ANSWER_KEY_BYTES, AnswerKey
from xinyi.directory import listed_key
from xinyi.errors import Refusal, quoted
from xinyi.policy import DEFAULT_POLICY_DIR, PolicyError
from xinyi.privacy.consent import Status, StoredConsent, check_consent_id, status_of
from xinyi.records import uscc as uscc_codes
from xinyi.v1 import alerts_pb2, directory_pb2, envelope_pb2

if TYPE_CHECKING:
    from xinyi.store import BaseStore

CONFIG_FILE = "alerts.toml"
PURPOSE = "loan_monitoring"
TIMESTAMP_WINDOW_MS = 5 * MINUTE_MS
NONCE_BYTES = 16
MAX_ALERTS_PER_POLL = 100  # per node; `more` says when the bank should poll again at once
MAX_CURSORS = 64           # nodes one poll may name

# Alert kinds, their wire values and the category each is about (a consent must cover it).
KINDS: dict[str, int] = {
    "new_case_as_defendant": alerts_pb2.ALERT_KIND_NEW_CASE_AS_DEFENDANT,
    "new_penalty": alerts_pb2.ALERT_KIND_NEW_PENALTY,
    "dishonesty_listing": alerts_pb2.ALERT_KIND_DISHONESTY_LISTING,
    "tax_rating_drop": alerts_pb2.ALERT_KIND_TAX_RATING_DROP,
    "headcount_fall": alerts_pb2.ALERT_KIND_HEADCOUNT_FALL,
}
KIND_NAMES: dict[int, str] = {v: k for k, v in KINDS.items()}
KIND_CATEGORY: dict[str, str] = {
    "new_case_as_defendant": "judicial",
    "new_penalty": "admin_penalty",
    "dishonesty_listing": "dishonesty_list",
    "tax_rating_drop": "tax",
    "headcount_fall": "social_security",
}
ALERT_CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(KIND_CATEGORY.values()))

# Tax credit ratings, best first (State Taxation Administration: A, B, M, C, D).
RATING_ORDER: dict[str, int] = {"A": 5, "B": 4, "M": 3, "C": 2, "D": 1}
OPEN_CASE_STATUSES = frozenset({"pending", "enforcement"})


# --- rules (policies/alerts.toml) ----------------------------------------------------------------
class AlertRulesError(PolicyError, ValueError):
    """policies/alerts.toml cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class AlertRules:
    kinds: frozenset[str] = frozenset(KINDS)
    headcount_fall_threshold: Decimal = Decimal("0.2")  # a fall of this share or more alerts
    retention_days: int = 180

    @property
    def retention_ms(self) -> int:
        return self.retention_days * DAY_MS

    @classmethod
    def from_dir(cls, policy_dir: Path | str = DEFAULT_POLICY_DIR) -> "AlertRules":
        """policy_dir/alerts.toml; the defaults when the directory has no such file."""
        path = Path(policy_dir) / CONFIG_FILE
        return cls.from_file(path) if path.exists() else cls()

    @classmethod
    def from_file(cls, path: Path | str) -> "AlertRules":
        data = read_toml(path, AlertRulesError)
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = CONFIG_FILE) -> "AlertRules":
        def bad(key: str, why: str) -> AlertRulesError:
            return AlertRulesError(f"{origin}: [alerts] {key}: {why}")

        unknown = sorted(set(data) - {"alerts"})
        if unknown:
            raise AlertRulesError(f"{origin}: unknown section [{unknown[0]}]; the only section is [alerts]")
        section = data.get("alerts")
        if not isinstance(section, dict):
            raise AlertRulesError(f"{origin}: the [alerts] section is missing")
        expected = ("kinds", "headcount_fall_threshold", "retention_days")
        for key in section:
            if key not in expected:
                raise bad(key, f"unknown key; the keys are {', '.join(expected)}")
        for key in expected:
            if key not in section:
                raise bad(key, "is missing")
        kinds = section["kinds"]
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise bad("kinds", "must be a list of alert kinds")
        for k in kinds:
            if k not in KINDS:
                raise bad("kinds", f"unknown kind {k!r}; known: {', '.join(KINDS)}")
        if len(set(kinds)) != len(kinds):
            raise bad("kinds", "repeats a kind")
        raw = section["headcount_fall_threshold"]
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise bad("headcount_fall_threshold", "must be a number, e.g. 0.2 for 20 %")
        try:
            threshold = Decimal(str(raw))
        except InvalidOperation:
            raise bad("headcount_fall_threshold", "must be a number") from None
        if not Decimal(0) < threshold <= Decimal(1):
            raise bad("headcount_fall_threshold", f"must be above 0 and at most 1 (a share), got {raw}")
        days = section["retention_days"]
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
            raise bad("retention_days", f"must be a whole number of days from 1 to 3660, got {days!r}")
        return cls(frozenset(kinds), threshold, days)


# --- detection -----------------------------------------------------------------------------------
class RecordLike(Protocol):
    """What detection reads of a record (node.store.Record)."""

    uscc: str
    category: str
    as_of: str
    fields: dict

    @property
    def key(self) -> str: ...


class Detected(NamedTuple):
    kind: str
    summary: str
    record: Any  # the record that raised it (a node.store.Record)


def detect(old_records: Iterable[RecordLike], new_records: Iterable[RecordLike], rules: AlertRules) -> list[Detected]:
    """What the new records say that the old ones did not, per enterprise.

    `old_records` are the records the node already held (current ones), `new_records` those
    being ingested. A new record that repeats an old one (same key) is no news; neither is a
    case or penalty already known under its case or decision number. Only the kinds in
    `rules.kinds` are reported. The result is in a stable order: enterprise, then input order.
    """
    old_by_uscc: dict[str, list[RecordLike]] = {}
    for r in old_records:
        old_by_uscc.setdefault(r.uscc, []).append(r)
    new_by_uscc: dict[str, list[RecordLike]] = {}
    for r in new_records:
        new_by_uscc.setdefault(r.uscc, []).append(r)
    out: list[Detected] = []
    for uscc in sorted(new_by_uscc):
        out.extend(_detect_one(old_by_uscc.get(uscc, []), new_by_uscc[uscc], rules))
    return out


def _detect_one(old: list[RecordLike], new: list[RecordLike], rules: AlertRules) -> list[Detected]:
    old_keys = {r.key for r in old}
    fresh: list[RecordLike] = []
    seen: set[str] = set()
    for r in new:
        if r.key not in old_keys and r.key not in seen:
            seen.add(r.key)
            fresh.append(r)
    if not fresh:
        return []
    found: list[Detected] = []
    on = rules.kinds

    if "new_case_as_defendant" in on:
        known = {_text(r.fields.get("case_no")) for r in old if r.category == "judicial"}
        for r in fresh:
            if r.category != "judicial":
                continue
            case_no = _text(r.fields.get("case_no"))
            if case_no in known:
                continue
            known.add(case_no)  # the same case twice in one load alerts once
            status = r.fields.get("status")
            if r.fields.get("role") == "defendant" and status in OPEN_CASE_STATUSES:
                found.append(Detected("new_case_as_defendant", f"new court case as defendant, {status}", r))

    if "new_penalty" in on:
        known = {_text(r.fields.get("decision_no")) for r in old if r.category == "admin_penalty"}
        for r in fresh:
            if r.category != "admin_penalty":
                continue
            decision_no = _text(r.fields.get("decision_no"))
            if decision_no in known:
                continue
            known.add(decision_no)
            found.append(Detected("new_penalty", "new administrative penalty", r))

    if "dishonesty_listing" in on:
        known = {_listing(r) for r in old if r.category == "dishonesty_list"}
        for r in fresh:
            if r.category != "dishonesty_list" or _listing(r) in known:
                continue
            known.add(_listing(r))
            found.append(Detected("dishonesty_listing", "listed as dishonest", r))

    if "tax_rating_drop" in on:
        drop = _period_change(old, fresh, "tax", "credit_rating", _rating_drop)
        if drop:
            (prev, now_value, period), record = drop
            found.append(Detected("tax_rating_drop", f"rating {prev} -> {now_value}, period {period}", record))

    if "headcount_fall" in on:
        fall = _period_change(old, fresh, "social_security", "insured_headcount",
                              lambda a, b: _headcount_fall(a, b, rules.headcount_fall_threshold))
        if fall:
            (percent, period), record = fall
            found.append(Detected("headcount_fall", f"headcount -{percent}%, period {period}", record))
    return found


def _text(value: Any) -> str:
    return str(value).strip() if value is not None else ""


def _listing(r: RecordLike) -> tuple[str, ...]:
    """One listing: the list and the day listed (a record supplied again with other wording is
    the same listing); the record itself when it does not say."""
    name, listed = _text(r.fields.get("list_name")), _text(r.fields.get("listed"))
    return (name, listed) if name and listed else (r.key,)


def _period_change(old: list[RecordLike], fresh: list[RecordLike], category: str, field_name: str, compare):
    """Compare the newest period's value with the previous period's, when news is about the newest.

    Per period the latest record decides (by as_of; a new record over an old one of the same
    day). Nothing is reported unless the newest period's deciding record is among the new ones
    and says something other than what the node held for that period before.
    """
    candidates = [(r, False) for r in old if r.category == category] + [(r, True) for r in fresh if r.category == category]
    by_period: dict[str, tuple[RecordLike, bool]] = {}
    held_before: dict[str, RecordLike] = {}
    for r, is_new in candidates:
        period = _text(r.fields.get("period"))
        if not period or r.fields.get(field_name) is None:
            continue
        current = by_period.get(period)
        if current is None or (r.as_of, is_new) >= (current[0].as_of, current[1]):
            by_period[period] = (r, is_new)
        if not is_new:
            before = held_before.get(period)
            if before is None or r.as_of >= before.as_of:
                held_before[period] = r
    if len(by_period) < 2:
        return None
    periods = sorted(by_period)
    newest, previous = periods[-1], periods[-2]
    record, is_new = by_period[newest]
    if not is_new:
        return None
    value = record.fields[field_name]
    before = held_before.get(newest)
    if before is not None and before.fields.get(field_name) == value:
        return None  # the same value for the same period, supplied again: already known
    result = compare(by_period[previous][0].fields[field_name], value)
    if result is None:
        return None
    return (*result, newest), record


def _rating_drop(previous: Any, newest: Any):
    p, n = RATING_ORDER.get(str(previous)), RATING_ORDER.get(str(newest))
    if p is None or n is None or n >= p:
        return None
    return (str(previous), str(newest))


def _headcount_fall(previous: Any, newest: Any, threshold: Decimal):
    try:
        p, n = int(previous), int(newest)
    except (TypeError, ValueError):
        return None
    if p <= 0 or n >= p:
        return None
    if Decimal(p - n) < threshold * p:  # exact: a 20 % fall meets a 0.2 threshold
        return None
    return ((p - n) * 100 // p,)  # whole per cent, rounded down: never overstated


# --- the signed statements -----------------------------------------------------------------------
def build_subscribe(identity: Identity, *, uscc: str, consent_id: str, now_ms: int) -> envelope_pb2.SignedEnvelope:
    _check_target(uscc, consent_id, "subscribe")
    body = alerts_pb2.SubscribeBody(uscc=uscc, consent_id=consent_id, nonce=os.urandom(NONCE_BYTES), issued_at_ms=now_ms)
    return sign(identity, body)


def build_poll(identity: Identity, *, uscc: str, consent_id: str, cursors: dict[str, int] | None = None,
               now_ms: int) -> tuple[envelope_pb2.SignedEnvelope, AnswerKey]:
    """A signed poll and the one-time key its batches will be sealed to."""
    _check_target(uscc, consent_id, "poll")
    cursors = {k: int(v) for k, v in (cursors or {}).items()}
    _check_cursors(cursors)
    key = AnswerKey.generate()
    body = alerts_pb2.PollAlertsBody(uscc=uscc, consent_id=consent_id, cursors=cursors, nonce=os.urandom(NONCE_BYTES),
                                     issued_at_ms=now_ms, answer_key=key.public_bytes)
    return sign(identity, body), key


def check_subscribe(envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor, now_ms: int) -> Verified[alerts_pb2.SubscribeBody]:
    """Authenticate a subscription (signed by a bank) and check every field."""
    v = verify(envelope, alerts_pb2.SubscribeBody, trust, roles={Role.BANK}, field="subscribe")
    _check_target(v.message.uscc, v.message.consent_id, "subscribe")
    _check_fresh(v.message, now_ms, "subscribe")
    return v


def check_poll(envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor, now_ms: int) -> Verified[alerts_pb2.PollAlertsBody]:
    """Authenticate a poll (signed by a bank) and check every field."""
    v = verify(envelope, alerts_pb2.PollAlertsBody, trust, roles={Role.BANK}, field="poll")
    body = v.message
    _check_target(body.uscc, body.consent_id, "poll")
    _check_fresh(body, now_ms, "poll")
    _check_cursors(dict(body.cursors))
    if len(body.answer_key) != ANSWER_KEY_BYTES:
        raise Refusal.invalid("poll.answer_key", f"must be a {ANSWER_KEY_BYTES}-byte X25519 public key")
    return v


def _check_target(uscc: str, consent_id: str, field: str) -> None:
    problem = uscc_codes.problem(uscc)
    if problem:
        raise Refusal.invalid(f"{field}.uscc", problem, "INVALID_USCC")
    check_consent_id(consent_id, f"{field}.consent_id")


def _check_fresh(body, now_ms: int, field: str) -> None:
    if len(body.nonce) != NONCE_BYTES:
        raise Refusal.invalid(f"{field}.nonce", f"must be {NONCE_BYTES} random bytes")
    skew = body.issued_at_ms - now_ms
    if abs(skew) > TIMESTAMP_WINDOW_MS:
        direction = "ahead of" if skew > 0 else "behind"
        raise Refusal.invalid(f"{field}.issued_at_ms", f"is {abs(skew) // 1000} s {direction} this server's clock; at "
                              "most 300 s is accepted (check the clock, then sign a fresh one)", "STALE_TIMESTAMP")


def _check_cursors(cursors: dict[str, int]) -> None:
    if len(cursors) > MAX_CURSORS:
        raise Refusal.invalid("poll.cursors", f"names {len(cursors)} nodes; at most {MAX_CURSORS}")
    for node_id, seq in cursors.items():
        if not (len(node_id) == 6 and node_id.isascii() and node_id.isdigit()):
            raise Refusal.invalid("poll.cursors", f"key {quoted(node_id)} is not a node id (a 6-digit area code)")
        if seq < 0:
            raise Refusal.invalid("poll.cursors", f"cursor for node {node_id} is {seq}; a cursor is 0 or more")


async def refuse_replay(store: "BaseStore", statement: Verified, field: str, now_ms: int) -> None:
    """Remember the signer's nonce for twice the timestamp window; refuse one seen before."""
    fresh = await asyncio.to_thread(store.remember_nonce, str(statement.signer), statement.message.nonce,
                                    now_ms + 2 * TIMESTAMP_WINDOW_MS, now_ms)
    if not fresh:
        raise Refusal.invalid(f"{field}.nonce", "was already used by this signer: a replay is refused; sign a new one",
                              "REPLAYED_NONCE")


# --- the consent behind a subscription ------------------------------------------------------------
def check_monitoring_consent(consent: StoredConsent | None, consent_id: str, bank: Principal, uscc: str,
                             now_ms: int) -> StoredConsent:
    """Refuse unless `consent` is an active periodic loan_monitoring consent from `uscc` to `bank`
    that covers at least one category alerts are about."""

    def deny(reason: str, message: str) -> Refusal:
        return Refusal.denied(reason, f"consent_id: {message}", field_name="consent_id")

    if consent is None or consent.grantee != bank.id:
        # The same answer for an unknown consent and another institution's (xinyi.privacy.consent.check_covers).
        raise Refusal.denied("CONSENT_NOT_FOUND", f"consent_id: no consent {consent_id} for this institution is known "
                             "here", field_name="consent_id",
                             audit_note="" if consent is None else "CONSENT_GRANTEE_MISMATCH")
    if consent.uscc != uscc:
        raise deny("CONSENT_SUBJECT_MISMATCH", f"consent {consent_id} is not about the enterprise asked about")
    if consent.purpose != PURPOSE or consent.fetch_type != "periodic":
        raise deny("NOT_A_MONITORING_CONSENT",
                   f"consent {consent_id} is a {consent.fetch_type} {consent.purpose} consent; alerts need a periodic "
                   f"{PURPOSE} consent")
    status = status_of(consent, now_ms)
    if status is not Status.ACTIVE:
        raise deny(f"CONSENT_{status.upper()}", f"consent {consent_id} is {status.replace('_', ' ')}: no alerts are "
                   "delivered under it")
    if not alert_categories(consent):
        raise deny("CONSENT_SCOPE", f"consent {consent_id} covers none of the categories alerts are about "
                   f"({', '.join(ALERT_CATEGORIES)})")
    return consent


def alert_categories(consent: StoredConsent) -> tuple[str, ...]:
    """The categories of alerts the consent lets its grantee receive."""
    return tuple(c for c in ALERT_CATEGORIES if c in consent.categories)


def kinds_covered(consent: StoredConsent) -> tuple[str, ...]:
    """The alert kinds whose category the consent covers: only these reach the bank."""
    return tuple(k for k, c in KIND_CATEGORY.items() if c in consent.categories)


# --- the node's signed alerts, and opening them at the bank ---------------------------------------
@dataclass(frozen=True)
class StoredAlert:
    """An alert as a node keeps it."""

    seq: int
    uscc: str
    kind: str
    summary: str
    record_key: str
    detected_at_ms: int


def sign_alerts(identity: Identity, alerts: Sequence[StoredAlert]) -> alerts_pb2.AlertBatch:
    """Each alert signed by the node, in seq order."""
    node_id = identity.principal.id
    return alerts_pb2.AlertBatch(alerts=[
        sign(identity, alerts_pb2.AlertBody(node_id=node_id, uscc=a.uscc, seq=a.seq, kind=KINDS[a.kind],
                                            detected_at_ms=a.detected_at_ms, summary=a.summary, record_id=a.record_key))
        for a in alerts
    ])


@dataclass(frozen=True)
class OpenedAlert:
    """One alert, its node's signature verified by the bank."""

    node_id: str
    seq: int
    uscc: str
    kind: str
    summary: str
    record_id: str
    detected_at_ms: int
    signer: Principal = field(compare=False)

    def to_json(self) -> dict:
        return {"node": self.node_id, "seq": self.seq, "uscc": self.uscc, "kind": self.kind, "summary": self.summary,
                "record_id": self.record_id, "detected_at_ms": self.detected_at_ms,
                "detected_at": dt.datetime.fromtimestamp(self.detected_at_ms / 1000, dt.timezone.utc).isoformat(),
                "verified": True}


class AlertError(Exception):
    """A batch that cannot be trusted: it did not open, verify or match the poll."""


def open_alerts(sealed: bytes, answer_key: AnswerKey, *, expected_node: str, node_signing_cert: bytes, uscc: str,
                after: int, trust: TrustAnchor, previous_keys: Sequence[directory_pb2.KeyPeriod] = ()) -> list[OpenedAlert]:
    """Open a node's sealed batch and verify every alert in it, or raise AlertError.

    `node_signing_cert` is the node's signing certificate as the signed directory lists it
    (`previous_keys`: the ones it lists as replaced, accepted for alerts detected while in use).
    Every alert must be signed by that key, be about `uscc`, and come after the cursor `after`,
    in increasing seq order: a batch with one bad alert is refused whole.
    """
    try:
        plaintext = answer_key.open(sealed)
    except ValueError as e:
        raise AlertError(f"alerts from {expected_node}: {e}") from None
    batch = alerts_pb2.AlertBatch()
    try:
        batch.ParseFromString(plaintext)
    except Exception:  # noqa: BLE001 - malformed bytes from the network
        raise AlertError(f"alerts from {expected_node} are malformed") from None
    node = Principal(Role.NODE, expected_node)
    out: list[OpenedAlert] = []
    last = after
    for env in batch.alerts:
        try:
            v = verify(env, alerts_pb2.AlertBody, trust, roles={Role.NODE}, field="alert")
        except Refusal as e:
            raise AlertError(f"an alert from {expected_node} does not verify: {e}") from None
        if v.signer != node:
            raise AlertError(f"an alert for node {expected_node} was signed by {v.signer}")
        a = v.message
        if not listed_key(node_signing_cert, previous_keys, v.signer_cert_der, a.detected_at_ms):
            raise AlertError(f"an alert from {expected_node} was signed with a key the directory does not list for it")
        if a.node_id != expected_node or a.uscc != uscc:
            raise AlertError(f"an alert from {expected_node} is about {a.uscc} from node {a.node_id}")
        if a.seq <= last:
            raise AlertError(f"alert {a.seq} from {expected_node} is not after {last}: replayed or out of order")
        if a.kind not in KIND_NAMES:
            raise AlertError(f"alert {a.seq} from {expected_node} has an unknown kind {a.kind}")
        last = a.seq
        out.append(OpenedAlert(a.node_id, a.seq, a.uscc, KIND_NAMES[a.kind], a.summary, a.record_id,
                               a.detected_at_ms, v.signer))
    return out


__all__ = [
    "ALERT_CATEGORIES", "AlertError", "AlertRules", "AlertRulesError", "Detected", "KINDS", "KIND_CATEGORY",
    "OpenedAlert", "StoredAlert", "build_poll", "build_subscribe", "check_monitoring_consent", "check_poll",
    "check_subscribe", "detect", "kinds_covered", "open_alerts", "refuse_replay", "sign_alerts",
]
