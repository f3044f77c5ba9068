"""Models and evaluation at the registry.

Banks submit ONNX models (signed); the platform operator, acting with the registry's own
identity, approves them, and the approval is published in the signed directory. An evaluation
request (a score with an approved model, or an eligibility check) is routed like a query: the
nodes holding the enterprise's data compute features and seal them to one evaluating node,
which answers the asker directly, sealed. The registry sees neither features nor results.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

from registry.directory import NetworkDirectory
from registry.store import RegistryStore
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.compute import models as model_rules
from xinyi.compute.evaluation import check_evaluation
from xinyi.compute.features import Catalogue
from xinyi.crypto.envelope import verify
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, licence_of
from xinyi.errors import Kind, Refusal
from xinyi.policy import Action, Authorizer, Resource
from xinyi.relay import require_signer
from xinyi.v1 import directory_pb2, envelope_pb2, scoring_pb2

ComputeAt = Callable[[directory_pb2.NodeEntry, envelope_pb2.SignedEnvelope, str], Awaitable[bytes]]
EvaluateAt = Callable[[directory_pb2.NodeEntry, envelope_pb2.SignedEnvelope, list[bytes]], Awaitable[bytes]]


@dataclass
class ModelDesk:
    identity: Identity
    directory: NetworkDirectory
    store: RegistryStore
    authorizer: Authorizer
    catalogue: Catalogue
    audit_log: AuditLog
    clock: Clock
    compute_at: ComputeAt
    evaluate_at: EvaluateAt

    async def submit(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, onnx: bytes, trace_id: str):
        body = None
        try:
            self._require(caller, Action.SUBMIT_MODEL)
            v = verify(envelope, scoring_pb2.ModelBody, self.directory.trust, roles={Role.BANK}, field="model")
            require_signer(caller, v.signer, "model")
            body = v.message
            if body.sha256 != model_rules.sha256(onnx):
                raise Refusal.invalid("model.sha256", "does not match the ONNX bytes sent; the model was altered", "HASH_MISMATCH")
            await asyncio.to_thread(model_rules.load, onnx, list(body.features), body.output_min, body.output_max,
                                    self.catalogue)
            await asyncio.to_thread(self.store.put_model, body.sha256, body.name, caller.id,
                                    envelope.SerializeToString(deterministic=True), onnx, self.clock())
        except Refusal as r:
            await self._audit(caller, "submit_model", r, body)
            raise
        await self._audit(caller, "submit_model", None, body, "submitted")
        return scoring_pb2.SubmitModelResponse(sha256=body.sha256, status="submitted")

    async def approve(self, caller: Principal, sha256: bytes, trace_id: str) -> tuple[scoring_pb2.ModelApproval, int]:
        row = None
        try:
            self._require(caller, Action.APPROVE_MODEL)
            if caller != self.identity.principal:
                raise Refusal.denied("NOT_THIS_PLATFORMS_OPERATOR", f"{caller} is not this registry's operator")
            row = await asyncio.to_thread(self.store.get_model, sha256)
            if row is None:
                raise Refusal(Kind.NOT_FOUND, "MODEL_NOT_FOUND", f"sha256: no submitted model {sha256.hex()[:16]}…")
            body = scoring_pb2.ModelBody.FromString(envelope_pb2.SignedEnvelope.FromString(row["envelope"]).body)
            # Checked again: the stored bytes must still be the ones the bank signed.
            if model_rules.sha256(row["onnx"]) != sha256:
                raise Refusal.invalid("sha256", "the stored ONNX bytes no longer match; resubmit", "HASH_MISMATCH")
            approval = scoring_pb2.ModelApproval(
                sha256=sha256, name=body.name, features=body.features, output_min=body.output_min,
                output_max=body.output_max, submitted_by=f"bank/{row['submitted_by']}", approved_at_ms=self.clock(),
                categories=self.catalogue.categories_of(body.features),
            )
            await asyncio.to_thread(self.store.approve_model, sha256, approval.SerializeToString(deterministic=True))
            directory = await self.directory.refresh()
        except Refusal as r:
            await self._audit(caller, "approve_model", r, None)
            raise
        await self._audit(caller, "approve_model", None, body, f"approved; directory version {directory.version}")
        return approval, directory.version

    async def list(self) -> list[scoring_pb2.ModelInfo]:
        rows = await asyncio.to_thread(self.store.list_models)
        out = []
        for r in rows:
            body = scoring_pb2.ModelBody.FromString(envelope_pb2.SignedEnvelope.FromString(r["envelope"]).body)
            out.append(scoring_pb2.ModelInfo(sha256=r["sha256"], name=r["name"], submitted_by=r["submitted_by"],
                                             status="approved" if r["approval"] else "submitted", features=body.features))
        return out

    async def onnx(self, caller: Principal, sha256: bytes) -> bytes:
        """Nodes fetch approved models' bytes (and check the hash themselves)."""
        if caller.role is not Role.NODE:
            raise Refusal.denied("POLICY_DENIED", "only nodes fetch model bytes")
        row = await asyncio.to_thread(self.store.get_model, sha256)
        if row is None or not row["approval"]:
            raise Refusal(Kind.NOT_FOUND, "MODEL_NOT_APPROVED", f"sha256: no approved model {sha256.hex()[:16]}…")
        return row["onnx"]

    async def evaluate(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, trace_id: str):
        """Route an evaluation: features from every node holding data, sealed to the first; its result."""
        entry = AuditEntry(at_ms=0, caller_role=str(caller.role), caller_id=caller.id, action="route_evaluation",
                           decision="deny", trace_id=trace_id)
        try:
            request = check_evaluation(envelope, self.directory.trust, self.clock())
            require_signer(caller, request.signer, "evaluation")
            q = request.message
            entry = AuditEntry(at_ms=0, caller_role=str(caller.role), caller_id=caller.id, action="route_evaluation",
                               decision="deny", uscc=q.uscc, purpose=q.purpose, consent_id=q.consent_id,
                               request_hash=request.body_hash.hex(), trace_id=trace_id)
            decision = self.authorizer.decide(caller, Action.ROUTE_QUERY, Resource.enterprise(q.uscc),
                                              {"purpose": q.purpose, "categories": set()},
                                              licence=licence_of(request.signer_cert_der))
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", f"evaluation.purpose: {decision.reason}", policy_ids=decision.policy_ids)
            node_ids = self.directory.route(q.uscc)
            if not node_ids:
                raise Refusal(Kind.PRECONDITION, "NO_NODE_FOR_AREA", f"evaluation.uscc: no node serves {q.uscc[2:8]}")
            nodes = self.directory.current.nodes
            evaluator, others = node_ids[0], node_ids[1:]
            bundles = await asyncio.gather(*(self.compute_at(nodes[n], envelope, evaluator) for n in others),
                                           return_exceptions=True)
            sealed = [b for b in bundles if isinstance(b, bytes)]
            failures = [(n, b) for n, b in zip(others, bundles) if not isinstance(b, bytes)]
            result = await self.evaluate_at(nodes[evaluator], envelope, sealed)
        except Refusal as r:
            await self.audit_log.append(AuditEntry.of(self.clock(), caller, "route_evaluation", r, allowed="",
                                                      uscc=entry.uscc, purpose=entry.purpose, consent_id=entry.consent_id,
                                                      request_hash=entry.request_hash, trace_id=trace_id))
            raise
        detail = f"evaluator {evaluator}; features from {','.join(n for n in others if n not in dict(failures)) or 'none'}"
        await self.audit_log.append(AuditEntry.of(self.clock(), caller, "route_evaluation", None, allowed="routed",
                                                  uscc=entry.uscc, purpose=entry.purpose, consent_id=entry.consent_id,
                                                  request_hash=entry.request_hash, trace_id=trace_id, detail=detail))
        return scoring_pb2.EvaluateResponse(evaluator=evaluator, sealed_result=result, nodes_asked=node_ids,
                                            nodes_failed=[n for n, _ in failures],
                                            failures=[f"{n}: {e}" for n, e in failures])

    def _require(self, caller: Principal, action: Action) -> None:
        decision = self.authorizer.decide(caller, action, Resource.network())
        if not decision.allowed:
            raise Refusal.denied("POLICY_DENIED", decision.reason, policy_ids=decision.policy_ids)

    async def _audit(self, caller, action, refusal, body, allowed: str = "") -> None:
        detail = f"model {body.sha256.hex()[:16]} {body.name}" if body is not None else ""
        await self.audit_log.append(AuditEntry.of(self.clock(), caller, action, refusal, allowed=allowed, detail=detail))
