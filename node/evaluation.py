"""How a node takes part in evaluating an enterprise where its data lives: named steps again.

    authenticate -> check replay -> authorize -> choose target -> check consent -> compute features
    -> (for another node) sign and seal the features to it
    -> (as the evaluator) open the other nodes' bundles, evaluate, sign and seal the result
    -> audit

Feature values leave this node only sealed to the evaluating node. This module imports no gRPC.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, replace
from typing import Awaitable, Callable

from node.store import NodeStore
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import Clock
from xinyi.compute.evaluation import check_evaluation, open_bundles, seal_bundle, seal_result
from xinyi.compute.features import Catalogue
from xinyi.compute.models import LoadedModel, reason_codes
from xinyi.crypto.envelope import Verified
from xinyi.crypto.identity import Principal
from xinyi.crypto.pki import Identity, licence_of
from xinyi.directory import Directory
from xinyi.errors import Kind, Refusal, quoted
from xinyi.policy import Action, Authorizer, Resource
from xinyi.privacy.consent import CHINA, ConsentAsk, check_covers, use_refusal
from xinyi.privacy.minimize import MinimizationRules
from xinyi.query import UseLedger, refuse_replay
from xinyi.relay import relayed_by
from xinyi.v1 import envelope_pb2, scoring_pb2


@dataclass
class Target:
    """What is evaluated: an approved model, or a programme's criteria."""

    features: tuple[str, ...]
    model: LoadedModel | None = None
    approval: scoring_pb2.ModelApproval | None = None
    programme: object | None = None  # xinyi.compute.features.Programme

    @property
    def label(self) -> str:
        return f"model {self.approval.sha256.hex()[:16]} ({self.approval.name})" if self.model else f"programme {self.programme.name}"


@dataclass
class EvaluationDesk:
    identity: Identity
    store: NodeStore
    authorizer: Authorizer
    audit_log: AuditLog
    catalogue: Catalogue
    rules: MinimizationRules
    clock: Clock
    directory: Callable[[bool], Awaitable[Directory]]  # (refresh) -> the signed directory
    load_model: Callable[[scoring_pb2.ModelApproval], Awaitable[LoadedModel]]
    held_categories: Callable[[], Awaitable[frozenset[str]]]
    uses: UseLedger  # the node's, shared with queries: one count per consent

    async def compute_features(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, evaluator: str,
                               trace_id: str) -> bytes:
        """This node's features for another node's evaluation, sealed to that node."""
        request, target, entry, uses = await self._prepare(caller, envelope, trace_id, action="compute_features")
        try:
            features = await self._features(request, target)
            sealed = seal_bundle(self.identity, await self.directory(False), evaluator, request.body_hash, features)
        except BaseException as e:
            await self._failed(entry, uses, e)
            raise
        await self._audit(entry, None, f"{len(features)} features of {target.label}, sealed to node {evaluator}", uses)
        return sealed

    async def evaluate(self, caller: Principal, envelope: envelope_pb2.SignedEnvelope, sealed_bundles: list[bytes],
                       trace_id: str) -> bytes:
        """As the evaluating node: merge the features, evaluate, sign and seal the result."""
        request, target, entry, uses = await self._prepare(caller, envelope, trace_id, action="evaluate")
        try:
            own = await self._features(request, target)
            try:
                others, nodes = open_bundles(self.identity, await self.directory(False), sealed_bundles, request.body_hash)
            except Refusal as r:
                if r.reason != "UNKNOWN_BUNDLE_NODE":
                    raise
                # A node that registered after our last look: fetch the signed directory again.
                others, nodes = open_bundles(self.identity, await self.directory(True), sealed_bundles, request.body_hash)
            features = {**others, **own}
            result = self._evaluate(request, target, features, [self.identity.principal.id, *nodes])
            sealed = seal_result(self.identity, result, request.message.answer_key)
        except BaseException as e:
            await self._failed(entry, uses, e)
            raise
        outcome = f"score {result.score}" if target.model else f"qualifies={result.qualifies}"
        await self._audit(entry, None, f"{target.label}: {outcome} from nodes {','.join(result.contributing_nodes)}", uses)
        return sealed

    # -- the steps ---------------------------------------------------------------------------
    async def _prepare(self, caller: Principal, envelope, trace_id: str, action: str):
        entry = AuditEntry(at_ms=0, caller_role=str(caller.role), caller_id=caller.id, action=action, decision="deny",
                           trace_id=trace_id)
        try:
            request = check_evaluation(envelope, self.identity.trust(), self.clock())  # authenticate
            q = request.message
            relay = relayed_by(self.authorizer, caller, request.signer, "evaluation")
            entry = AuditEntry(at_ms=0, caller_role=str(request.signer.role), caller_id=request.signer.id, action=action,
                               decision="deny", relayed_by=relay, uscc=q.uscc, purpose=q.purpose,
                               consent_id=q.consent_id, request_hash=request.body_hash.hex(), trace_id=trace_id)
            if action == "evaluate":  # the same signed request reaches each node once; the evaluator keeps the nonce
                await refuse_replay(self.store, request, self.clock())
            target = await self._target(q)
            categories = self.catalogue.categories_of(target.features)
            entry = _with(entry, categories=categories, detail=target.label)
            decision = self.authorizer.decide(request.signer, Action.QUERY, Resource.enterprise(q.uscc),
                                              {"purpose": q.purpose, "categories": set(categories)},
                                              licence=licence_of(request.signer_cert_der))
            if not decision.allowed:
                raise Refusal.denied("POLICY_DENIED", f"evaluation.purpose: {decision.reason}", policy_ids=decision.policy_ids)
            entry = _with(entry, policy_ids=decision.policy_ids)
            use = await self._check_consent(request, categories)
        except Refusal as r:
            await self._audit(entry, r)
            raise
        return request, target, entry, [use] if use else []

    async def _target(self, q: scoring_pb2.EvaluationBody) -> Target:
        if q.WhichOneof("target") == "programme":
            programme = self.catalogue.programmes.get(q.programme)
            if programme is None:
                raise Refusal(Kind.NOT_FOUND, "UNKNOWN_PROGRAMME",
                              f"evaluation.programme: no programme {quoted(q.programme)}; known: {', '.join(self.catalogue.programmes)}")
            if programme.areas and not any(q.uscc[2:8].startswith(a) for a in programme.areas):
                raise Refusal.invalid("evaluation.programme", f"{programme.name} is open to areas {', '.join(programme.areas)} only")
            return Target(tuple(dict.fromkeys(c.feature for c in programme.criteria)), programme=programme)
        approval = await self._approval(q.model_sha256)
        return Target(tuple(approval.features), model=await self.load_model(approval), approval=approval)

    async def _approval(self, sha: bytes) -> scoring_pb2.ModelApproval:
        for refresh in (False, True):  # a model approved since the last refresh: look again once
            directory = await self.directory(refresh)
            for m in directory.models:
                if m.sha256 == sha:
                    return m
        raise Refusal.denied("MODEL_NOT_APPROVED", f"evaluation.model_sha256: model {sha.hex()[:16]}… is not approved "
                             "in the signed directory; nodes run approved models only", field_name="evaluation.model_sha256")

    async def _check_consent(self, request: Verified, categories: tuple[str, ...]):
        """The consent covers what the features read and has a fetch left; returns the use reserved."""
        q = request.message
        now = self.clock()
        consent = await asyncio.to_thread(self.store.get_consent, q.consent_id)
        consent = check_covers(consent, ConsentAsk(q.consent_id, request.signer, q.uscc, q.purpose, categories), now)
        allowed, used, use = await self.uses.reserve(consent.consent_id, request.body_hash.hex(), str(request.signer), now,
                                                     window_start_ms=consent.fetch_window_start(now),
                                                     limit=consent.fetch_limit)
        if not allowed:
            raise use_refusal(consent, used)
        return use

    async def _features(self, request: Verified, target: Target) -> dict[str, float]:
        q = request.message
        categories = self.catalogue.categories_of(target.features)
        records = await asyncio.to_thread(self.store.fetch_records, q.uscc, list(categories))
        today = _today(self.clock())
        records = self.rules.age_out(records, today)  # negative records past retention never count
        return self.catalogue.compute(target.features, records, await self.held_categories(), today)

    def _evaluate(self, request: Verified, target: Target, features: dict[str, float], nodes: list[str]):
        q = request.message
        result = scoring_pb2.EvaluationResultBody(request_hash=request.body_hash, node_id=self.identity.principal.id,
                                                  uscc=q.uscc, contributing_nodes=nodes, evaluated_at_ms=self.clock())
        if target.model is not None:
            vector = [features.get(n, self.catalogue.features[n].baseline) for n in target.model.features]
            result.model_sha256 = target.approval.sha256
            result.score = target.model.score(vector)
            result.reasons.extend(scoring_pb2.ReasonCode(feature=f, direction=d)
                                  for f, d in reason_codes(target.model, features, self.catalogue))
        else:
            met = [(c, c.met(features)) for c in target.programme.criteria]
            result.programme = target.programme.name
            result.qualifies = all(m for _, m in met)
            result.criteria.extend(scoring_pb2.Criterion(name=c.feature, description=c.description, met=m) for c, m in met)
        return result

    async def _failed(self, entry: AuditEntry, uses: list, error: BaseException) -> None:
        """Nothing was answered: the consent use is given back; a refusal is audited."""
        for use in uses:
            await self.uses.release(use)
        if isinstance(error, Refusal):
            await self._audit(entry, error)

    async def _audit(self, entry: AuditEntry, refusal: Refusal | None, allowed: str = "", uses=()) -> None:
        """An answer's entry carries its consent use: the use counts only if the entry commits."""
        if refusal is not None:
            entry = _with(entry, decision="deny", reason=refusal.logged,
                          policy_ids=refusal.policy_ids or entry.policy_ids)
        else:
            entry = _with(entry, decision="allow", reason=allowed)
        uses = list(uses)
        await self.uses.audited(uses, self.audit_log.append(_with(entry, at_ms=self.clock()), extras=uses))


def _with(entry: AuditEntry, **changes) -> AuditEntry:
    return replace(entry, **changes)


def _today(now_ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(now_ms / 1000, CHINA).date()
