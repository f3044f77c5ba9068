"""The conformance vectors in conformance/: the committed files are what scripts/conformance.py
generates, and the product's own verification accepts every good vector (with the expected
values) and refuses every bad one with the reason the file states. A client in another language
passes the same files (conformance/README.md)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path

import pytest
from cryptography import x509
from nacl.public import PrivateKey

from xinyi.audit import merkle
from xinyi.audit.checkpoint import NoteError, VerifierKey, verify_cosignature
from xinyi.audit.verify import verify_checkpoint, verify_log
from xinyi.crypto.pki import TrustAnchor, licence_of
from xinyi.crypto.sealing import AnswerKey
from xinyi.directory import Directory
from xinyi.errors import Refusal
from xinyi.query import AnswerError, UnlistedKey, check_query, check_self_access, open_answer
from xinyi.v1 import envelope_pb2

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "conformance"
FILES = ("query.json", "answer.json", "directory.json", "checkpoint.json", "proofs.json")
HINT = "the committed vectors in conformance/ are stale: run `make conformance` and commit the result"


def _load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def _b(text: str) -> bytes:
    return bytes.fromhex(text)


def _trust(vectors: dict) -> TrustAnchor:
    return TrustAnchor(x509.load_der_x509_certificate(_b(vectors["root_cert"])))


def _envelope(fields: dict) -> envelope_pb2.SignedEnvelope:
    """The envelope from its bytes, checked against its fields as the file lists them."""
    env = envelope_pb2.SignedEnvelope.FromString(_b(fields["envelope"]))
    assert env.body_type == fields["body_type"] and env.body == _b(fields["body"])
    assert env.signature == _b(fields["signature"]) and env.signer_cert == _b(fields["signer_cert"])
    assert list(env.signer_chain) == [_b(c) for c in fields["signer_chain"]]
    assert _b(fields["signed_input"]) == b"xinyi-signed-envelope/v1\n" + env.body_type.encode() + b"\n" + env.body
    return env


def _at(vectors: dict) -> dt.datetime:
    return dt.datetime.fromtimestamp(vectors["now_ms"] / 1000, dt.timezone.utc)


def _refused(refusal: Refusal, expect: dict) -> None:
    assert expect["error"] == "Refusal"
    got = {"code": refusal.kind.value, "reason": refusal.reason, "field": refusal.violations[0].field,
           "message": refusal.message}
    assert got == {k: expect[k] for k in got}


def _bad(vectors: dict) -> list:
    return [pytest.param(case, id=case["name"]) for case in vectors["bad"]]


# --- the committed files are fresh ----------------------------------------------------------------


def test_committed_vectors_match_a_fresh_generation(tmp_path):
    spec = importlib.util.spec_from_file_location("conformance_gen", ROOT / "scripts" / "conformance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.generate(tmp_path)
    assert sorted(p.name for p in fresh) == sorted(FILES)
    stale = [p.name for p in fresh if not (VECTORS / p.name).exists()
             or (VECTORS / p.name).read_bytes() != p.read_bytes()]
    assert not stale, f"{HINT}: {stale}"


# --- query.json -----------------------------------------------------------------------------------

QUERY = _load("query.json")


def test_query_verifies_and_hashes_as_stated():
    v = check_query(_envelope(QUERY["signed_envelope"]), _trust(QUERY), QUERY["now_ms"])
    assert str(v.signer) == QUERY["signer"]
    assert licence_of(v.signer_cert_der) == QUERY["signer_licence"]
    assert v.body_hash.hex() == QUERY["request_hash"]
    q, fields = v.message, QUERY["query"]
    assert (q.uscc, list(q.categories), q.purpose, q.consent_id, q.issued_at_ms) == (
        fields["uscc"], fields["categories"], fields["purpose"], fields["consent_id"], fields["issued_at_ms"])
    assert (q.nonce.hex(), q.answer_key.hex()) == (fields["nonce"], fields["answer_key"])
    assert bytes(PrivateKey(_b(QUERY["answer_key_private"])).public_key) == q.answer_key


def test_self_access_query_verifies_and_hashes_as_stated():
    """An enterprise signs a query of its own records (purpose self_access, no consent): a relying
    party accepts it from the enterprise itself."""
    own = QUERY["self_access"]
    v = check_query(_envelope(own["signed_envelope"]), _trust(QUERY), QUERY["now_ms"])
    check_self_access(v)
    assert str(v.signer) == own["signer"] and v.signer.id == own["query"]["uscc"]
    assert v.body_hash.hex() == own["request_hash"]
    q, fields = v.message, own["query"]
    assert (q.uscc, list(q.categories), q.purpose, q.consent_id, q.issued_at_ms) == (
        fields["uscc"], fields["categories"], "self_access", "", fields["issued_at_ms"])
    assert (q.nonce.hex(), q.answer_key.hex()) == (fields["nonce"], fields["answer_key"])


@pytest.mark.parametrize("case", _bad(QUERY))
def test_bad_query_is_refused(case):
    """Refused by the checks of the envelope and the fields, or (a self_access query about
    another enterprise) by the self-access check every relying party makes next."""
    with pytest.raises(Refusal) as refused:
        check_self_access(check_query(_envelope(case["signed_envelope"]), _trust(QUERY), QUERY["now_ms"]))
    _refused(refused.value, case["expect"])


# --- answer.json ----------------------------------------------------------------------------------

ANSWER = _load("answer.json")


def _open(sealed: bytes):
    inputs = ANSWER["inputs"]
    return open_answer(sealed, AnswerKey(PrivateKey(_b(inputs["answer_key_private"]))),
                       expected_node=inputs["expected_node"], node_signing_cert=_b(inputs["node_signing_cert"]),
                       request_hash=_b(inputs["request_hash"]), uscc=inputs["uscc"], trust=_trust(ANSWER))


def test_answer_opens_verifies_and_reads_as_stated():
    assert ANSWER["inputs"]["request_hash"] == QUERY["request_hash"]
    assert ANSWER["inputs"]["answer_key"] == QUERY["query"]["answer_key"]
    opened = _open(_b(ANSWER["sealed_answer"]))
    assert {"node_id": opened.node_id, "signer": str(opened.signer), "answered_at_ms": opened.answered_at_ms,
            "records": opened.records, "indicators": opened.indicators} == ANSWER["opened"]
    plaintext = AnswerKey(PrivateKey(_b(ANSWER["inputs"]["answer_key_private"]))).open(_b(ANSWER["sealed_answer"]))
    assert plaintext == _envelope(ANSWER["signed_envelope"]).SerializeToString(deterministic=True)
    assert _b(ANSWER["sealed_answer"])[:32].hex() == ANSWER["sealing"]["ephemeral_public"]


def test_the_answers_signing_key_is_the_directorys():
    listed = {n["node_id"]: n["signing_cert"] for n in DIRECTORY["expected"]["nodes"]}
    assert ANSWER["inputs"]["node_signing_cert"] == listed[ANSWER["inputs"]["expected_node"]]


@pytest.mark.parametrize("case", _bad(ANSWER))
def test_bad_answer_is_refused(case):
    expect = case["expect"]
    with pytest.raises(AnswerError) as refused:
        _open(_b(case["sealed_answer"]))
    assert type(refused.value) is {"AnswerError": AnswerError, "UnlistedKey": UnlistedKey}[expect["error"]]
    assert str(refused.value) == expect["message"]


# --- directory.json -------------------------------------------------------------------------------

DIRECTORY = _load("directory.json")


def test_directory_verifies_and_reads_as_stated():
    expected = DIRECTORY["expected"]
    d = Directory.verify(_envelope(DIRECTORY["signed_envelope"]), _trust(DIRECTORY), at=_at(DIRECTORY))
    assert (d.version, d.issued_at_ms, d.registry_id) == (
        expected["version"], expected["issued_at_ms"], expected["registry_id"])
    assert [{"node_id": n.node_id, "endpoint": n.endpoint, "signing_cert": n.signing_cert.hex()}
            for n in d.nodes.values()] == expected["nodes"]
    assert [{"id": i.id, "role": i.role, "licence": i.licence} for e in d.institutions.values() for i in e] == \
        expected["institutions"]
    assert d.route(expected["route"]["uscc"]) == expected["route"]["node_ids"]


def test_directory_authorities_let_a_root_only_verifier_check_the_bank():
    """What the directory publishes is what a verifier holding only the root needs for the bank's
    issuing CA: after verifying the directory, a query without its chain verifies."""
    trust = _trust(DIRECTORY)
    Directory.verify(_envelope(DIRECTORY["signed_envelope"]), trust, at=_at(DIRECTORY))
    chainless = next(c for c in QUERY["bad"] if c["name"] == "chain_missing")
    assert check_query(_envelope(chainless["signed_envelope"]), trust, QUERY["now_ms"]).body_hash.hex() == \
        QUERY["request_hash"]


@pytest.mark.parametrize("case", _bad(DIRECTORY))
def test_bad_directory_is_refused(case):
    with pytest.raises(Refusal) as refused:
        Directory.verify(_envelope(case["signed_envelope"]), _trust(DIRECTORY), at=_at(DIRECTORY))
    _refused(refused.value, case["expect"])


# --- checkpoint.json ------------------------------------------------------------------------------

CHECKPOINT = _load("checkpoint.json")


def _keys() -> tuple:
    log, witness = CHECKPOINT["log"], CHECKPOINT["witness"]
    return VerifierKey.parse(log["vkey"]), VerifierKey.parse(witness["vkey"])


def _verify_checkpoint(note: str):
    """What a client does with a cosigned checkpoint: the log's signature and origin, then the
    witness's cosignature (the file's order, which the bad cases' `check` names)."""
    log, witness = _keys()
    checkpoint = verify_checkpoint(note, CHECKPOINT["origin"], log.public_key)
    return checkpoint, verify_cosignature(note, witness.name, witness.public_key)


def test_checkpoint_and_cosignature_verify_as_stated():
    log, witness = _keys()
    assert (log.name, log.key_id.hex(), log.alg) == (CHECKPOINT["log"]["key_name"], CHECKPOINT["log"]["key_id"], 1)
    assert (witness.name, witness.key_id.hex(), witness.alg) == (
        CHECKPOINT["witness"]["key_name"], CHECKPOINT["witness"]["key_id"], 4)
    for who in ("log", "witness"):  # the verifier keys are the signing certificates' keys
        cert = x509.load_der_x509_certificate(_b(CHECKPOINT[who]["signing_cert"]))
        assert cert.public_key() == (log if who == "log" else witness).public_key
    checkpoint, timestamp = _verify_checkpoint(CHECKPOINT["cosigned_note"])
    assert (checkpoint.origin, checkpoint.size, checkpoint.root.hex()) == (
        CHECKPOINT["origin"], CHECKPOINT["tree_size"], CHECKPOINT["root"])
    assert checkpoint.body() == CHECKPOINT["body"] and timestamp == CHECKPOINT["witness"]["timestamp"]
    assert verify_checkpoint(CHECKPOINT["note"], CHECKPOINT["origin"], log.public_key) == checkpoint


def test_the_checkpoint_signs_the_log_of_proofs_json():
    """verify_log, the auditor's check, recomputes the signed root from proofs.json's leaves."""
    log, _ = _keys()
    entries = [(leaf["index"], _b(leaf["leaf_input"])) for leaf in PROOFS["leaves"]]
    report, state = verify_log(CHECKPOINT["note"], CHECKPOINT["origin"], log.public_key, entries)
    assert report.ok, report.problems
    assert state is not None and state.root.hex() == CHECKPOINT["root"]


@pytest.mark.parametrize("case", _bad(CHECKPOINT))
def test_bad_checkpoint_is_refused(case):
    with pytest.raises(NoteError) as refused:
        _verify_checkpoint(case["cosigned_note"])
    assert case["expect"]["error"] == "NoteError"
    assert str(refused.value) == case["expect"]["message"]


@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"]) for c in CHECKPOINT["revoked"]["cases"]])
def test_a_checkpoint_signed_with_a_revoked_key_counts_only_when_cosigned_before(case):
    """docs/protocol.md §8.3 step 6, with the root's CRL as the directory publishes it."""
    from xinyi.audit.verify import LogKeys
    from xinyi.crypto.revocation import RevocationSet

    revoked = CHECKPOINT["revoked"]
    trust = _trust(revoked)
    crl = x509.load_der_x509_crl(_b(revoked["crl"]))
    trust.set_revocations(RevocationSet.verified([crl], trust.issuer_cert_by_name))
    assert crl[0].revocation_date_utc.timestamp() == revoked["revoked_at"]
    cert = lambda who: x509.load_der_x509_certificate(_b(CHECKPOINT[who]["signing_cert"]))  # noqa: E731
    keys = LogKeys((cert("log"),), trust, CHECKPOINT["witness"]["key_name"], (cert("witness"),), _at(CHECKPOINT))
    if case["expect"] is None:
        assert verify_checkpoint(case["cosigned_note"], CHECKPOINT["origin"], keys).root.hex() == CHECKPOINT["root"]
        return
    with pytest.raises(NoteError) as refused:
        verify_checkpoint(case["cosigned_note"], CHECKPOINT["origin"], keys)
    assert case["expect"]["check"] == "signer_in_force"
    assert str(refused.value) == case["expect"]["message"]
    # Without the list (before it was published), the same note verifies.
    unpublished = LogKeys((cert("log"),), _trust(revoked), at=_at(CHECKPOINT))
    assert verify_checkpoint(case["cosigned_note"], CHECKPOINT["origin"], unpublished).size == CHECKPOINT["tree_size"]


# --- proofs.json ----------------------------------------------------------------------------------

PROOFS = _load("proofs.json")


def test_leaves_and_roots_hash_as_stated():
    hashes = [merkle.leaf_hash(_b(leaf["leaf_input"])) for leaf in PROOFS["leaves"]]
    assert [h.hex() for h in hashes] == [leaf["leaf_hash"] for leaf in PROOFS["leaves"]]
    assert [merkle.root_of(hashes[:r["tree_size"]]).hex() for r in PROOFS["roots"]] == [r["root"] for r in PROOFS["roots"]]


def test_inclusion_and_consistency_proofs_verify():
    for c in PROOFS["inclusion"]:
        assert merkle.verify_inclusion(_b(c["leaf_hash"]), c["index"], c["tree_size"], [_b(h) for h in c["proof"]],
                                       _b(c["root"])), c
    for c in PROOFS["consistency"]:
        assert merkle.verify_consistency(c["first"], c["second"], _b(c["first_root"]), _b(c["second_root"]),
                                         [_b(h) for h in c["proof"]]), c


@pytest.mark.parametrize("case", _bad(PROOFS))
def test_bad_proof_does_not_verify(case):
    proof = [_b(h) for h in case["proof"]]
    if case["kind"] == "inclusion":
        ok = merkle.verify_inclusion(_b(case["leaf_hash"]), case["index"], case["tree_size"], proof, _b(case["root"]))
    else:
        ok = merkle.verify_consistency(case["first"], case["second"], _b(case["first_root"]), _b(case["second_root"]),
                                       proof)
    assert case["expect"]["error"] == "false" and ok is False
