"""Evaluating an enterprise where its data lives: the signed request, the sealed feature
bundles nodes pass to the evaluating node, and the signed result the asker opens.

    asker --signed EvaluationBody--> registry --> each node holding data: ComputeFeatures
                                             <-- features, signed by that node, sealed to the evaluator
                                     registry --> evaluating node: Evaluate(request, sealed bundles)
    asker <------ result signed by the evaluator, sealed to the asker: a score with reason codes,
                  or yes/no with the criteria met. Never a feature value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xinyi.clock import MINUTE_MS
from xinyi.crypto.envelope import Verified, body_hash, sign, verify
from xinyi.crypto.identity import QUERYING_ROLES, Principal, Role
from xinyi.crypto.pki import Identity, TrustAnchor
from xinyi.crypto.sealing import ANSWER_KEY_BYTES, AnswerKey, open_as_node, seal_to, seal_to_node
from xinyi.directory import Directory, listed_key
from xinyi.errors import Kind, Refusal
from xinyi.privacy.consent import check_consent_id
from xinyi.records import uscc as uscc_codes
from xinyi.records.vocab import purpose_problem
from xinyi.v1 import envelope_pb2, scoring_pb2


def build_evaluation(identity: Identity, *, uscc: str, purpose: str, consent_id: str, now_ms: int,
                     model_sha256: bytes | None = None, programme: str | None = None):
    key = AnswerKey.generate()
    body = scoring_pb2.EvaluationBody(uscc=uscc, purpose=purpose, consent_id=consent_id, nonce=os.urandom(16),
                                      issued_at_ms=now_ms, answer_key=key.public_bytes)
    if model_sha256 is not None:
        body.model_sha256 = model_sha256
    else:
        body.programme = programme or ""
    check_fields(body)
    return sign(identity, body), key


def check_fields(body: scoring_pb2.EvaluationBody) -> None:
    problem = uscc_codes.problem(body.uscc)
    if problem:
        raise Refusal.invalid("evaluation.uscc", problem, "INVALID_USCC")
    problem = purpose_problem(body.purpose)
    if problem:
        raise Refusal.invalid("evaluation.purpose", problem, "UNKNOWN_PURPOSE")
    check_consent_id(body.consent_id, "evaluation.consent_id")
    target = body.WhichOneof("target")
    if target is None or (target == "model_sha256" and len(body.model_sha256) != 32) or (target == "programme" and not body.programme):
        raise Refusal.invalid("evaluation.target", "name an approved model (its sha256) or a programme")


def check_evaluation(envelope: envelope_pb2.SignedEnvelope, trust: TrustAnchor, now_ms: int) -> Verified:
    v = verify(envelope, scoring_pb2.EvaluationBody, trust, roles=QUERYING_ROLES, field="evaluation")
    check_fields(v.message)
    if abs(v.message.issued_at_ms - now_ms) > 5 * MINUTE_MS:
        raise Refusal.invalid("evaluation.issued_at_ms", "is more than 300 s from this server's clock; sign it again",
                              "STALE_TIMESTAMP")
    if len(v.message.answer_key) != ANSWER_KEY_BYTES:
        raise Refusal.invalid("evaluation.answer_key", f"must be a {ANSWER_KEY_BYTES}-byte X25519 public key")
    return v


def _node_key(directory: Directory, node_id: str) -> bytes:
    entry = directory.nodes.get(node_id)
    if entry is None:
        raise Refusal(Kind.PRECONDITION, "NODE_NOT_IN_DIRECTORY", f"evaluator: node {node_id} is not in the directory")
    public = x509.load_der_x509_certificate(entry.signing_cert).public_key()
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal_bundle(identity: Identity, directory: Directory, evaluator: str, request_hash: bytes,
                features: dict[str, float]) -> bytes:
    body = scoring_pb2.FeatureBundleBody(request_hash=request_hash, node_id=identity.principal.id, evaluator=evaluator,
                                         features=features)
    signed = sign(identity, body).SerializeToString(deterministic=True)
    return seal_to_node(_node_key(directory, evaluator), signed)


def open_bundles(identity: Identity, directory: Directory, sealed_bundles, request_hash: bytes) -> tuple[dict[str, float], list[str]]:
    """Features from the other nodes, each checked: sealed to us, signed by a listed node, for this request."""
    merged: dict[str, float] = {}
    nodes: list[str] = []
    trust = identity.trust()
    for sealed in sealed_bundles:
        try:
            env = envelope_pb2.SignedEnvelope.FromString(open_as_node(identity, sealed))
        except Exception:  # noqa: BLE001 - malformed bytes from the network
            raise Refusal.invalid("sealed_bundles", "a feature bundle does not open with this node's key") from None
        v = verify(env, scoring_pb2.FeatureBundleBody, trust, roles={Role.NODE}, field="bundle")
        b = v.message
        entry = directory.nodes.get(b.node_id)
        if entry is None:
            raise Refusal(Kind.PRECONDITION, "UNKNOWN_BUNDLE_NODE", f"sealed_bundles: node {b.node_id} is not in this directory")
        if v.signer != Principal(Role.NODE, b.node_id) or entry.signing_cert != v.signer_cert_der:
            raise Refusal.unauthenticated("sealed_bundles", f"a bundle from {b.node_id} is not signed by the key the directory lists")
        if b.request_hash != request_hash or b.evaluator != identity.principal.id:
            raise Refusal.invalid("sealed_bundles", f"the bundle from {b.node_id} is for another request or evaluator")
        for name, value in b.features.items():
            merged.setdefault(name, value)
        nodes.append(b.node_id)
    return merged, nodes


def seal_result(identity: Identity, result: scoring_pb2.EvaluationResultBody, answer_key: bytes) -> bytes:
    return seal_to(answer_key, sign(identity, result).SerializeToString(deterministic=True), "evaluation.answer_key")


@dataclass(frozen=True)
class EvaluationView:
    evaluator: str
    score: float | None
    reasons: list[tuple[str, str]]
    programme: str
    qualifies: bool | None
    criteria: list[tuple[str, bool]]
    nodes: list[str]

    def to_json(self) -> dict:
        out = {"evaluator": self.evaluator, "verified": True, "nodes": self.nodes}
        if self.programme:
            out.update(programme=self.programme, qualifies=self.qualifies,
                       criteria=[{"criterion": c, "met": m} for c, m in self.criteria])
        else:
            out.update(score=self.score, reasons=[{"feature": f, "direction": d} for f, d in self.reasons])
        return out


class EvaluationError(Exception):
    """A result that did not open, verify or match the request."""


def open_result(sealed: bytes, key: AnswerKey, *, evaluator: str, directory: Directory, request_hash: bytes,
                trust: TrustAnchor) -> EvaluationView:
    try:
        env = envelope_pb2.SignedEnvelope.FromString(key.open(sealed))
        v = verify(env, scoring_pb2.EvaluationResultBody, trust, roles={Role.NODE}, field="result")
    except (ValueError, Refusal) as e:
        raise EvaluationError(f"the result from {evaluator} does not open or verify: {e}") from None
    entry = directory.nodes.get(evaluator)
    r = v.message
    if (entry is None or v.signer != Principal(Role.NODE, evaluator)
            or not listed_key(entry.signing_cert, entry.previous_keys, v.signer_cert_der, r.evaluated_at_ms)):
        raise EvaluationError(f"the result was not signed by node {evaluator}'s listed key")
    if r.request_hash != request_hash:
        raise EvaluationError("the result answers another request")
    return EvaluationView(evaluator, r.score if not r.programme else None, [(c.feature, c.direction) for c in r.reasons],
                          r.programme, r.qualifies if r.programme else None, [(c.description, c.met) for c in r.criteria],
                          list(r.contributing_nodes))


__all__ = ["build_evaluation", "check_evaluation", "seal_bundle", "open_bundles", "seal_result", "open_result",
           "EvaluationView", "EvaluationError", "body_hash"]
