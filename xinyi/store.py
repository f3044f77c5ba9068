"""What the node's and the registry's stores have in common: consents, the audit log, nonces.

Both stores are SQLAlchemy Core over one engine, so SQLite and PostgreSQL behave alike. Methods
are synchronous; the async servers call them through asyncio.to_thread so that a slow disk
blocks no other request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from sqlalchemy import Engine, MetaData, insert, select, update
from sqlalchemy.exc import IntegrityError

from xinyi import db

if TYPE_CHECKING:
    from xinyi.errors import Refusal
    from xinyi.identity import Principal


@dataclass(frozen=True)
class AuditEntry:
    """One decision in an audit log."""

    at_ms: int
    caller_role: str
    caller_id: str
    action: str
    decision: str  # "allow" or "deny"
    relayed_by: str = ""
    uscc: str = ""
    categories: tuple[str, ...] = ()
    purpose: str = ""
    consent_id: str = ""
    policy_ids: tuple[str, ...] = ()
    reason: str = ""
    request_hash: str = ""
    trace_id: str = ""
    detail: str = ""
    seq: int = 0  # assigned by the log

    @classmethod
    def of(
        cls,
        at_ms: int,
        caller: "Principal",
        action: str,
        refusal: "Refusal | None",
        *,
        allowed: str,
        consent: "StoredConsent | None" = None,
        policy_ids: tuple[str, ...] = (),
        **fields,
    ) -> "AuditEntry":
        """An entry for one decision: denied with the refusal's reason, or allowed with `allowed`."""
        if consent is not None:
            fields.update(uscc=consent.uscc, categories=consent.categories, purpose=consent.purpose,
                          consent_id=consent.consent_id)
        return cls(
            at_ms=at_ms,
            caller_role=str(caller.role),
            caller_id=caller.id,
            action=action,
            decision="deny" if refusal else "allow",
            policy_ids=(refusal.policy_ids or policy_ids) if refusal else policy_ids,
            reason=f"{refusal.reason}: {refusal.message}" if refusal else allowed,
            **fields,
        )

    def row(self) -> dict:
        return {
            "at_ms": self.at_ms,
            "caller_role": self.caller_role,
            "caller_id": self.caller_id,
            "relayed_by": self.relayed_by,
            "action": self.action,
            "uscc": self.uscc,
            "categories": ",".join(self.categories),
            "purpose": self.purpose,
            "consent_id": self.consent_id,
            "decision": self.decision,
            "policy_ids": ",".join(self.policy_ids),
            "reason": self.reason,
            "request_hash": self.request_hash,
            "trace_id": self.trace_id,
            "detail": self.detail,
        }

    @classmethod
    def from_row(cls, row) -> "AuditEntry":
        m = row._mapping
        split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
        return cls(
            seq=m["seq"],
            at_ms=m["at_ms"],
            caller_role=m["caller_role"],
            caller_id=m["caller_id"],
            relayed_by=m["relayed_by"],
            action=m["action"],
            uscc=m["uscc"],
            categories=split(m["categories"]),
            purpose=m["purpose"],
            consent_id=m["consent_id"],
            decision=m["decision"],
            policy_ids=split(m["policy_ids"]),
            reason=m["reason"],
            request_hash=m["request_hash"],
            trace_id=m["trace_id"],
            detail=m["detail"],
        )


@dataclass(frozen=True)
class StoredConsent:
    """A consent row: the signed bytes and what was read from them when they were verified."""

    consent_id: str
    uscc: str
    grantee: str
    purpose: str
    categories: tuple[str, ...]
    valid_from_ms: int
    valid_until_ms: int
    envelope: bytes
    revocation: bytes | None = None
    revoked_at_ms: int | None = None
    received_at_ms: int = 0

    def row(self) -> dict:
        d = dict(self.__dict__)
        d["categories"] = ",".join(self.categories)
        return d

    @classmethod
    def from_row(cls, row) -> "StoredConsent":
        d = dict(row._mapping)
        d["categories"] = tuple(c for c in d["categories"].split(",") if c)
        return cls(**d)


class BaseStore:
    """Tables and operations shared by the node and registry stores."""

    def __init__(self, url: str, metadata: MetaData | None = None) -> None:
        self.url = db.normalize_url(url)
        self.metadata = metadata or MetaData()
        self.audit = db.audit_table(self.metadata)
        self.consents = db.consents_table(self.metadata)
        self.nonces = db.nonces_table(self.metadata)
        self.engine: Engine = db.open_engine(self.url)

    def create_schema(self) -> None:
        try:
            self.metadata.create_all(self.engine)
        except Exception as e:  # noqa: BLE001 - turned into an actionable message
            raise db.StoreError(f"cannot open database {self.engine.url.render_as_string(hide_password=True)}: {e.__class__.__name__}: {str(e).splitlines()[0]}") from None

    def close(self) -> None:
        self.engine.dispose()

    # --- audit log -------------------------------------------------------------------------
    def append_audit(self, entry: AuditEntry) -> int:
        """Append one entry, durably; return its sequence number."""
        with self.engine.begin() as conn:
            return conn.execute(insert(self.audit).values(entry.row())).inserted_primary_key[0]

    def list_audit(self, start_seq: int = 1, limit: int = 100, uscc: str = "") -> list[AuditEntry]:
        q = select(self.audit).where(self.audit.c.seq >= start_seq).order_by(self.audit.c.seq).limit(limit)
        if uscc:
            q = q.where(self.audit.c.uscc == uscc)
        with self.engine.connect() as conn:
            return [AuditEntry.from_row(r) for r in conn.execute(q)]

    # --- consents --------------------------------------------------------------------------
    def put_consent(self, consent: StoredConsent) -> bool:
        """Store a consent; False when it was already known (consents are immutable)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(self.consents).values(consent.row()))
            return True
        except IntegrityError:
            return False

    def revoke_consent(self, consent_id: str, revocation: bytes, revoked_at_ms: int) -> bool:
        """Record a revocation; False when the consent was already revoked or is unknown."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(self.consents)
                .where(self.consents.c.consent_id == consent_id, self.consents.c.revocation.is_(None))
                .values(revocation=revocation, revoked_at_ms=revoked_at_ms)
            )
            return result.rowcount == 1

    def get_consent(self, consent_id: str) -> StoredConsent | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(self.consents).where(self.consents.c.consent_id == consent_id)).first()
        return StoredConsent.from_row(row) if row else None

    def consents_for(self, usccs: Iterable[str] | None = None) -> list[StoredConsent]:
        q = select(self.consents).order_by(self.consents.c.received_at_ms, self.consents.c.consent_id)
        if usccs is not None:
            q = q.where(self.consents.c.uscc.in_(list(usccs)))
        with self.engine.connect() as conn:
            return [StoredConsent.from_row(r) for r in conn.execute(q)]

    # --- replay protection -----------------------------------------------------------------
    def remember_nonce(self, signer: str, nonce: bytes, expires_at_ms: int, now_ms: int) -> bool:
        """Record a signer's nonce; False when it was seen before (a replay)."""
        try:
            with self.engine.begin() as conn:
                if nonce[:1] == b"\x00":  # nonces are random: prune about once in 256 calls
                    conn.execute(self.nonces.delete().where(self.nonces.c.expires_at_ms < now_ms))
                conn.execute(insert(self.nonces).values(signer=signer, nonce=nonce, expires_at_ms=expires_at_ms))
            return True
        except IntegrityError:
            return False
