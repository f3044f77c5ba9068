"""The registry's store: nodes, their out-of-area holding claims, known institutions, the
directory version and the signed directory, plus the consents, audit log and nonces it shares
with the node's store (xinyi.store.BaseStore).

Several registry processes (replicas) may share one PostgreSQL database: every decision is taken
by the database, never in one process's memory. What the directory publishes changes only under
a lock on the directory version's row (versions grow one by one, and the directory signed for a
version shows exactly the changes up to it); consent events take their numbers under a lock on
their counter's row, so they commit in number order whichever replica wrote them.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from sqlalchemy import (BigInteger, Boolean, Column, Index, Integer, LargeBinary, String, Table, Text, case, delete, func,
                        insert, select, update)

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from registry.addresses import AddressChange, NodeAddress, observe_address
from xinyi import db
from xinyi.privacy.consent import StoredConsent
from xinyi.store import BaseStore

# registry_meta rows: the directory's version, the last consent event's number.
DIRECTORY_VERSION = "directory_version"
CONSENT_EVENT_SEQ = "consent_event_seq"


@dataclass(frozen=True)
class NodeAnswers:
    """What one node did with the queries routed to it under one consent."""

    answers: int = 0
    last_answered_ms: int = 0
    last_outcome: int = 0  # query_pb2.NodeOutcome of the last query; 0: never asked
    last_asked_ms: int = 0


@dataclass(frozen=True)
class NodeRow:
    node_id: str
    endpoint: str
    signing_cert: bytes
    registered_at_ms: int


# The states of a node's claim to hold records for an enterprise outside its own area.
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


@dataclass(frozen=True)
class ClaimRow:
    node_id: str
    uscc: str
    state: str  # PENDING, APPROVED or REJECTED
    claimed_at_ms: int
    decided_at_ms: int  # 0 while pending


@dataclass(frozen=True)
class Registration:
    """What one registration changed."""

    changed: bool  # the directory changed: a new endpoint or key, or an approved holding withdrawn
    new_claims: tuple[str, ...] = ()  # USCCs claimed for the first time (pending)
    withdrawn: tuple[str, ...] = ()  # USCCs the node no longer claims
    address: AddressChange | None = None  # where the node was and is, and whether it moved


@dataclass(frozen=True)
class DirectoryContent:
    """Everything the signed directory publishes, read in one transaction at one version."""

    version: int
    nodes: list[NodeRow]
    key_histories: dict[str, list[tuple[bytes, int, int]]] = field(default_factory=dict)
    approvals: list[bytes] = field(default_factory=list)
    holdings: list["ClaimRow"] = field(default_factory=list)
    institutions: list["InstitutionRow"] = field(default_factory=list)
    authorities: list[bytes] = field(default_factory=list)
    revocation_lists: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class InstitutionRow:
    role: str
    institution_id: str
    licence: str
    registered_at_ms: int


class EndpointTaken(Exception):
    """The endpoint is registered by another node."""


class RegistryStore(BaseStore):
    SCHEMA = "registry"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.nodes = Table(
            "nodes",
            self.metadata,
            Column("node_id", String(6), primary_key=True),
            Column("endpoint", String(255), nullable=False),
            Column("signing_cert", LargeBinary, nullable=False),
            Column("registered_at_ms", BigInteger, nullable=False),
        )
        # A node's claims to hold records for enterprises outside its own area; only approved
        # ones are published in the directory and routed. (The earlier table "holdings" held
        # unreviewed declarations; it is no longer read.)
        self.holding_claims = Table(
            "holding_claims",
            self.metadata,
            Column("node_id", String(6), primary_key=True),
            Column("uscc", String(18), primary_key=True),
            Column("state", String(8), nullable=False),
            Column("claimed_at_ms", BigInteger, nullable=False),
            Column("decided_at_ms", BigInteger, nullable=False),
        )
        # Banks, guarantors and government departments that registered: consents may name only them.
        self.institutions = Table(
            "institutions",
            self.metadata,
            Column("institution_id", String(18), primary_key=True),
            Column("role", String(16), primary_key=True),
            Column("licence", String(64), nullable=False),
            Column("registered_at_ms", BigInteger, nullable=False),
        )
        # Signing keys replaced by a rotation, with the time each was in use, published in the
        # directory so that what they signed still verifies: a node's ("node/510100", valid_until
        # set when its new key registered) and the registry's own (its current key is the row
        # with valid_until_ms 0).
        self.key_history = Table(
            "key_history",
            self.metadata,
            Column("principal", String(64), primary_key=True),
            Column("valid_from_ms", BigInteger, primary_key=True),
            Column("signing_cert", LargeBinary, nullable=False),
            Column("valid_until_ms", BigInteger, nullable=False),
        )
        self.witnessed_logs = Table(
            "witnessed_logs",
            self.metadata,
            Column("origin", String(64), primary_key=True),
            Column("size", BigInteger, nullable=False),
            Column("root", LargeBinary(32), nullable=False),
            Column("note", Text, nullable=False),
            Column("at_ms", BigInteger, nullable=False),
        )
        self.consent_events = Table(
            "consent_events",
            self.metadata,
            Column("seq", db.Seq, primary_key=True, autoincrement=True),
            Column("consent_id", String(64), nullable=False),
        )
        # Each consent's latest event: what a node catching up needs is each consent's present
        # state once, not every event of its history.
        self.consent_heads = Table(
            "consent_heads",
            self.metadata,
            Column("consent_id", String(64), primary_key=True),
            Column("seq", BigInteger, nullable=False, unique=True),
        )
        # Events commit in the order of their numbers, so a node that has read up to event n has
        # seen every event before n: each takes its number from the CONSENT_EVENT_SEQ row, whose
        # lock it holds until it commits (across replicas), and from this lock (across threads:
        # SQLite has no row locks).
        self._event_lock = threading.Lock()
        # What the directory publishes changes one transaction at a time: across replicas by the
        # DIRECTORY_VERSION row's lock, across this process's threads by this one.
        self._directory_lock = threading.Lock()
        # Each node's outcome for each query routed under a consent (written with the routing's
        # audit entry): what the enterprise's view of the consent shows per node.
        self.consent_node_results = Table(
            "consent_node_results",
            self.metadata,
            Column("consent_id", String(64), primary_key=True),
            Column("request_hash", String(64), primary_key=True),
            Column("node_id", String(6), primary_key=True),
            Column("outcome", Integer, nullable=False),
            Column("at_ms", BigInteger, nullable=False),
        )
        self.audit_extras["consent_node_results"] = self.consent_node_results
        # Whether each node on a consent's route has it in its present state (`version`: the
        # number of its signed changes). A push counts when the node acknowledged it; a pull
        # when the node next asks for changes after `ack_seq` (it has applied that page).
        self.consent_deliveries = Table(
            "consent_deliveries",
            self.metadata,
            Column("consent_id", String(64), primary_key=True),
            Column("node_id", String(6), primary_key=True),
            Column("version", Integer, nullable=False),
            Column("ack_seq", BigInteger, nullable=False),
            Column("delivered", Boolean, nullable=False),
            Index("ix_consent_deliveries_waiting", "node_id", "delivered"),
        )
        self.delegations = Table(
            "delegations",
            self.metadata,
            Column("uscc", String(18), primary_key=True),
            Column("representative", String(64), primary_key=True),
            Column("valid_until_ms", BigInteger, nullable=False),
            Column("revoked", Boolean, nullable=False),
            Column("issued_at_ms", BigInteger, nullable=False),
            Column("envelope", LargeBinary, nullable=False),
        )
        self.models = Table(
            "models",
            self.metadata,
            Column("sha256", LargeBinary(32), primary_key=True),
            Column("name", String(128), nullable=False),
            Column("submitted_by", String(64), nullable=False),
            Column("envelope", LargeBinary, nullable=False),
            Column("onnx", LargeBinary, nullable=False),
            Column("approval", LargeBinary, nullable=True),  # serialized ModelApproval, once approved
            Column("submitted_at_ms", BigInteger, nullable=False),
        )
        # What CA operators published (PublishRevocations), as the directory publishes it: issuing
        # CAs the root certified, and per CA (by its subject's SHA-256) its newest revocation list.
        self.authorities = Table(
            "authorities",
            self.metadata,
            Column("subject_sha256", LargeBinary(32), primary_key=True),
            Column("certificate", LargeBinary, nullable=False),
            Column("published_at_ms", BigInteger, nullable=False),
        )
        self.revocation_lists = Table(
            "revocation_lists",
            self.metadata,
            Column("issuer_sha256", LargeBinary(32), primary_key=True),
            Column("crl_number", BigInteger, nullable=False),
            Column("crl", LargeBinary, nullable=False),
            Column("published_at_ms", BigInteger, nullable=False),
        )
        self.meta = Table(
            "registry_meta",
            self.metadata,
            Column("key", String(32), primary_key=True),
            Column("value", BigInteger, nullable=False),
        )
        # The directory signed at the newest version, by whichever replica signed it first: every
        # replica serves the same signed bytes for a version (only the newest row is kept).
        self.signed_directory = Table(
            "signed_directory",
            self.metadata,
            Column("version", BigInteger, primary_key=True, autoincrement=False),
            Column("envelope", LargeBinary, nullable=False),
            Column("signed_at_ms", BigInteger, nullable=False),
        )
        # Where each node registered from, when that last changed, and a conflict (two processes
        # holding one node's certificate): registry/addresses.py decides, this keeps it.
        self.node_addresses = Table(
            "node_addresses",
            self.metadata,
            Column("node_id", String(6), primary_key=True),
            Column("endpoint", String(255), nullable=False),
            Column("registered_at_ms", BigInteger, nullable=False),
            Column("previous_endpoint", String(255), nullable=False),
            Column("changed_at_ms", BigInteger, nullable=False),
            Column("conflict_endpoints", Text, nullable=False),  # newline-separated, latest last
            Column("conflict_at_ms", BigInteger, nullable=False),
        )

    def create_schema(self) -> None:
        super().create_schema()
        # The counters' rows, each made once whichever replica starts first (a store from before
        # the event counter starts it at the last event; migration 0002 seeds them too).
        last_event = select(func.coalesce(func.max(self.consent_events.c.seq), 0)).scalar_subquery()
        with self.engine.begin() as conn:
            for key, value in ((DIRECTORY_VERSION, 0), (CONSENT_EVENT_SEQ, last_event)):
                conn.execute(self._insert(self.meta).values(key=key, value=value).on_conflict_do_nothing())

    def _insert(self, table: Table):
        """INSERT with ON CONFLICT clauses, in this database's dialect."""
        return (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(table)

    @contextmanager
    def _directory_change(self) -> Iterator:
        """A transaction that may change what the directory publishes: it holds the version row's
        lock from its start to its commit, so no other replica changes the directory meanwhile and
        a directory signed at version n shows exactly the changes up to n."""
        m = self.meta.c
        with self._directory_lock, self.engine.begin() as conn:
            conn.execute(select(m.value).where(m.key == DIRECTORY_VERSION).with_for_update())
            yield conn

    def upsert_node(self, row: NodeRow, claimed: list[str] = ()) -> Registration:
        """Record a node's registration and its out-of-area claims (replacing the ones it made
        before): a new claim is pending until the operator decides; a claim no longer made is
        dropped. Raises EndpointTaken when another node registered this endpoint."""
        c = self.holding_claims.c
        with self._directory_change() as conn:
            other = conn.execute(select(self.nodes.c.node_id).where(self.nodes.c.endpoint == row.endpoint,
                                                                    self.nodes.c.node_id != row.node_id)).first()
            if other is not None:
                raise EndpointTaken()
            current = conn.execute(select(self.nodes).where(self.nodes.c.node_id == row.node_id)).first()
            changed = current is None or current.endpoint != row.endpoint or current.signing_cert != row.signing_cert
            if current is not None and current.signing_cert != row.signing_cert:
                self._retire_key(conn, f"node/{row.node_id}", current.signing_cert, row.registered_at_ms)
            if current is None:
                conn.execute(insert(self.nodes).values(**row.__dict__))
            elif changed:
                conn.execute(update(self.nodes).where(self.nodes.c.node_id == row.node_id).values(**row.__dict__))
            before = dict(conn.execute(select(c.uscc, c.state).where(c.node_id == row.node_id)).all())
            wanted = set(claimed)
            new = sorted(wanted - before.keys())
            withdrawn = sorted(before.keys() - wanted)
            for start in range(0, len(withdrawn), 500):  # bounded IN lists
                conn.execute(delete(self.holding_claims).where(c.node_id == row.node_id,
                                                               c.uscc.in_(withdrawn[start:start + 500])))
            changed = changed or any(before[u] == APPROVED for u in withdrawn)
            if new:
                conn.execute(insert(self.holding_claims), [
                    {"node_id": row.node_id, "uscc": u, "state": PENDING, "claimed_at_ms": row.registered_at_ms,
                     "decided_at_ms": 0} for u in new])
            if changed:
                self._bump_version(conn)
            address = self._observe_address(conn, row.node_id, current.endpoint if current else "", row.endpoint,
                                            row.registered_at_ms)
            return Registration(changed, tuple(new), tuple(withdrawn), address)

    def _observe_address(self, conn, node_id: str, known: str, endpoint: str, at_ms: int) -> AddressChange:
        a = self.node_addresses.c
        held = conn.execute(select(self.node_addresses).where(a.node_id == node_id)).first()
        before = None if held is None else NodeAddress(
            held.endpoint, held.registered_at_ms, held.previous_endpoint, held.changed_at_ms,
            tuple(e for e in held.conflict_endpoints.split("\n") if e), held.conflict_at_ms)
        change = observe_address(before, known, endpoint, at_ms)
        state = change.address
        values = dict(endpoint=state.endpoint, registered_at_ms=state.registered_at_ms,
                      previous_endpoint=state.previous_endpoint, changed_at_ms=state.changed_at_ms,
                      conflict_endpoints="\n".join(state.conflict_endpoints), conflict_at_ms=state.conflict_at_ms)
        if held is None:
            conn.execute(insert(self.node_addresses).values(node_id=node_id, **values))
        else:
            conn.execute(update(self.node_addresses).where(a.node_id == node_id).values(**values))
        return change

    def node_addresses_seen(self) -> dict[str, NodeAddress]:
        """Each registered node's address history (registry/addresses.py), by node id."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(self.node_addresses)).all()
        return {r.node_id: NodeAddress(r.endpoint, r.registered_at_ms, r.previous_endpoint, r.changed_at_ms,
                                       tuple(e for e in r.conflict_endpoints.split("\n") if e), r.conflict_at_ms)
                for r in rows}

    def _retire_key(self, conn, principal: str, cert: bytes, at_ms: int) -> None:
        """Keep a replaced key, in use from the end of the one before it until `at_ms`."""
        k = self.key_history.c
        since = conn.execute(select(func.max(k.valid_until_ms)).where(k.principal == principal)).scalar() or 0
        conn.execute(insert(self.key_history).values(principal=principal, valid_from_ms=min(since, at_ms),
                                                     signing_cert=cert, valid_until_ms=at_ms))

    def note_own_key(self, principal: str, cert: bytes, at_ms: int) -> bool:
        """The registry's current signing key; when it differs from the one recorded, the
        recorded one is retired as of `at_ms`. True when that changed the directory."""
        k = self.key_history.c
        with self._directory_change() as conn:
            current = conn.execute(select(self.key_history).where(k.principal == principal, k.valid_until_ms == 0)).first()
            if current is not None and current.signing_cert == cert:
                return False
            if current is not None:
                conn.execute(update(self.key_history).where(k.principal == principal, k.valid_until_ms == 0)
                             .values(valid_until_ms=at_ms))
            conn.execute(insert(self.key_history).values(principal=principal, valid_from_ms=at_ms if current else 0,
                                                         signing_cert=cert, valid_until_ms=0))
            if current is not None:
                self._bump_version(conn)
            return current is not None

    def key_histories(self, conn=None) -> dict[str, list[tuple[bytes, int, int]]]:
        """Replaced keys by principal, oldest first: (certificate DER, valid from, valid until)."""
        k = self.key_history.c
        with self._reading(conn) as conn:
            rows = conn.execute(select(self.key_history).where(k.valid_until_ms != 0)
                                .order_by(k.principal, k.valid_from_ms)).all()
        out: dict[str, list[tuple[bytes, int, int]]] = {}
        for r in rows:
            out.setdefault(r.principal, []).append((r.signing_cert, r.valid_from_ms, r.valid_until_ms))
        return out

    def claims(self, node_id: str = "", state: str = "") -> list[ClaimRow]:
        """Holding claims, by node then USCC, optionally of one node or in one state."""
        c = self.holding_claims.c
        q = select(self.holding_claims).order_by(c.node_id, c.uscc)
        if node_id:
            q = q.where(c.node_id == node_id)
        if state:
            q = q.where(c.state == state)
        with self.engine.connect() as conn:
            return [ClaimRow(r.node_id, r.uscc, r.state, r.claimed_at_ms, r.decided_at_ms) for r in conn.execute(q)]

    def decide_claim(self, node_id: str, uscc: str, state: str, at_ms: int) -> ClaimRow | None:
        """Approve or reject a claim; None when the node makes no such claim. The directory
        version grows when the set of approved holdings changes."""
        c = self.holding_claims.c
        with self._directory_change() as conn:
            row = conn.execute(select(self.holding_claims).where(c.node_id == node_id, c.uscc == uscc)).first()
            if row is None:
                return None
            if row.state != state:
                conn.execute(update(self.holding_claims).where(c.node_id == node_id, c.uscc == uscc)
                             .values(state=state, decided_at_ms=at_ms))
                if APPROVED in (row.state, state):
                    self._bump_version(conn)
                return ClaimRow(node_id, uscc, state, row.claimed_at_ms, at_ms)
            return ClaimRow(node_id, uscc, row.state, row.claimed_at_ms, row.decided_at_ms)

    def approved_holdings(self, conn=None) -> list[ClaimRow]:
        """The approved claims, by USCC then node: what the directory publishes."""
        c = self.holding_claims.c
        q = select(self.holding_claims).where(c.state == APPROVED).order_by(c.uscc, c.node_id)
        with self._reading(conn) as conn:
            return [ClaimRow(r.node_id, r.uscc, r.state, r.claimed_at_ms, r.decided_at_ms) for r in conn.execute(q)]

    def put_institution(self, row: InstitutionRow) -> bool:
        """Record an institution; True when that changed the directory (new, or a new licence)."""
        i = self.institutions.c
        where = (i.institution_id == row.institution_id, i.role == row.role)
        with self._directory_change() as conn:
            current = conn.execute(select(i.licence).where(*where)).first()
            if current is not None and current.licence == row.licence:
                return False
            if current is None:
                conn.execute(insert(self.institutions).values(**row.__dict__))
            else:
                conn.execute(update(self.institutions).where(*where).values(licence=row.licence,
                                                                            registered_at_ms=row.registered_at_ms))
            self._bump_version(conn)
            return True

    def list_institutions(self, conn=None) -> list[InstitutionRow]:
        i = self.institutions.c
        with self._reading(conn) as conn:
            rows = conn.execute(select(self.institutions).order_by(i.institution_id, i.role)).all()
        return [InstitutionRow(r.role, r.institution_id, r.licence, r.registered_at_ms) for r in rows]

    def put_revocations(self, authorities: list[tuple[bytes, bytes]], crls: list[tuple[bytes, int, bytes]],
                        at_ms: int) -> list[bytes]:
        """Keep issuing CAs (subject hash, DER) not kept yet, and revocation lists (issuer hash,
        CRL number, DER) newer than the one kept for their CA: never an older number, however
        the calls interleave. Returns the issuer hashes of the lists taken; the directory
        version grows when anything was kept."""
        a, r = self.authorities.c, self.revocation_lists.c
        taken: list[bytes] = []
        changed = False
        with self._directory_change() as conn:  # one publication at a time: a CRL number only grows
            for subject, der in authorities:
                if conn.execute(select(a.subject_sha256).where(a.subject_sha256 == subject)).first() is None:
                    conn.execute(insert(self.authorities).values(subject_sha256=subject, certificate=der,
                                                                 published_at_ms=at_ms))
                    changed = True
            for issuer, number, der in crls:
                held = conn.execute(select(r.crl_number).where(r.issuer_sha256 == issuer)).scalar()
                if held is None:
                    conn.execute(insert(self.revocation_lists).values(issuer_sha256=issuer, crl_number=number, crl=der,
                                                                      published_at_ms=at_ms))
                elif number > held:
                    conn.execute(update(self.revocation_lists).where(r.issuer_sha256 == issuer, r.crl_number == held)
                                 .values(crl_number=number, crl=der, published_at_ms=at_ms))
                else:
                    continue
                taken.append(issuer)
                changed = True
            if changed:
                self._bump_version(conn)
        return taken

    def revocation_material(self, conn=None) -> tuple[list[bytes], list[bytes]]:
        """The issuing CAs and revocation lists the directory publishes (DER, in a stable order)."""
        with self._reading(conn) as conn:
            cas = conn.execute(select(self.authorities.c.certificate).order_by(self.authorities.c.subject_sha256)).scalars()
            cas = list(cas)
            crls = list(conn.execute(select(self.revocation_lists.c.crl)
                                     .order_by(self.revocation_lists.c.issuer_sha256)).scalars())
        return cas, crls

    def _bump_version(self, conn) -> None:
        """Within _directory_change: the directory has changed."""
        m = self.meta.c
        conn.execute(update(self.meta).where(m.key == DIRECTORY_VERSION).values(value=m.value + 1))

    @contextmanager
    def _reading(self, conn=None) -> Iterator:
        """The given connection (a transaction under way), else a new one."""
        if conn is not None:
            yield conn
            return
        with self.engine.connect() as new:
            yield new

    def list_nodes(self, conn=None) -> tuple[int, list[NodeRow]]:
        """The directory version and the nodes in it, by node id."""
        with self._reading(conn) as conn:
            version = self._version(conn)
            rows = conn.execute(select(self.nodes).order_by(self.nodes.c.node_id)).all()
        return version, [NodeRow(r.node_id, r.endpoint, r.signing_cert, r.registered_at_ms) for r in rows]

    def _version(self, conn) -> int:
        return conn.execute(select(self.meta.c.value).where(self.meta.c.key == DIRECTORY_VERSION)).scalar() or 0

    def directory_versions(self) -> tuple[int, int]:
        """The directory's version, and the newest version signed (-1: none yet): what a
        replica compares with the one it serves, several times a second."""
        d = self.signed_directory.c
        with self.engine.connect() as conn:
            version = self._version(conn)
            signed = conn.execute(select(func.max(d.version))).scalar()
        return version, -1 if signed is None else signed

    def signed_directory_at(self, have: int, sign: Callable[[DirectoryContent], bytes],
                            now_ms: int) -> tuple[int, bytes] | None:
        """The signed directory of the newest version, when that is not `have`: the one a
        replica signed already, else one signed now with `sign` (serialized SignedEnvelope)
        under the version's lock, so that every replica serves the same bytes for a version and
        a version's directory shows exactly the changes up to it."""
        d = self.signed_directory.c
        version, signed = self.directory_versions()
        if version == have:
            return None
        if signed != version:
            with self._directory_change() as conn:
                version = self._version(conn)  # the lock is held: no change can come in now
                if conn.execute(select(d.version).where(d.version == version)).first() is None:
                    envelope = sign(self._directory_content(conn, version))
                    conn.execute(delete(self.signed_directory).where(d.version < version))
                    conn.execute(insert(self.signed_directory).values(version=version, envelope=envelope,
                                                                      signed_at_ms=now_ms))
                    return version, envelope
        with self.engine.connect() as conn:
            row = conn.execute(select(d.version, d.envelope).order_by(d.version.desc()).limit(1)).first()
        return (row.version, bytes(row.envelope)) if row.version != have else None

    def _directory_content(self, conn, version: int) -> DirectoryContent:
        _, nodes = self.list_nodes(conn)
        authorities, revocation_lists = self.revocation_material(conn)
        return DirectoryContent(version, nodes, self.key_histories(conn), self.approved_models(conn),
                                self.approved_holdings(conn), self.list_institutions(conn), authorities,
                                revocation_lists)

    def put_model(self, sha256: bytes, name: str, submitted_by: str, envelope: bytes, onnx: bytes, at_ms: int) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(self.models).values(sha256=sha256, name=name, submitted_by=submitted_by,
                                                        envelope=envelope, onnx=onnx, submitted_at_ms=at_ms))
            return True
        except IntegrityError:
            return False

    def get_model(self, sha256: bytes) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(self.models).where(self.models.c.sha256 == sha256)).first()
        return dict(row._mapping) if row else None

    def list_models(self) -> list[dict]:
        m = self.models.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(m.sha256, m.name, m.submitted_by, m.approval, m.envelope)
                                .order_by(m.submitted_at_ms)).all()
        return [dict(r._mapping) for r in rows]

    def approve_model(self, sha256: bytes, approval: bytes) -> None:
        """Record an approval; the directory (which publishes approvals) gets a new version."""
        with self._directory_change() as conn:
            conn.execute(update(self.models).where(self.models.c.sha256 == sha256).values(approval=approval))
            self._bump_version(conn)

    def approved_models(self, conn=None) -> list[bytes]:
        with self._reading(conn) as conn:
            return [bytes(a) for a in conn.execute(select(self.models.c.approval).where(self.models.c.approval.is_not(None))
                                                   .order_by(self.models.c.sha256)).scalars()]

    def witnessed(self, origin: str) -> tuple[int, bytes, str] | None:
        """The last checkpoint of a log this witness cosigned: size, root, note."""
        c = self.witnessed_logs.c
        with self.engine.connect() as conn:
            row = conn.execute(select(c.size, c.root, c.note).where(c.origin == origin)).first()
        return (row.size, bytes(row.root), row.note) if row else None

    def advance_witnessed(self, origin: str, last: tuple[int, bytes, str] | None, size: int, root: bytes, note: str,
                          at_ms: int) -> bool:
        """Move a log's cosigned checkpoint from `last` (as `witnessed` read it) to (size, root),
        only if no one moved it since: False when another replica did, and the witness must
        read and decide again. A compare-and-set in one statement, so replicas sharing the
        database never cosign two trees of one size."""
        c = self.witnessed_logs.c
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        values = {"size": size, "root": root, "note": note, "at_ms": at_ms}
        with self.engine.begin() as conn:
            if last is None:
                return conn.execute(dialect_insert(self.witnessed_logs).values(origin=origin, **values)
                                    .on_conflict_do_nothing().returning(c.origin)).first() is not None
            return conn.execute(update(self.witnessed_logs).where(
                c.origin == origin, c.size == last[0], c.root == last[1]).values(**values)
                .returning(c.origin)).first() is not None

    def add_consent_event(self, consent_id: str) -> int:
        """A consent was granted or changed: nodes pulling changes will see it after this number."""
        m = self.meta.c
        with self._event_lock, self.engine.begin() as conn:
            # The counter's row stays locked until this commits: the next event, from any
            # replica, takes the next number only then.
            conn.execute(update(self.meta).where(m.key == CONSENT_EVENT_SEQ).values(value=m.value + 1))
            seq = conn.execute(select(m.value).where(m.key == CONSENT_EVENT_SEQ)).scalar_one()
            last = conn.execute(select(func.max(self.consent_events.c.seq))).scalar() or 0
            if last >= seq:  # events written without the counter (a store filled by hand, an older version)
                seq = last + 1
                conn.execute(update(self.meta).where(m.key == CONSENT_EVENT_SEQ).values(value=seq))
            conn.execute(insert(self.consent_events).values(seq=seq, consent_id=consent_id))
            conn.execute(delete(self.consent_heads).where(self.consent_heads.c.consent_id == consent_id))
            conn.execute(insert(self.consent_heads).values(consent_id=consent_id, seq=seq))
        return seq

    def last_consent_event(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.max(self.consent_events.c.seq))).scalar() or 0

    def consent_ids_changed_after(self, after: int, limit: int = 1000) -> tuple[int, list[str]]:
        """The last event number, and the consents of the events after `after` (at most `limit`
        events: the number returned is then the last of them): what a replica forgets from its
        cache of consents because another replica changed them."""
        e = self.consent_events.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(e.seq, e.consent_id).where(e.seq > after).order_by(e.seq).limit(limit)).all()
            if len(rows) < limit:
                head = max(conn.execute(select(func.max(e.seq))).scalar() or 0, after)
            else:
                head = rows[-1].seq
        return head, [r.consent_id for r in rows]

    def consents_changed_after(self, after: int, limit: int) -> tuple[int, list[tuple[int, str, StoredConsent | None]]]:
        """The newest event number, then up to `limit` consents whose latest event is after
        `after`: (that event, consent id, the consent), in event order, each consent once.

        The head is read first: every event up to it has committed, so it is on this page or
        (when the page is full) on a later one."""
        h = self.consent_heads.c
        with self.engine.connect() as conn:
            head = conn.execute(select(func.max(self.consent_events.c.seq))).scalar() or 0
            rows = conn.execute(
                select(h.seq.label("head_seq"), h.consent_id.label("head_id"), self.consents)
                .select_from(self.consent_heads.outerjoin(self.consents, self.consents.c.consent_id == h.consent_id))
                .where(h.seq > after).order_by(h.seq).limit(limit)
            ).all()
        out = []
        for row in rows:
            stored = self._consent(row) if row.consent_id is not None else None
            out.append((row.head_seq, row.head_id, stored))
        return head, out

    def consent_details(self, consent_ids: list[str]) -> dict[str, tuple[list[bytes], int, int]]:
        """For each consent: its signed changes in order, its use count, its last use (0: never)."""
        if not consent_ids:
            return {}
        c, u = self.consent_changes.c, self.consent_uses.c
        out: dict[str, tuple[list[bytes], int, int]] = {i: ([], 0, 0) for i in consent_ids}
        with self.engine.connect() as conn:
            for consent_id, envelope in conn.execute(select(c.consent_id, c.envelope).where(c.consent_id.in_(consent_ids))
                                                     .order_by(c.consent_id, c.at_ms)):
                out[consent_id][0].append(bytes(envelope))
            for consent_id, count, last in conn.execute(select(u.consent_id, func.count(), func.max(u.at_ms))
                                                        .where(u.consent_id.in_(consent_ids)).group_by(u.consent_id)):
                out[consent_id] = (out[consent_id][0], count, last or 0)
        return out

    # --- consents at each node --------------------------------------------------------------
    def note_deliveries(self, sent: list[tuple[str, str, int, int, bool]]) -> None:
        """Consents sent to nodes: (consent id, node id, version, ack_seq, acknowledged). True:
        the node acknowledged that version; False: it will have it once it pulled past event
        `ack_seq`. An older version never replaces a newer one, nor an unconfirmed copy a
        confirmed one of the same version."""
        if not sent:
            return
        d = self.consent_deliveries.c
        with self.engine.begin() as conn:
            for consent_id, node_id, version, ack_seq, ok in sent:
                values = {"version": version, "ack_seq": ack_seq, "delivered": ok}
                # One statement decides, so a push and a pull noting the same node at once cannot
                # undo each other: the row changes only to a newer version, or to the same one confirmed.
                newer = (d.version < version) | ((d.version == version) & d.delivered.is_(False) & ok)
                for _ in range(2):
                    if conn.execute(update(self.consent_deliveries).values(**values).where(
                            d.consent_id == consent_id, d.node_id == node_id, newer)).rowcount:
                        break
                    inserted = conn.execute(self._insert(self.consent_deliveries).values(
                        consent_id=consent_id, node_id=node_id, **values).on_conflict_do_nothing())
                    if inserted.rowcount:
                        break  # else the row exists (perhaps just committed by another): decide again

    def note_applied(self, node_id: str, after: int) -> None:
        """The node asked for consent changes after event `after`: it has applied every page up
        to there, so what those pages carried to it is delivered."""
        d = self.consent_deliveries.c
        with self.engine.begin() as conn:
            conn.execute(update(self.consent_deliveries)
                         .where(d.node_id == node_id, d.delivered.is_(False), d.ack_seq <= after)
                         .values(delivered=True))

    def deliveries_of(self, consent_id: str) -> dict[str, tuple[int, bool]]:
        """node id -> (version it has or was sent, whether it is known to have it)."""
        d = self.consent_deliveries.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(d.node_id, d.version, d.delivered).where(d.consent_id == consent_id)).all()
        return {r.node_id: (r.version, r.delivered) for r in rows}

    def node_answers(self, consent_id: str, answered: tuple[int, ...]) -> dict[str, NodeAnswers]:
        """Per node: how many queries under the consent it answered (outcome in `answered`),
        when it last answered, and its last outcome."""
        r = self.consent_node_results.c
        is_answer = r.outcome.in_(answered)
        with self.engine.connect() as conn:
            totals = conn.execute(
                select(r.node_id, func.sum(case((is_answer, 1), else_=0)), func.max(case((is_answer, r.at_ms))),
                       func.max(r.at_ms))
                .where(r.consent_id == consent_id).group_by(r.node_id)).all()
            out = {}
            for node_id, answers, last_answered, last_asked in totals:
                last_outcome = conn.execute(select(r.outcome).where(r.consent_id == consent_id, r.node_id == node_id,
                                                                    r.at_ms == last_asked)
                                            .order_by(r.outcome).limit(1)).scalar()
                out[node_id] = NodeAnswers(int(answers or 0), last_answered or 0, last_outcome or 0, last_asked)
        return out

    def put_delegation(self, uscc: str, representative: str, valid_until_ms: int, revoked: bool, issued_at_ms: int,
                       envelope: bytes) -> bool:
        """Keep the newest signed delegation statement for (enterprise, representative)."""
        values = dict(valid_until_ms=valid_until_ms, revoked=revoked, issued_at_ms=issued_at_ms, envelope=envelope)
        stmt = self._insert(self.delegations).values(uscc=uscc, representative=representative, **values)
        # One statement decides, so two replicas storing two statements at once keep the newer.
        stmt = stmt.on_conflict_do_update(index_elements=["uscc", "representative"], set_=values,
                                          where=self.delegations.c.issued_at_ms < issued_at_ms)
        with self.engine.begin() as conn:
            return conn.execute(stmt.returning(self.delegations.c.uscc)).first() is not None

    def delegation(self, uscc: str, representative: str) -> tuple[bytes, bool, int] | None:
        """The newest delegation statement: envelope, revoked, valid until."""
        d = self.delegations.c
        with self.engine.connect() as conn:
            row = conn.execute(select(d.envelope, d.revoked, d.valid_until_ms)
                               .where(d.uscc == uscc, d.representative == representative)).first()
        return (bytes(row.envelope), row.revoked, row.valid_until_ms) if row else None

    def represented_by(self, representative: str, now_ms: int) -> frozenset[str]:
        """The enterprises a representative currently signs for."""
        d = self.delegations.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(d.uscc).where(d.representative == representative, d.revoked.is_(False),
                                                     d.valid_until_ms > now_ms)).scalars()
            return frozenset(rows)
