"""Generate the conformance vectors in conformance/ (`make conformance`).

Every key comes from a fixed seed, every certificate has a fixed serial and fixed dates and is
signed deterministically (Ed25519; ECDSA per RFC 6979), answers are sealed with a fixed
ephemeral key: running this again gives the same bytes, and tests/test_conformance.py fails
when the committed files differ from a fresh generation. The statements are made by the
product's own code (xinyi.crypto.envelope.sign, the PKI's issue, the audit log's records, the
C2SP note signer); the expected errors are the ones the product raises, and the test checks it.

    python scripts/conformance.py            write conformance/*.json
    python scripts/conformance.py --out DIR  write them under DIR instead
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from nacl.encoding import RawEncoder
from nacl.hash import blake2b
from nacl.public import Box, PrivateKey, PublicKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.store import Record  # noqa: E402
from xinyi.audit import merkle  # noqa: E402
from xinyi.audit.checkpoint import (  # noqa: E402
    ALG_COSIGNATURE_V1, ALG_ED25519, Checkpoint, VerifierKey, add_cosignature, cosignature_key_id, note_key_id,
    sign_note, sign_text)
from xinyi.audit.entry import AuditEntry  # noqa: E402
from xinyi.crypto.envelope import body_hash, sign, signed_input  # noqa: E402
from xinyi.crypto.identity import Principal, Role  # noqa: E402
from xinyi.crypto.pki import CertificateAuthority, Identity, RootCA  # noqa: E402
from xinyi.crypto.revocation import revoke  # noqa: E402
from xinyi.v1 import directory_pb2, envelope_pb2, query_pb2, records_pb2  # noqa: E402

FORMAT = "xinyi-conformance/v1"
OUT = ROOT / "conformance"

UTC = dt.timezone.utc
CERTS_FROM = dt.datetime(2025, 1, 1, tzinfo=UTC)
CERTS_UNTIL = dt.datetime(2045, 1, 1, tzinfo=UTC)
ROOT_UNTIL = dt.datetime(2049, 12, 31, tzinfo=UTC)  # UTCTime still: simpler for every X.509 parser
EXPIRED_UNTIL = dt.datetime(2025, 6, 30, tzinfo=UTC)
NOW_MS = int(dt.datetime(2026, 1, 15, 2, 0, tzinfo=UTC).timestamp() * 1000)

BANK_USCC = "91110000100000589B"
BANK_LICENCE = "B0001H111000001"
ENTERPRISE_USCC = "91510100MA61234567"  # check character fixed below
OTHER_ENTERPRISE_USCC = "91510100MA69999997"  # likewise
CONSENT_ID = "0123456789abcdef0123456789abcdef"
NODE, OTHER_NODE, PROVINCE_NODE = "510100", "310000", "510000"
REGISTRY = "national"


def seed(label: str) -> bytes:
    """32 bytes fixed by a label: every key of the vectors is one of these."""
    return hashlib.sha256(b"xinyi-conformance/v1/" + label.encode()).digest()


def ed_key(label: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed(label))


def ec_key(label: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(seed(label), "big") % (2**256 - 2**224) + 1, ec.SECP256R1())


def hx(data: bytes) -> str:
    return bytes(data).hex()


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def raw_public(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Parties:
    """The fixed network: a root, an issuing CA for banks, a bank, three nodes, the registry,
    and the impostors the bad vectors need."""

    def __init__(self) -> None:
        from xinyi.records.uscc import with_check_character

        self.enterprise = with_check_character(ENTERPRISE_USCC[:17])
        self.bank_uscc = with_check_character(BANK_USCC[:17])
        self.root = RootCA.create(key=ec_key("root"), serial=0x1000, not_before=CERTS_FROM,
                                  validity=ROOT_UNTIL - CERTS_FROM)
        self.banks_ca = self.root.certify_ca("banks", ROOT_UNTIL - CERTS_FROM, key=ec_key("ca-banks"), serial=0x1001,
                                          not_before=CERTS_FROM)
        self.bank = self.issue(self.banks_ca, Role.BANK, self.bank_uscc, 0x2000, licence=BANK_LICENCE)
        self.node = self.issue(self.root, Role.NODE, NODE, 0x2010)
        self.province = self.issue(self.root, Role.NODE, PROVINCE_NODE, 0x2020)
        self.other_node = self.issue(self.root, Role.NODE, OTHER_NODE, 0x2030)
        self.registry = self.issue(self.root, Role.REGISTRY, REGISTRY, 0x2040)
        # The enterprise itself: it signs only self_access queries of its own records.
        self.enterprise_id = self.issue(self.root, Role.ENTERPRISE, self.enterprise, 0x2090)
        self.other_enterprise = with_check_character(OTHER_ENTERPRISE_USCC[:17])
        # Impostors: the node with a key the directory does not list, the node and the registry
        # with expired certificates, another registry, and everyone under a root nobody trusts.
        self.node_unlisted = self.issue(self.root, Role.NODE, NODE, 0x2050, label="node-510100-unlisted")
        self.node_expired = self.issue(self.root, Role.NODE, NODE, 0x2060, label="node-510100-expired",
                                       until=EXPIRED_UNTIL)
        self.registry_expired = self.issue(self.root, Role.REGISTRY, REGISTRY, 0x2070, label="registry-expired",
                                           until=EXPIRED_UNTIL)
        self.backup_registry = self.issue(self.root, Role.REGISTRY, "backup", 0x2080)
        self.rogue_root = RootCA.create(key=ec_key("rogue-root"), serial=0x1000, not_before=CERTS_FROM,
                                        validity=ROOT_UNTIL - CERTS_FROM)
        self.rogue_bank = self.issue(self.rogue_root, Role.BANK, self.bank_uscc, 0x3000, label="rogue-bank",
                                     licence=BANK_LICENCE)
        self.rogue_node = self.issue(self.rogue_root, Role.NODE, NODE, 0x3010, label="rogue-node")
        self.rogue_registry = self.issue(self.rogue_root, Role.REGISTRY, REGISTRY, 0x3020, label="rogue-registry")

    @staticmethod
    def issue(ca: CertificateAuthority, role: Role, principal_id: str, serial: int, *, label: str = "",
              licence: str = "", until: dt.datetime = CERTS_UNTIL) -> Identity:
        label = label or f"{role}-{principal_id}"
        return ca.issue(Principal(role, principal_id), licence=licence, not_before=CERTS_FROM, not_after=until,
                        tls_key=ec_key(label + "/tls"), signing_key=ed_key(label + "/signing"), serial=serial)

    @property
    def root_der(self) -> bytes:
        return der(self.root.cert)


# --- the parts every file shares ---------------------------------------------------------------


def envelope_json(env: envelope_pb2.SignedEnvelope) -> dict:
    """A SignedEnvelope, field by field (names as in envelope.proto), and its serialized bytes."""
    return {
        "body_type": env.body_type,
        "body": hx(env.body),
        "signature": hx(env.signature),
        "signer_cert": hx(env.signer_cert),
        "signer_chain": [hx(c) for c in env.signer_chain],
        "signed_input": hx(signed_input(env.body_type, env.body)),
        "envelope": hx(env.SerializeToString(deterministic=True)),
    }


def resign(identity: Identity, body_type: str, body: bytes, *, chain: bool = True) -> envelope_pb2.SignedEnvelope:
    """An envelope over exact bytes (a tampered or retyped body), signed as `sign` signs."""
    return envelope_pb2.SignedEnvelope(
        body_type=body_type, body=body, signature=identity.signing_key.sign(signed_input(body_type, body)),
        signer_cert=identity.signing_cert_der, signer_chain=identity.chain_der if chain else ())


def flip(data: bytes, at: int = -1) -> bytes:
    """`data` with one bit changed at byte `at`."""
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def refusal(kind: str, reason: str, field: str, description: str) -> dict:
    """An expected xinyi.errors.Refusal: gRPC code, ErrorInfo reason, field and message."""
    return {"error": "Refusal", "code": kind, "reason": reason, "field": field, "message": f"{field}: {description}"}


def header(description: str, now_ms: int = NOW_MS) -> dict:
    return {"format": FORMAT, "generated_by": "scripts/conformance.py", "description": description, "now_ms": now_ms}


def x25519_public(private: bytes) -> bytes:
    return bytes(PrivateKey(private).public_key)


def seal(recipient: bytes, plaintext: bytes, ephemeral_private: bytes) -> bytes:
    """libsodium's crypto_box_seal with a chosen ephemeral key (it draws a random one):
    ephemeral_pk || crypto_box(plaintext, nonce = BLAKE2b-192(ephemeral_pk || recipient_pk))."""
    epk = x25519_public(ephemeral_private)
    nonce = blake2b(epk + recipient, digest_size=24, encoder=RawEncoder)
    return epk + Box(PrivateKey(ephemeral_private), PublicKey(recipient)).encrypt(plaintext, nonce).ciphertext


# --- query.json ---------------------------------------------------------------------------------


def query_fields(p: Parties, **changes) -> dict:
    fields = dict(uscc=p.enterprise, categories=["registration", "tax"], purpose="credit_assessment",
                  consent_id=CONSENT_ID, nonce=seed("query/nonce")[:16], issued_at_ms=NOW_MS - 1500,
                  answer_key=x25519_public(seed("query/answer-key")))
    fields.update(changes)
    return fields


def self_access_fields(p: Parties, **changes) -> dict:
    fields = dict(uscc=p.enterprise, categories=["registration", "tax"], purpose="self_access", consent_id="",
                  nonce=seed("query/self-access-nonce")[:16], issued_at_ms=NOW_MS - 1500,
                  answer_key=x25519_public(seed("query/self-access-answer-key")))
    fields.update(changes)
    return fields


def query_vectors(p: Parties) -> dict:
    fields = query_fields(p)
    env = sign(p.bank, query_pb2.QueryBody(**fields))
    bank = f"bank/{p.bank_uscc}"
    stale = sign(p.bank, query_pb2.QueryBody(**query_fields(p, issued_at_ms=NOW_MS - 301_000)))
    bad = [
        ("body_tampered", "one bit of the body changed after signing (the last byte of answer_key)",
         envelope_pb2.SignedEnvelope(body_type=env.body_type, body=flip(env.body), signature=env.signature,
                                     signer_cert=env.signer_cert, signer_chain=env.signer_chain),
         refusal("UNAUTHENTICATED", "BAD_SIGNATURE", "query.signature",
                 f"does not verify with the key of {bank}; the body was altered or forged")),
        ("signature_without_context", "the signature is over the body bytes alone, without the context and body_type",
         envelope_pb2.SignedEnvelope(body_type=env.body_type, body=env.body, signature=p.bank.signing_key.sign(env.body),
                                     signer_cert=env.signer_cert, signer_chain=env.signer_chain),
         refusal("UNAUTHENTICATED", "BAD_SIGNATURE", "query.signature",
                 f"does not verify with the key of {bank}; the body was altered or forged")),
        ("wrong_body_type", "body_type is xinyi.v1.AnswerBody (signed as such)",
         resign(p.bank, "xinyi.v1.AnswerBody", env.body),
         refusal("INVALID_ARGUMENT", "INVALID_FIELD", "query.body_type",
                 "is 'xinyi.v1.AnswerBody'; expected 'xinyi.v1.QueryBody'")),
        ("signed_by_node", "a node, not a querying institution, signed the query",
         resign(p.node, env.body_type, env.body),
         refusal("UNAUTHENTICATED", "WRONG_SIGNER_ROLE", "query.signer_cert",
                 "signer is a node; only bank, government, guarantor may sign this")),
        ("chain_missing", "signer_chain left empty: the bank's issuing CA is unknown to a verifier holding only the root",
         resign(p.bank, env.body_type, env.body, chain=False),
         refusal("UNAUTHENTICATED", "BAD_CERTIFICATE", "query.signer_cert",
                 "signer certificate was not issued by the national root or an issuing CA it certified")),
        ("unknown_root", "the same bank and key names, certified by a root with the national root's name but another key",
         resign(p.rogue_bank, env.body_type, env.body),
         refusal("UNAUTHENTICATED", "BAD_CERTIFICATE", "query.signer_cert",
                 "signer certificate's signature does not verify against the national root")),
        ("stale", "issued_at_ms is 301 s before now_ms (the window is 300 s either way)", stale,
         refusal("INVALID_ARGUMENT", "STALE_TIMESTAMP", "query.issued_at_ms",
                 "is 301 s behind this server's clock; at most 300 s is accepted "
                 "(check the clock, then sign a fresh query)")),
        # An enterprise signs queries only of purpose self_access, of its own USCC, without a consent.
        ("enterprise_signs_credit_assessment", "the enterprise itself signed the bank's query (purpose credit_assessment)",
         sign(p.enterprise_id, query_pb2.QueryBody(**fields)),
         refusal("UNAUTHENTICATED", "WRONG_SIGNER_ROLE", "query.signer_cert",
                 "signer is an enterprise, which signs only self_access queries of its own records; only bank, "
                 "government, guarantor may sign a query for 'credit_assessment'")),
        ("self_access_with_consent_id", "a self_access query signed by the enterprise, naming a consent id",
         sign(p.enterprise_id, query_pb2.QueryBody(**self_access_fields(p, consent_id=CONSENT_ID))),
         refusal("INVALID_ARGUMENT", "INVALID_FIELD", "query.consent_id",
                 "must be empty for a self_access query: it relies on no consent")),
        ("self_access_of_another_enterprise", "a self_access query signed by the enterprise about another enterprise's "
         "USCC (refused after the envelope and field checks, before policy)",
         sign(p.enterprise_id, query_pb2.QueryBody(**self_access_fields(p, uscc=p.other_enterprise))),
         refusal("PERMISSION_DENIED", "SELF_ACCESS_OF_ANOTHER_ENTERPRISE", "query.uscc",
                    f"enterprise/{p.enterprise} may read only its own records (self_access); this query asks about "
                    "another enterprise, which only an institution holding that enterprise's consent may")),
    ]
    own_fields = self_access_fields(p)
    own = sign(p.enterprise_id, query_pb2.QueryBody(**own_fields))
    return {
        **header("A bank's signed query (SignedEnvelope of xinyi.v1.QueryBody) and its request hash. Verify with "
                 "the root certificate at now_ms; then request_hash = SHA-256(body)."),
        "root_cert": hx(p.root_der),
        "signer": bank,
        "signer_licence": BANK_LICENCE,
        "query": {
            "uscc": fields["uscc"], "categories": fields["categories"], "purpose": fields["purpose"],
            "consent_id": fields["consent_id"], "nonce": hx(fields["nonce"]), "issued_at_ms": fields["issued_at_ms"],
            "answer_key": hx(fields["answer_key"]),
        },
        "answer_key_private": hx(seed("query/answer-key")),
        "signed_envelope": envelope_json(env),
        "request_hash": hx(body_hash(env.body)),
        "self_access": {
            "description": "An enterprise's query of its own records (docs/protocol.md §5.4): purpose self_access, "
                           "consent_id empty, uscc the signer's own, signed by the enterprise (no issuing CA: "
                           "signer_chain empty). A relying party accepts it; the routing and answers are a bank's.",
            "signer": f"enterprise/{p.enterprise}",
            "query": {
                "uscc": own_fields["uscc"], "categories": own_fields["categories"], "purpose": own_fields["purpose"],
                "consent_id": own_fields["consent_id"], "nonce": hx(own_fields["nonce"]),
                "issued_at_ms": own_fields["issued_at_ms"], "answer_key": hx(own_fields["answer_key"]),
            },
            "signed_envelope": envelope_json(own),
            "request_hash": hx(body_hash(own.body)),
        },
        "bad": [{"name": n, "changed": c, "signed_envelope": envelope_json(e), "expect": x} for n, c, e, x in bad],
    }


# --- answer.json --------------------------------------------------------------------------------


def answer_records(p: Parties) -> list[Record]:
    return [
        Record(p.enterprise, "registration", "2025-12-31", "成都市市场监督管理局",
               {"name": "成都示例科技有限公司", "legal_representative": "张*", "registered_capital": 5000000,
                "established": "2016-03-08", "status": "active"}),
        Record(p.enterprise, "tax", "2025-12-31", "国家税务总局成都市税务局",
               {"period": "2025-Q4", "tax_paid": 182300.5, "credit_rating": "A"}, disputed=True),
    ]


def answer_body(p: Parties, **fields) -> query_pb2.AnswerBody:
    """The AnswerBody a node signs (as node/query.py's sign_and_seal builds it); `fields` set the
    request hash and change what a bad vector changes."""
    fields = dict(
        node_id=NODE, uscc=p.enterprise, consent_id=CONSENT_ID,
        records=[records_pb2.CreditRecord(category=r.category, as_of=r.as_of, source=r.source,
                                          fields_json=r.fields_json, record_id=r.record_id, disputed=r.disputed)
                 for r in answer_records(p)],
        answered_at_ms=NOW_MS - 1200,
    ) | fields
    return query_pb2.AnswerBody(**fields)


def answer_vectors(p: Parties, query: dict) -> dict:
    request_hash = bytes.fromhex(query["request_hash"])
    answer_key = bytes.fromhex(query["query"]["answer_key"])
    ephemeral = seed("answer/ephemeral")
    env = sign(p.node, answer_body(p, request_hash=request_hash))
    plaintext = env.SerializeToString(deterministic=True)
    sealed = seal(answer_key, plaintext, ephemeral)
    other_request = hashlib.sha256(b"another query").digest()
    wrong_uscc = p.enterprise[:-1] + ("0" if p.enterprise[-1] != "0" else "1")

    def signed_by(identity: Identity, **changes) -> envelope_pb2.SignedEnvelope:
        return sign(identity, answer_body(p, **{"request_hash": request_hash, **changes}))

    def answer_error(check: str, message: str, error: str = "AnswerError") -> dict:
        return {"error": error, "check": check, "message": message}

    not_verify = f"answer from {NODE} does not verify: "
    tampered = envelope_pb2.SignedEnvelope()
    tampered.CopyFrom(env)
    tampered.body = env.body.replace("张*".encode(), "李*".encode())
    bad_envelopes = [
        ("signed_by_other_node", "signed by node 310000 (a valid node certificate, another node)",
         signed_by(p.other_node), answer_error("signer", f"answer for node {NODE} was signed by node/{OTHER_NODE}")),
        ("signed_by_bank", "signed by a bank certificate",
         signed_by(p.bank), answer_error("envelope", not_verify + "answer.signer_cert: signer is a bank; only node "
                                         "may sign this")),
        ("key_not_in_directory", "signed by node 510100 with a valid certificate the directory does not list for it",
         signed_by(p.node_unlisted),
         answer_error("listed_key", f"answer from {NODE} was signed with a key the directory does not list for it",
                      "UnlistedKey")),
        ("unknown_root", "node 510100's name, certified by a root with the national root's name but another key",
         signed_by(p.rogue_node),
         answer_error("envelope", not_verify + "answer.signer_cert: signer certificate's signature does not verify "
                      "against the national root")),
        ("expired_certificate", "signed by node 510100 with a certificate that expired on 2025-06-30",
         signed_by(p.node_expired),
         answer_error("envelope", not_verify + f"answer.signer_cert: signer certificate of node/{NODE} is outside its "
                      "validity (2025-01-01 to 2025-06-30)")),
        ("body_tampered", "the masked name 张* changed to 李* inside the signed body after signing", tampered,
         answer_error("envelope", not_verify + f"answer.signature: does not verify with the key of node/{NODE}; the "
                      "body was altered or forged")),
        ("wrong_request_hash", "the node signed an answer to another request (request_hash of other bytes)",
         signed_by(p.node, request_hash=other_request),
         answer_error("request_hash", f"answer from {NODE} answers another request")),
        ("wrong_uscc", f"the answer is about {wrong_uscc}, not the enterprise asked about",
         signed_by(p.node, uscc=wrong_uscc),
         answer_error("uscc", f"answer from {NODE} is about {wrong_uscc} from {NODE}")),
        ("wrong_node_id", "the body's node_id names node 510000 (signed by 510100)",
         signed_by(p.node, node_id=PROVINCE_NODE),
         answer_error("node_id", f"answer from {NODE} is about {p.enterprise} from {PROVINCE_NODE}")),
    ]
    bad = [{"name": n, "changed": c, "signed_envelope": envelope_json(e),
            "sealed_answer": hx(seal(answer_key, e.SerializeToString(deterministic=True), ephemeral)), "expect": x}
           for n, c, e, x in bad_envelopes]
    not_open = answer_error("open", "sealed answer does not open with this query's key")
    bad += [
        {"name": "ciphertext_tampered", "changed": "one bit of the sealed answer's ciphertext changed (its last byte)",
         "sealed_answer": hx(flip(sealed)), "expect": not_open},
        {"name": "sealed_to_another_key", "changed": "sealed to another X25519 key, not the query's answer_key",
         "sealed_answer": hx(seal(x25519_public(seed("answer/another-key")), plaintext, ephemeral)),
         "expect": not_open},
    ]
    opened = {
        "node_id": NODE, "signer": f"node/{NODE}", "answered_at_ms": NOW_MS - 1200,
        "records": [{"category": r.category, "as_of": r.as_of, "source": r.source, **r.fields,
                     "record_id": r.record_id, **({"disputed": True} if r.disputed else {})}
                    for r in answer_records(p)],
        "indicators": [],
    }
    return {
        **header("A node's answer to query.json's query: the signed AnswerBody (a SignedEnvelope), then that "
                 "envelope's bytes sealed with crypto_box_seal to the query's answer_key. Open with "
                 "answer_key_private, verify against the root, then check signer, listed key, request hash, USCC "
                 "and node id against the inputs."),
        "root_cert": hx(p.root_der),
        "inputs": {
            "expected_node": NODE,
            "node_signing_cert": hx(p.node.signing_cert_der),
            "request_hash": query["request_hash"],
            "uscc": p.enterprise,
            "answer_key": hx(answer_key),
            "answer_key_private": hx(seed("query/answer-key")),
        },
        "answer_body": {
            "request_hash": query["request_hash"], "node_id": NODE, "uscc": p.enterprise, "consent_id": CONSENT_ID,
            "records": [{"category": r.category, "as_of": r.as_of, "source": r.source, "fields_json": r.fields_json,
                         "record_id": r.record_id, "disputed": r.disputed} for r in answer_records(p)],
            "answered_at_ms": NOW_MS - 1200, "indicators": [],
        },
        "signed_envelope": envelope_json(env),
        "sealing": {"ephemeral_private": hx(ephemeral), "ephemeral_public": hx(x25519_public(ephemeral)),
                    "nonce": hx(blake2b(x25519_public(ephemeral) + answer_key, digest_size=24, encoder=RawEncoder))},
        "sealed_answer": hx(sealed),
        "opened": opened,
        "bad": bad,
    }


# --- directory.json -----------------------------------------------------------------------------


def directory_body(p: Parties, registry_id: str = REGISTRY) -> directory_pb2.DirectoryBody:
    nodes = sorted([(OTHER_NODE, p.other_node), (PROVINCE_NODE, p.province), (NODE, p.node)])
    return directory_pb2.DirectoryBody(
        version=42, issued_at_ms=NOW_MS - 60_000, registry_id=registry_id,
        nodes=[directory_pb2.NodeEntry(node_id=n, endpoint=f"node-{n}.xinyi:7443", signing_cert=i.signing_cert_der,
                                       registered_at_ms=NOW_MS - 86_400_000) for n, i in nodes],
        institutions=[directory_pb2.InstitutionEntry(id=p.bank_uscc, role="bank", licence=BANK_LICENCE,
                                                     registered_at_ms=NOW_MS - 86_400_000)],
        authorities=[der(p.banks_ca.cert)],
    )


def directory_vectors(p: Parties) -> dict:
    env = sign(p.registry, directory_body(p))
    body_type = env.body_type
    unauth = lambda field, reason, text: refusal("UNAUTHENTICATED", reason, f"directory.{field}", text)  # noqa: E731
    tampered = envelope_pb2.SignedEnvelope()
    tampered.CopyFrom(env)
    tampered.body = env.body.replace(b"node-510100.xinyi:7443", b"node-510100.evil0:7443")
    bad = [
        ("signed_by_node", "signed by node 510100, not the registry", resign(p.node, body_type, env.body),
         unauth("signer_cert", "WRONG_SIGNER_ROLE", "signer is a node; only registry may sign this")),
        ("registry_id_mismatch", "signed by registry 'backup' (a valid registry certificate) but the body names "
         "registry_id 'national'", resign(p.backup_registry, body_type, env.body),
         unauth("registry_id", "BAD_SIGNATURE", f"names {REGISTRY} but was signed by registry/backup")),
        ("body_tampered", "node 510100's endpoint changed in the body after signing", tampered,
         unauth("signature", "BAD_SIGNATURE",
                f"does not verify with the key of registry/{REGISTRY}; the body was altered or forged")),
        ("unknown_root", "the registry's name, certified by a root with the national root's name but another key",
         resign(p.rogue_registry, body_type, env.body),
         unauth("signer_cert", "BAD_CERTIFICATE",
                "signer certificate's signature does not verify against the national root")),
        ("expired_certificate", "signed by the registry with a certificate that expired on 2025-06-30",
         resign(p.registry_expired, body_type, env.body),
         unauth("signer_cert", "BAD_CERTIFICATE", f"signer certificate of registry/{REGISTRY} is outside its "
                "validity (2025-01-01 to 2025-06-30)")),
        ("wrong_body_type", "body_type is xinyi.v1.QueryBody (signed as such)",
         resign(p.registry, "xinyi.v1.QueryBody", env.body),
         refusal("INVALID_ARGUMENT", "INVALID_FIELD", "directory.body_type",
                 "is 'xinyi.v1.QueryBody'; expected 'xinyi.v1.DirectoryBody'")),
    ]
    body = directory_body(p)
    return {
        **header("The registry's signed directory (SignedEnvelope of xinyi.v1.DirectoryBody). Verify against the "
                 "root at now_ms: signer role registry, signer id = registry_id."),
        "root_cert": hx(p.root_der),
        "signed_envelope": envelope_json(env),
        "expected": {
            "version": body.version, "issued_at_ms": body.issued_at_ms, "registry_id": body.registry_id,
            "nodes": [{"node_id": n.node_id, "endpoint": n.endpoint, "signing_cert": hx(n.signing_cert)}
                      for n in body.nodes],
            "institutions": [{"id": i.id, "role": i.role, "licence": i.licence} for i in body.institutions],
            "authorities": [hx(a) for a in body.authorities],
            "route": {"uscc": p.enterprise, "node_ids": [NODE, PROVINCE_NODE]},
        },
        "bad": [{"name": n, "changed": c, "signed_envelope": envelope_json(e), "expect": x} for n, c, e, x in bad],
    }


# --- proofs.json and checkpoint.json -------------------------------------------------------------

LOG_SIZE = 7


def log_leaves(p: Parties, request_hash: str) -> list[bytes]:
    """A node's first audit records, as its log writes them: AuditRecord bytes (deterministic
    serialization) chained by prev_root. These bytes are the leaves; never re-encode them."""
    bank = Principal(Role.BANK, p.bank_uscc)
    entries = [AuditEntry(at_ms=NOW_MS - 1200, caller_role="bank", caller_id=bank.id, relayed_by=f"registry/{REGISTRY}",
                          action="query", decision="allow", uscc=p.enterprise, categories=("registration", "tax"),
                          purpose="credit_assessment", consent_id=CONSENT_ID, reason="answered",
                          request_hash=request_hash)]
    entries += [AuditEntry(at_ms=NOW_MS + i * 1000, caller_role="auditor", caller_id="auditor-1",
                           action="list_audit_records", decision="allow" if i % 3 else "deny",
                           reason="answered" if i % 3 else "NOT_AN_AUDITOR: only auditors read the log")
                for i in range(1, LOG_SIZE)]
    tracker, leaves = merkle.RootTracker(), []
    for index, entry in enumerate(entries):
        leaf = entry.to_record(index, tracker.root()).SerializeToString(deterministic=True)
        tracker.append(merkle.leaf_hash(leaf))
        leaves.append(leaf)
    return leaves


def proof_vectors(leaves: list[bytes]) -> dict:
    tree = merkle.MerkleTree(merkle.leaf_hash(leaf) for leaf in leaves)
    n = tree.size
    inclusion = [{"index": i, "tree_size": s, "leaf_hash": hx(tree.leaf(i)),
                  "proof": [hx(h) for h in tree.inclusion_proof(i, s)], "root": hx(tree.root(s))}
                 for s in (n, 4) for i in range(s)]
    consistency = [{"first": f, "second": s, "first_root": hx(tree.root(f)), "second_root": hx(tree.root(s)),
                    "proof": [hx(h) for h in tree.consistency_proof(f, s)]}
                   for f, s in ((1, n), (3, n), (4, n), (6, n), (2, 5), (n, n))]

    def inclusion_case(index: int, size: int, proof: list[bytes], root: bytes, changed: str, name: str) -> dict:
        return {"name": name, "kind": "inclusion", "changed": changed, "index": index, "tree_size": size,
                "leaf_hash": hx(tree.leaf(index)), "proof": [hx(h) for h in proof], "root": hx(root),
                "expect": {"error": "false", "message": "the proof does not verify"}}

    def consistency_case(first: int, second: int, proof: list[bytes], changed: str, name: str) -> dict:
        return {"name": name, "kind": "consistency", "changed": changed, "first": first, "second": second,
                "first_root": hx(tree.root(min(first, n))), "second_root": hx(tree.root(n)),
                "proof": [hx(h) for h in proof], "expect": {"error": "false", "message": "the proof does not verify"}}

    p5, c3 = tree.inclusion_proof(5, n), tree.consistency_proof(3, n)
    bad = [
        inclusion_case(5, n, [p5[0], flip(p5[1]), *p5[2:]], tree.root(), "second proof element has one bit changed",
                       "inclusion_wrong_element"),
        # (Claiming size 8 instead would still verify: for index 5 the RFC 9162 walk over sizes 7 and 8
        # is the same, so the size is bound only through the root it is checked against.)
        inclusion_case(5, n - 1, p5, tree.root(), "tree_size claimed 6 for a proof made for size 7",
                       "inclusion_wrong_size"),
        inclusion_case(4, n, p5, tree.root(), "index 4 claimed for leaf 4's hash with leaf 5's proof",
                       "inclusion_wrong_index"),
        inclusion_case(5, n, p5[:-1], tree.root(), "the last proof element left out", "inclusion_truncated"),
        inclusion_case(5, n, [*p5, p5[-1]], tree.root(), "an extra element appended", "inclusion_extra_element"),
        inclusion_case(5, n, p5, tree.root(6), "checked against the root of size 6", "inclusion_wrong_root"),
        consistency_case(3, n, [c3[0], flip(c3[1]), *c3[2:]], "second proof element has one bit changed",
                         "consistency_wrong_element"),
        {**consistency_case(3, n, c3, "first claimed 4 (with the root of size 4) for a proof made from 3",
                            "consistency_wrong_size"), "first": 4, "first_root": hx(tree.root(4))},
        consistency_case(3, n, c3[:-1], "the last proof element left out", "consistency_truncated"),
        {**consistency_case(3, n, c3, "second_root is the root of size 6", "consistency_wrong_second_root"),
         "second_root": hx(tree.root(6))},
    ]
    return {
        **header("RFC 6962 / RFC 9162 Merkle proofs over a node's first audit records. leaf_hash = SHA-256(0x00 || "
                 "leaf_input), node = SHA-256(0x01 || left || right); proofs list hashes from the leaf (or the "
                 "first tree) upwards, as RFC 9162 prints them."),
        "leaves": [{"index": i, "leaf_input": hx(leaf), "leaf_hash": hx(merkle.leaf_hash(leaf))}
                   for i, leaf in enumerate(leaves)],
        "roots": [{"tree_size": s, "root": hx(tree.root(s))} for s in range(n + 1)],
        "inclusion": inclusion,
        "consistency": consistency,
        "bad": bad,
    }


def checkpoint_vectors(p: Parties, leaves: list[bytes]) -> dict:
    tree = merkle.MerkleTree(merkle.leaf_hash(leaf) for leaf in leaves)
    origin, witness = f"xinyi/{NODE}", f"xinyi/{REGISTRY}"
    log_key, witness_key = p.node.signing_key, p.registry.signing_key
    cosigned_at = NOW_MS // 1000 - 30
    checkpoint = Checkpoint(origin, tree.size, tree.root())
    note = sign_note(checkpoint, origin, log_key)
    cosigned = add_cosignature(note, witness, witness_key, cosigned_at)
    body = checkpoint.body()
    log_kid = note_key_id(origin, log_key.public_key())
    witness_kid = cosignature_key_id(witness, witness_key.public_key())

    def note_error(check: str, message: str) -> dict:
        return {"error": "NoteError", "check": check, "message": message}

    text, _, sigs = cosigned.partition("\n\n")
    log_line, witness_line = sigs.splitlines()
    log_raw = base64.b64decode(log_line.split(" ")[2])
    witness_raw = base64.b64decode(witness_line.split(" ")[2])
    line = lambda name, raw: f"\u2014 {name} {base64.b64encode(raw).decode()}"  # noqa: E731
    other_origin = Checkpoint(f"xinyi/{OTHER_NODE}", tree.size, tree.root())
    bad = [
        ("wrong_key_id", "the log's line signed by node 310000's key under the name xinyi/510100 (so its key id "
         "is not the directory key's)",
         add_cosignature(sign_note(checkpoint, origin, p.other_node.signing_key), witness, witness_key, cosigned_at),
         note_error("log_signature", f"note has no signature by {origin}+{log_kid.hex()}")),
        ("bad_log_signature", "one bit of the log's Ed25519 signature changed (key id intact)",
         f"{body}\n{line(origin, flip(log_raw))}\n{witness_line}\n",
         note_error("log_signature", f"invalid signature for key {origin}+{log_kid.hex()}")),
        ("root_changed", "the root line replaced by the root of size 6 after signing",
         cosigned.replace(base64.b64encode(tree.root()).decode(), base64.b64encode(tree.root(6)).decode(), 1),
         note_error("log_signature", f"invalid signature for key {origin}+{log_kid.hex()}")),
        ("wrong_origin", "the origin line says xinyi/310000; signed by node 510100's key under its own name",
         add_cosignature(sign_text(other_origin.body(), origin, log_key), witness, witness_key, cosigned_at),
         note_error("origin", f"checkpoint is of log 'xinyi/{OTHER_NODE}', not '{origin}'")),
        ("bad_cosignature", "one bit of the witness's signature changed (key id and timestamp intact)",
         f"{body}\n{log_line}\n{line(witness, flip(witness_raw))}\n",
         note_error("cosignature", f"invalid cosignature for key {witness}+{witness_kid.hex()}")),
        ("cosignature_timestamp_changed", "the cosignature's timestamp raised by one second after signing",
         f"{body}\n{log_line}\n"
         f"{line(witness, witness_raw[:4] + (cosigned_at + 1).to_bytes(8, 'big') + witness_raw[12:])}\n",
         note_error("cosignature", f"invalid cosignature for key {witness}+{witness_kid.hex()}")),
        ("no_cosignature", "the latest checkpoint before the witness cosigned it (only the log's line)", note,
         note_error("cosignature", f"note has no cosignature by {witness}+{witness_kid.hex()}")),
        ("cosigned_by_a_node", "the cosignature line made by node 510000's key under the name xinyi/national",
         add_cosignature(note, witness, p.province.signing_key, cosigned_at),
         note_error("cosignature", f"note has no cosignature by {witness}+{witness_kid.hex()}")),
    ]
    assert text + "\n" == body
    # The node's signing key revoked by the root: the same note counts only when the witness
    # cosigned it before the revocation (docs/protocol.md §8.3 step 6).
    revoked_at = dt.datetime.fromtimestamp(cosigned_at + 10, UTC)  # 20 s before now_ms
    crl = revoke(p.root.cert, p.root.key, None, [p.node.signing_cert.serial_number], "key_compromise",
                 now=revoked_at, deterministic=True)
    signer = (f"checkpoint signed by key {log_kid.hex()} of {origin}, whose certificate (serial "
              f"{p.node.signing_cert.serial_number:x}) was revoked at {revoked_at:%Y-%m-%d %H:%M:%S} UTC "
              "(key_compromise); only checkpoints a witness cosigned before then are accepted")
    late = int(revoked_at.timestamp()) + 5
    revoked = {
        "description": "The root revoked the log's signing certificate (crl: the root's CRL, DER) at revoked_at "
                       "(seconds). Checked at now_ms with that list, a checkpoint signed by the log's key counts "
                       "only when it carries a valid witness cosignature dated before revoked_at, by a witness "
                       "key in force then; each case's expect is null (accepted) or the NoteError.",
        "crl": hx(crl.public_bytes(serialization.Encoding.DER)),
        "revoked_at": int(revoked_at.timestamp()),
        "root_cert": hx(der(p.root.cert)),
        "cases": [
            {"name": "cosigned_before", "changed": "the witness cosigned it 10 s before the revocation",
             "cosigned_note": cosigned, "expect": None},
            {"name": "not_cosigned", "changed": "only the log's line: nothing dates it",
             "cosigned_note": note, "expect": note_error("signer_in_force",
                                                        f"{signer} (it carries no valid witness cosignature)")},
            {"name": "cosigned_after", "changed": "the witness cosigned it 5 s after the revocation",
             "cosigned_note": add_cosignature(note, witness, witness_key, late),
             "expect": note_error("signer_in_force", f"{signer} (the witness cosigned it at "
                                  f"{dt.datetime.fromtimestamp(late, UTC):%Y-%m-%d %H:%M:%S} UTC)")},
        ],
    }
    return {
        **header("A node's signed checkpoint (C2SP signed-note + tlog-checkpoint) over the log in proofs.json, "
                 "cosigned by the registry as witness (C2SP tlog-cosignature, cosignature/v1). The log's key name "
                 "is its origin xinyi/<node id>, the witness's xinyi/<registry id>; their public keys are the "
                 "Ed25519 keys of their signing certificates in the directory."),
        "origin": origin,
        "tree_size": tree.size,
        "root": hx(tree.root()),
        "root_base64": base64.b64encode(tree.root()).decode(),
        "body": body,
        "note": note,
        "cosigned_note": cosigned,
        "log": {"key_name": origin, "public_key": hx(raw_public(log_key)), "signing_cert": hx(p.node.signing_cert_der),
                "key_id": log_kid.hex(), "alg": ALG_ED25519,
                "vkey": VerifierKey(origin, ALG_ED25519, log_key.public_key()).encode(),
                "signature": hx(log_raw[4:])},
        "witness": {"key_name": witness, "public_key": hx(raw_public(witness_key)),
                    "signing_cert": hx(p.registry.signing_cert_der), "key_id": witness_kid.hex(),
                    "alg": ALG_COSIGNATURE_V1,
                    "vkey": VerifierKey(witness, ALG_COSIGNATURE_V1, witness_key.public_key()).encode(),
                    "timestamp": cosigned_at, "signed_message": f"cosignature/v1\ntime {cosigned_at}\n{body}",
                    "signature": hx(witness_raw[12:])},
        "bad": [{"name": n, "changed": c, "cosigned_note": t, "expect": x} for n, c, t, x in bad],
        "revoked": revoked,
    }


def generate(out: Path = OUT) -> list[Path]:
    p = Parties()
    query = query_vectors(p)
    leaves = log_leaves(p, query["request_hash"])
    files = {
        "query.json": query,
        "answer.json": answer_vectors(p, query),
        "directory.json": directory_vectors(p),
        "checkpoint.json": checkpoint_vectors(p, leaves),
        "proofs.json": proof_vectors(leaves),
    }
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        path = out / name
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="directory to write the vectors to")
    args = parser.parse_args()
    for path in generate(args.out):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
