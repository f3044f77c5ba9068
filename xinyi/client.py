"""Client library for banks, guarantors, enterprises and auditors.

    async with BankClient(Identity.load("certs/bank-914403001922038216"), "registry:7000") as bank:
        result = await bank.query(uscc, ["tax"], "credit_assessment", consent_id)
        for node in result.nodes: ...          # each answer opened and its signature verified

    async with EnterpriseClient(Identity.load("certs/enterprise-9151..."), "registry:7000") as firm:
        mine = await firm.my_records()          # its own records from every node, verified

A bank trusts nothing the registry says about content: each answer is opened with the query's
one-time key and its signature checked against the node key in the signed directory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import grpc

from xinyi.clock import now_ms
from xinyi.compute.evaluation import EvaluationView, build_evaluation, open_result
from xinyi.compute.models import sha256 as model_sha256
from xinyi.crypto.envelope import body_hash, sign
from xinyi.crypto.identity import QUERYING_ROLES, Principal, Role
from xinyi.crypto.pki import Identity
from xinyi.directory import Directory
from xinyi.errors import Reason, Refusal
from xinyi.privacy.access import (
    PAGE_SIZE as ACCESS_PAGE_SIZE,
    Access,
    AccessProofError,
    build_access_request,
    verify_node_accesses,
)
from xinyi.privacy.consent import build_change, build_consent, build_delegation
from xinyi.privacy.disputes import (
    DisputeAnswerError,
    UnlistedDisputeKey,
    answer_hash,
    build_dispute,
    build_my_disputes_request,
    verify_node_disputes,
)
from xinyi.quality import DataQuality
from xinyi.query import AnswerError, UnlistedKey, build_query, build_self_query, open_answer
from xinyi.rpc.channels import MAX_RESPONSE_BYTES, FailoverChannel, FailoverStub, secure_channel
from xinyi.rpc.report import report_from_proto
from xinyi.rpc.status import RpcFailure
from xinyi.v1 import (
    access_pb2,
    access_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    consent_pb2,
    consent_pb2_grpc,
    dispute_pb2,
    dispute_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    query_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)

STATUS_NAMES = {
    query_pb2.NODE_OUTCOME_OK: "ok",
    query_pb2.NODE_OUTCOME_NO_DATA: "no_data",
    query_pb2.NODE_OUTCOME_DENIED: "denied",
    query_pb2.NODE_OUTCOME_UNAVAILABLE: "unavailable",
    query_pb2.NODE_OUTCOME_TIMEOUT: "timeout",
}
log = logging.getLogger("xinyi.client")


class ClientError(Exception):
    """A call the network refused or could not complete; `failure` has code, reason, fields."""

    def __init__(self, failure: RpcFailure) -> None:
        super().__init__(f"{failure.code}: {failure.message}")
        self.failure = failure


async def _call(coro):
    try:
        return await coro
    except grpc.aio.AioRpcError as e:
        raise ClientError(RpcFailure.from_error(e)) from None


class QueryAlreadyReceived(ClientError):
    """The registry already received this very query (same signer, nonce and request): a try
    whose answer was lost with its connection. It is not answered again; `received_at_ms` says
    when it arrived, and the audit log or the access view what became of it."""

    def __init__(self, failure: RpcFailure) -> None:
        super().__init__(failure)
        facts = dict(failure.metadata)
        self.request_hash = facts.get("request_hash", "")
        self.received_at_ms = int(facts.get("received_at_ms", "0") or 0)


class _Client:
    """A client of one service at one or several addresses (`target`: HOST:PORT, or a list of
    the replicas' addresses): calls fail over from an unreachable address to the next
    (xinyi.rpc.channels.FailoverChannel), resending the same request."""

    def __init__(self, identity: Identity, target: str | Sequence[str], expect: Principal | Role,
                 **channel_options) -> None:
        self.identity = identity
        self.failover = FailoverChannel(identity, target, expect, **channel_options)

    @property
    def target(self) -> str:
        """The address in use: the one that answered last."""
        return self.failover.target

    @property
    def channel(self) -> grpc.aio.Channel:
        return self.failover.channel

    def _stub(self, stub_class: type) -> FailoverStub:
        return self.failover.stub(stub_class)

    async def close(self) -> None:
        await self.failover.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


@dataclass
class NodeAnswerView:
    node: str
    status: str  # ok, no_data, denied, unavailable, timeout, invalid
    verified: bool
    records: list[dict] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None
    indicators: list[dict] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {"node": self.node, "status": self.status, "verified": self.verified, "records": self.records,
               "error": self.error}
        if self.indicators:
            out["indicators"] = self.indicators
        return out


@dataclass
class QueryResult:
    uscc: str
    request_hash: str
    nodes: list[NodeAnswerView]

    @property
    def answered(self) -> bool:
        return any(n.verified for n in self.nodes)

    def to_json(self) -> dict[str, Any]:
        return {"uscc": self.uscc, "request_hash": self.request_hash, "nodes": [n.to_json() for n in self.nodes]}


class _RegistryClient(_Client):
    """A client of the registry that keeps the signed directory, verified and cached.

    A bank, guarantor or government department registers itself when it opens (`async with`),
    so that enterprises may name it in consents; that is idempotent and costs one small call.
    When that call does not reach the registry (not up yet, or failing), the client's next call
    to the registry tries it again first: else the client would work while no consent could
    name its institution.
    """

    def __init__(self, identity: Identity, registry: str | Sequence[str]) -> None:
        super().__init__(identity, registry, Role.REGISTRY)
        self.registry = _RegisteringFirst(self, self._stub(registry_pb2_grpc.RegistryServiceStub))
        self._directory: Directory | None = None
        self._registration_pending = False

    async def __aenter__(self):
        if self.identity.principal.role in QUERYING_ROLES:
            await self._register_quietly()
        return self

    async def _register_quietly(self) -> None:
        """Register, keeping a failure for the calls that follow: a refusal (an unlicensed bank's,
        say) they report themselves; any other failure is logged and registering tried again."""
        try:
            await self.register_institution()
        except ClientError as e:
            self._registration_pending = not e.failure.refused
            if self._registration_pending:
                # Unreachable is said by the next call too (a command line shows that one line);
                # anything else is the registry's fault, worth a warning of its own.
                level = logging.DEBUG if e.failure.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else logging.WARNING
                log.log(level, "%s: registering with the registry failed (%s: %s); trying again once it answers",
                        self.identity.principal, e.failure.code, e.failure.message)
        else:
            self._registration_pending = False

    async def register_institution(self) -> registry_pb2.RegisterInstitutionResponse:
        """Make this institution known to the network: the registry publishes its role, USCC and
        licence, as its certificate says, in the signed directory."""
        return await _call(self.registry.RegisterInstitution(registry_pb2.RegisterInstitutionRequest(), timeout=10))

    async def directory(self, refresh: bool = False) -> Directory:
        """The signed directory, verified against the national root and cached (verifying it
        teaches this identity's trust anchor the revocation lists it publishes)."""
        if self._directory is None or refresh:
            known = self._directory.version if self._directory else 0
            response = await _call(self.registry.GetDirectory(registry_pb2.GetDirectoryRequest(known_version=known), timeout=10))
            directory = Directory.verify(response.directory, self.identity.trust())
            if self._directory is not None and directory.version < self._directory.version:
                raise AnswerError(f"registry served directory version {directory.version}, older than {self._directory.version}")
            self._directory = directory
        return self._directory


class _RegisteringFirst:
    """The registry stub of a _RegistryClient: while its institution's registration is pending,
    a call registers first, and again once the call got through (the registry, unreachable for
    the registration, may have come up meanwhile). Each call is a coroutine function, as with
    FailoverStub."""

    def __init__(self, client: _RegistryClient, stub: FailoverStub) -> None:
        self._client, self._stub = client, stub

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)
        if name == "RegisterInstitution":
            return method

        async def call(request, **kwargs):
            if self._client._registration_pending:
                await self._client._register_quietly()
            result = await method(request, **kwargs)
            if self._client._registration_pending:
                await self._client._register_quietly()
            return result

        return call


class DirectoryReader(_RegistryClient):
    """Any identity: the registry-signed directory (nodes, their endpoints and keys), verified."""


class RevocationPublisher(_RegistryClient):
    """A CA operator (with any identity of the network) handing the registry its issuing CAs and
    revocation lists (`xinyi pki publish`)."""

    async def publish(self, authorities: list[bytes], crls: list[bytes]) -> registry_pb2.PublishRevocationsResponse:
        """Issuing CA certificates and revocation lists, DER. The registry publishes them in the
        signed directory when a CA the root certified signed each list, and refuses them all
        (naming the list and why) when one does not verify."""
        request = registry_pb2.PublishRevocationsRequest(authorities=authorities, revocation_lists=crls)
        return await _call(self.registry.PublishRevocations(request, timeout=30))


class _QueryRouter(_RegistryClient):
    """Sends signed queries through the registry and opens the sealed, signed answers: a bank's
    queries and an enterprise's self-access alike."""

    async def route(self, envelope, key, uscc: str, *, per_node_timeout_ms: int = 0) -> QueryResult:
        """Send a signed query through the registry and open the answers. A replica that is
        unreachable is left for the next one with this same envelope (never signed again with a
        new nonce: under a once-consent a second query would be a second use). Raises
        QueryAlreadyReceived when a replica had already received it (its answer was lost)."""
        request_hash = body_hash(envelope.body)
        request = registry_pb2.RouteQueryRequest(query=envelope, per_node_timeout_ms=per_node_timeout_ms)
        try:
            response = await _call(self.registry.RouteQuery(request, timeout=60))
        except ClientError as e:
            if e.failure.error_reason is Reason.QUERY_ALREADY_RECEIVED:
                raise QueryAlreadyReceived(e.failure) from None
            raise
        directory = await self.directory()
        views = []
        for result in response.results:
            if result.node_id not in directory.route(uscc):
                directory = await self.directory(refresh=True)
            if result.node_id not in directory.route(uscc):
                # The signed directory says who routes for whom: an answer from elsewhere is not used.
                views.append(NodeAnswerView(result.node_id, "invalid", False,
                                            error=f"node {result.node_id} is not on this enterprise's route in the "
                                                  "signed directory"))
                continue
            views.append(await self._open_current(result, key, request_hash, uscc, directory))
        return QueryResult(uscc, request_hash.hex(), views)

    async def _open_current(self, result: query_pb2.NodeResult, key, request_hash: bytes, uscc: str,
                            directory: Directory) -> NodeAnswerView:
        """_open, and once more with the directory fetched again when the answer is signed with
        a key this one does not list (the node renewed its key since it was fetched)."""
        try:
            return self._open(result, key, request_hash, uscc, directory, unlisted_raises=True)
        except UnlistedKey:
            return self._open(result, key, request_hash, uscc, await self.directory(refresh=True))

    def _open(self, result: query_pb2.NodeResult, key, request_hash: bytes, uscc: str, directory: Directory, *,
              unlisted_raises: bool = False) -> NodeAnswerView:
        status = STATUS_NAMES.get(result.outcome, "unavailable")
        if not result.sealed_answer:
            return NodeAnswerView(result.node_id, status, False, error=result.error_message or None, reason=result.error_reason or None)
        entry = directory.nodes.get(result.node_id)
        if entry is None:
            return NodeAnswerView(result.node_id, "invalid", False, error=f"node {result.node_id} is not in the signed directory")
        try:
            opened = open_answer(
                result.sealed_answer, key, expected_node=result.node_id, node_signing_cert=entry.signing_cert,
                request_hash=request_hash, uscc=uscc, trust=self.identity.trust(), previous_keys=entry.previous_keys,
            )
        except UnlistedKey as e:
            if unlisted_raises:
                raise
            return NodeAnswerView(result.node_id, "invalid", False, error=str(e))
        except AnswerError as e:
            return NodeAnswerView(result.node_id, "invalid", False, error=str(e))
        # The outcome the relay reported is not trusted: the signed answer decides.
        found = opened.records or opened.indicators
        return NodeAnswerView(result.node_id, "ok" if found else "no_data", True, opened.records,
                              indicators=opened.indicators)


class BankClient(_QueryRouter):
    """For banks and guarantors: query through the registry, or one node directly."""

    def __init__(self, identity: Identity, registry: str | Sequence[str]) -> None:
        if identity.principal.role not in QUERYING_ROLES:
            raise ValueError(f"queries are made with a bank, guarantor or government identity, not {identity.principal}")
        super().__init__(identity, registry)
        self.models = self._stub(scoring_pb2_grpc.ModelServiceStub)
        self._nodes: dict[tuple[str, str], grpc.aio.Channel] = {}

    async def evaluate(self, uscc: str, purpose: str, consent_id: str, *, model_sha256: bytes | None = None,
                       programme: str | None = None) -> EvaluationView:
        """A score with an approved model, or an eligibility check, computed where the data lives.

        The result comes signed by the evaluating node and sealed to this call's one-time key.
        """
        envelope, key = build_evaluation(self.identity, uscc=uscc, purpose=purpose, consent_id=consent_id,
                                         now_ms=now_ms(), model_sha256=model_sha256, programme=programme)
        response = await _call(self.models.Evaluate(scoring_pb2.EvaluateRequest(evaluation=envelope), timeout=60))
        directory = await self.directory()
        if response.evaluator not in directory.nodes:
            directory = await self.directory(refresh=True)
        return open_result(response.sealed_result, key, evaluator=response.evaluator, directory=directory,
                           request_hash=body_hash(envelope.body), trust=self.identity.trust())

    async def submit_model(self, onnx: bytes, *, name: str, features: list[str], output_min: float, output_max: float,
                           description: str = "") -> scoring_pb2.SubmitModelResponse:
        body = scoring_pb2.ModelBody(name=name, sha256=model_sha256(onnx), features=features, output_min=output_min,
                                     output_max=output_max, description=description, submitted_at_ms=now_ms(),
                                     nonce=os.urandom(16))
        return await _call(self.models.SubmitModel(scoring_pb2.SubmitModelRequest(model=sign(self.identity, body),
                                                                                   onnx=onnx), timeout=60))

    async def query(
        self, uscc: str, categories: list[str], purpose: str, consent_id: str, *, per_node_timeout_ms: int = 0
    ) -> QueryResult:
        envelope, key = build_query(
            self.identity, uscc=uscc, categories=categories, purpose=purpose, consent_id=consent_id, now_ms=now_ms()
        )
        return await self.route(envelope, key, uscc, per_node_timeout_ms=per_node_timeout_ms)

    async def query_node(
        self, endpoint: str, node_id: str, uscc: str, categories: list[str], purpose: str, consent_id: str
    ) -> NodeAnswerView:
        """Ask one node directly over mutual TLS (no registry on the path)."""
        envelope, key = build_query(
            self.identity, uscc=uscc, categories=categories, purpose=purpose, consent_id=consent_id, now_ms=now_ms()
        )
        directory = await self.directory()
        stub = node_pb2_grpc.NodeServiceStub(self._node_channel(endpoint, node_id))
        result = await _call(stub.Query(query_pb2.QueryRequest(query=envelope), timeout=30))
        return await self._open_current(result, key, body_hash(envelope.body), uscc, directory)

    def _node_channel(self, endpoint: str, node_id: str) -> grpc.aio.Channel:
        """One kept channel per node: a TLS handshake per query would cost more than the query."""
        key = (endpoint, node_id)
        if key not in self._nodes:
            self._nodes[key] = secure_channel(self.identity, endpoint, Principal(Role.NODE, node_id))
        return self._nodes[key]

    async def close(self) -> None:
        for channel in self._nodes.values():
            await channel.close()
        await super().close()

class OperatorModels(_RegistryClient):
    """The platform operator, with the registry's own identity: approves submitted models."""

    def __init__(self, identity: Identity, registry: str | Sequence[str]) -> None:
        super().__init__(identity, registry)
        self.models = self._stub(scoring_pb2_grpc.ModelServiceStub)

    async def approve(self, sha256: bytes) -> scoring_pb2.ApproveModelResponse:
        return await _call(self.models.ApproveModel(scoring_pb2.ApproveModelRequest(sha256=sha256), timeout=30))

    async def list(self) -> list[scoring_pb2.ModelInfo]:
        return list((await _call(self.models.ListModels(scoring_pb2.ListModelsRequest(), timeout=10))).models)


class OperatorHoldings(_RegistryClient):
    """The platform operator, with the registry's own identity: reviews what nodes claim to hold
    outside their own area. Only approved claims are published in the directory and routed."""

    STATES = {"pending": registry_pb2.HOLDING_CLAIM_STATE_PENDING, "approved": registry_pb2.HOLDING_CLAIM_STATE_APPROVED,
              "rejected": registry_pb2.HOLDING_CLAIM_STATE_REJECTED}

    async def claims(self, node_id: str = "", state: str = "") -> list[registry_pb2.HoldingClaim]:
        request = registry_pb2.ListHoldingClaimsRequest(node_id=node_id, state=self.STATES.get(state, 0))
        return list((await _call(self.registry.ListHoldingClaims(request, timeout=30))).claims)

    async def review(self, node_id: str, uscc: str, *, approve: bool) -> registry_pb2.ReviewHoldingClaimResponse:
        request = registry_pb2.ReviewHoldingClaimRequest(node_id=node_id, uscc=uscc, approve=approve)
        return await _call(self.registry.ReviewHoldingClaim(request, timeout=30))

    async def nodes(self) -> list[registry_pb2.NodeRegistration]:
        """Every registered node: endpoint, last registration, key, last address change, conflict."""
        return list((await _call(self.registry.ListNodes(registry_pb2.ListNodesRequest(), timeout=30))).nodes)


@dataclass
class AccessListing:
    """An enterprise's proven accesses, and what the listing could not show."""

    accesses: list[Access]
    problems: dict[str, str]  # node -> why its list could not be used
    totals: dict[str, int]    # node -> how many entries it holds about the enterprise (as it counts), when asked
    more: bool                # entries were left out (a limit, or `since_ms`)


class EnterpriseClient(_QueryRouter):
    """For enterprises: consents (signed with the enterprise's key), who accessed its data, and
    its own records (`my_records`)."""

    def __init__(self, identity: Identity, registry: str | Sequence[str]) -> None:
        super().__init__(identity, registry)
        self.stub = self._stub(consent_pb2_grpc.ConsentServiceStub)
        self.access = self._stub(access_pb2_grpc.AccessServiceStub)

    async def my_records(self, categories: list[str] | None = None, *, per_node_timeout_ms: int = 0) -> QueryResult:
        """This enterprise's own records from every node that holds them (purpose self_access,
        no consent): each node's answer opened with this call's one-time key and its signature
        checked against the node's key in the signed directory, each record with the
        `record_id` that `dispute` takes. `categories`: all when None. Audited at every node and
        shown in `accesses` as a self-access; a few a day (fair_use.toml [self_access]).

        Signed by the enterprise itself: the USCC asked about is the one its certificate names.
        A representative cannot (ValueError): the nodes cannot check its delegation."""
        if self.identity.principal.role is not Role.ENTERPRISE:
            raise ValueError(f"an enterprise reads its own records with its own identity, not {self.identity.principal}")
        envelope, key = build_self_query(self.identity, categories=categories, now_ms=now_ms())
        return await self.route(envelope, key, self.identity.principal.id, per_node_timeout_ms=per_node_timeout_ms)

    async def accesses(self, *, limit: int = 0, oldest_first: bool = False, page_size: int = 0, since_ms: int = 0,
                       progress: Callable[[int, int], None] | None = None) -> tuple[list[Access], dict[str, str]]:
        """Accesses to this enterprise's data, each proven against its node's checkpoint.

        Returns the proven accesses (newest first unless `oldest_first`) and, per node that
        could not be used, why. See access_listing for the arguments.
        """
        listing = await self.access_listing(limit=limit, oldest_first=oldest_first, page_size=page_size,
                                            since_ms=since_ms, progress=progress)
        return listing.accesses, listing.problems

    async def access_listing(self, *, limit: int = 0, oldest_first: bool = False, page_size: int = 0, since_ms: int = 0,
                             count_total: bool = False,
                             progress: Callable[[int, int], None] | None = None) -> AccessListing:
        """Follow every node's pages: all entries, or the `limit` newest (oldest) across nodes.

        Each page is checked as it arrives (the node's signed checkpoint, each inclusion proof,
        and that the node's pages go on in order without repeating). `since_ms` (newest first
        only) stops at entries older than that. `count_total` has each node count the entries it
        holds (a cost that grows with the history). `progress(fetched, total)` is called after
        every round of pages (total 0 unless counted).
        """
        directory = await self.directory()
        uscc = self.identity.principal.id
        newest_first = not oldest_first
        page_size = page_size or min(limit, ACCESS_PAGE_SIZE)  # no page larger than what is to be shown
        per_node: dict[str, list[Access]] = {}
        cursors: dict[str, str] = {}
        problems: dict[str, str] = {}
        totals: dict[str, int] = {}
        cut: set[str] = set()
        first = True
        while first or cursors:
            pages = [access_pb2.AccessPage(node_id=n, cursor=c) for n, c in cursors.items()]
            request = access_pb2.ListAccessesRequest(request=build_access_request(self.identity, now_ms()),
                                                     page_size=page_size, oldest_first=oldest_first, pages=pages,
                                                     count_total=count_total and first)
            response = await _call(self.access.ListAccesses(request, timeout=30))
            asked, cursors = set(cursors), {}
            for node in response.nodes:
                if not first and node.node_id not in asked:
                    continue
                if node.error:
                    problems[node.node_id] = node.error
                    continue
                if first and count_total:
                    totals[node.node_id] = node.total
                if node.node_id not in directory.nodes:
                    directory = await self.directory(refresh=True)
                got = per_node.setdefault(node.node_id, [])
                try:
                    page = verify_node_accesses(node, directory, uscc, newest_first=newest_first,
                                                after=got[-1].index if got else None)
                except AccessProofError as e:
                    problems[node.node_id] = str(e)
                    continue
                older = since_ms and newest_first and any(a.record.at_ms and a.record.at_ms < since_ms for a in page)
                got.extend(a for a in page if not (since_ms and newest_first and a.record.at_ms and a.record.at_ms < since_ms))
                if node.next_cursor and not older and not (limit and len(got) >= limit):
                    cursors[node.node_id] = node.next_cursor
                elif node.next_cursor or older:
                    cut.add(node.node_id)  # stopped by the limit or since_ms with entries left
            first = False
            if progress is not None:
                progress(sum(map(len, per_node.values())), sum(totals.values()))
        # Merged across nodes by time; a withheld entry (its time unknown) stays beside its neighbours.
        keyed = []
        for accesses in per_node.values():
            at = 0
            for a in accesses:
                at = a.record.at_ms or at
                keyed.append(((at, a.node, a.index), a))
        keyed.sort(key=lambda k: k[0], reverse=newest_first)
        out = [a for _, a in keyed]
        more = bool(limit and len(out) > limit) or bool(cut)
        return AccessListing(out[:limit] if limit else out, problems, totals, more)

    async def grant(self, grantee: str, purpose: str, categories: list[str], days: int, *, uscc: str | None = None,
                    detail_level: str = "detail", history_months: int = 12, fetch_type: str = "once",
                    max_fetches: int = 0, fetch_period: str = "", co_grantee: str = "") -> consent_pb2.ConsentRecord:
        """Sign and grant a consent. A representative passes the `uscc` it signs for."""
        if days < 1:
            raise Refusal.invalid("days", "must be at least 1")
        envelope = build_consent(
            self.identity, uscc=uscc, grantee=grantee, purpose=purpose, categories=categories, days=days, now_ms=now_ms(),
            detail_level=detail_level, history_months=history_months, fetch_type=fetch_type, max_fetches=max_fetches,
            fetch_period=fetch_period, co_grantee=co_grantee,
        )
        response = await _call(self.stub.GrantConsent(consent_pb2.GrantConsentRequest(consent=envelope), timeout=30))
        return response.consent

    async def change(self, consent_id: str, action: str) -> consent_pb2.ConsentRecord:
        """Pause, resume or revoke (signed by the enterprise)."""
        envelope = build_change(self.identity, consent_id, action, now_ms())
        response = await _call(self.stub.ChangeConsent(consent_pb2.ChangeConsentRequest(change=envelope), timeout=30))
        return response.consent

    async def revoke(self, consent_id: str) -> consent_pb2.ConsentRecord:
        return await self.change(consent_id, "revoke")

    async def delegate(self, representative: str, days: int = 365, *, revoke: bool = False) -> consent_pb2.DelegateResponse:
        """Name (or stop) a representative who may sign consents for this enterprise."""
        envelope = build_delegation(self.identity, representative, days=days, now_ms=now_ms(), revoked=revoke)
        return await _call(self.stub.Delegate(consent_pb2.DelegateRequest(delegation=envelope), timeout=30))

    async def dispute(self, node_id: str, record_id: str, reason: str):
        """Object to one of this enterprise's records; the node holding it must reply in 20 days."""
        envelope = build_dispute(self.identity, node_id=node_id, record_id=record_id, reason=reason, now_ms=now_ms())
        stub = self._stub(dispute_pb2_grpc.DisputeServiceStub)
        response = await _call(stub.FileDispute(dispute_pb2.FileDisputeRequest(dispute=envelope), timeout=30))
        return response.dispute

    async def disputes(self) -> tuple[list[dispute_pb2.Dispute], dict[str, str]]:
        """This enterprise's disputes at every node that routes for it, newest filed first, and,
        per node whose list could not be used, why.

        Each node's list is checked as its signed answer to this very request (the node's key
        from the signed directory, the request's hash, this enterprise): the registry can
        neither forge nor alter nor replay one. A node on the route the registry gave no answer
        from is a problem too. `overdue` is as the node saw it when it answered.
        """
        envelope = build_my_disputes_request(self.identity, now_ms())
        stub = self._stub(dispute_pb2_grpc.DisputeServiceStub)
        response = await _call(stub.ListMyDisputes(dispute_pb2.ListMyDisputesRequest(request=envelope), timeout=30))
        directory = await self.directory()
        uscc, request_hash = self.identity.principal.id, answer_hash(envelope)
        out: list[dispute_pb2.Dispute] = []
        problems: dict[str, str] = {}
        seen: set[str] = set()
        for node in response.nodes:
            if node.node_id in seen:
                problems[node.node_id] = f"the registry gave node {node.node_id}'s answer more than once"
                continue
            seen.add(node.node_id)
            if node.error:
                problems[node.node_id] = node.error
                continue
            if node.node_id not in directory.nodes:
                directory = await self.directory(refresh=True)
            check = dict(node_id=node.node_id, uscc=uscc, request_hash=request_hash, trust=self.identity.trust())
            try:
                try:
                    body = verify_node_disputes(node.answer, directory=directory, **check)
                except UnlistedDisputeKey:  # the node renewed its key since this directory
                    directory = await self.directory(refresh=True)
                    body = verify_node_disputes(node.answer, directory=directory, **check)
            except DisputeAnswerError as e:
                problems[node.node_id] = str(e)
                continue
            out.extend(body.disputes)
            if body.omitted:
                problems[node.node_id] = (f"node {node.node_id} left out its {body.omitted} oldest disputes "
                                          "(its answer's size bound)")
        if set(directory.route(uscc)) - seen:  # perhaps the route changed since this directory
            directory = await self.directory(refresh=True)
        for n in directory.route(uscc):
            if n not in seen:
                problems[n] = f"the registry gave no answer from node {n}, which routes for this enterprise"
        out.sort(key=lambda d: (d.filed_at_ms, d.dispute_id), reverse=True)
        return out, problems

    async def status(self, consent_id: str) -> consent_pb2.ConsentRecord:
        response = await _call(self.stub.GetConsentStatus(consent_pb2.GetConsentStatusRequest(consent_id=consent_id), timeout=10))
        return response.consent

    async def list(self) -> list[consent_pb2.ConsentRecord]:
        response = await _call(self.stub.ListConsents(consent_pb2.ListConsentsRequest(), timeout=10))
        return list(response.consents)


class AuditClient(_Client):
    """For auditors: read a node's or the registry's audit log."""

    def __init__(self, identity: Identity, target: str, expect: Principal | Role) -> None:
        # A page holds at least one entry, and an entry written before entries were bounded
        # may be larger than an ordinary message: the log stays readable and verifiable.
        super().__init__(identity, target, expect, max_receive_bytes=MAX_RESPONSE_BYTES)
        self.stub = self._stub(audit_pb2_grpc.AuditServiceStub)

    async def records(self, start: int = 0, limit: int = 0, uscc: str = "") -> list[audit_pb2.AuditRecord]:
        """Every record from index `start` on (all pages), or at most `limit` when given."""
        out: list[audit_pb2.AuditRecord] = []
        while True:
            page = min(limit - len(out), 1000) if limit else 1000
            response = await _call(
                self.stub.ListAuditRecords(audit_pb2.ListAuditRecordsRequest(start=start, limit=page, uscc=uscc), timeout=30)
            )
            out.extend(response.records)
            if response.next < 0 or (limit and len(out) >= limit):
                return out
            start = response.next

    async def checkpoint(self) -> audit_pb2.GetCheckpointResponse:
        return await _call(self.stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=10))

    async def entries(self, start: int, end: int, *,
                      progress: Callable[[int, int], None] | None = None) -> list[audit_pb2.LogEntry]:
        """Entries start..end inclusive, fetched page by page; `progress(fetched, wanted)` after each."""
        out: list[audit_pb2.LogEntry] = []
        wanted = end - start + 1
        while start <= end:
            response = await _call(self.stub.GetEntries(audit_pb2.GetEntriesRequest(start=start, end=end), timeout=60))
            if not response.entries:
                break
            out.extend(response.entries)
            start = response.entries[-1].index + 1
            if progress is not None:
                progress(len(out), wanted)
        return out

    async def inclusion_proof(self, tree_size: int, *, index: int | None = None, leaf_hash: bytes | None = None):
        request = audit_pb2.GetInclusionProofRequest(tree_size=tree_size)
        if leaf_hash is not None:
            request.leaf_hash = leaf_hash
        else:
            request.index = index or 0
        return await _call(self.stub.GetInclusionProof(request, timeout=10))

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        response = await _call(self.stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(first=first, second=second), timeout=10))
        return list(response.consistency)


class OperatorClient(_Client):
    """For a node's operator, who holds the node's own identity: the node's disputes and its
    data-quality report."""

    def __init__(self, identity: Identity, node: str) -> None:
        if identity.principal.role is not Role.NODE:
            raise ValueError(f"a node's operator acts with the node's identity, not {identity.principal}")
        super().__init__(identity, node, identity.principal)
        self.stub = self._stub(node_pb2_grpc.NodeServiceStub)

    async def disputes(self, *, open_only: bool = False, overdue_only: bool = False) -> list:
        response = await _call(self.stub.ListDisputes(
            dispute_pb2.ListDisputesRequest(open_only=open_only, overdue_only=overdue_only), timeout=10))
        return list(response.disputes)

    async def resolve(self, dispute_id: str, outcome: str, resolution: str, corrected_fields: dict | None = None):
        outcomes = {"corrected": dispute_pb2.DISPUTE_STATUS_CORRECTED, "confirmed": dispute_pb2.DISPUTE_STATUS_CONFIRMED}
        if outcome not in outcomes:
            raise Refusal.invalid("outcome", "must be corrected or confirmed")
        import json

        request = dispute_pb2.ResolveDisputeRequest(
            dispute_id=dispute_id, outcome=outcomes[outcome], resolution=resolution,
            # default=str: exact amounts parsed as Decimal (xinyi.records.categories.parse_record_json) go as text
            corrected_fields_json=json.dumps(corrected_fields, ensure_ascii=False, default=str) if corrected_fields else "",
        )
        response = await _call(self.stub.ResolveDispute(request, timeout=10))
        return response.dispute

    async def report(self, *, days: int = 0, loads: int = 0, rejects_per_load: int = 0) -> DataQuality:
        """The node's data quality (xinyi.quality.DataQuality): 0 means the node's default for
        each bound (30 days of queries, the 10 newest loads, 100 rejected lines per load)."""
        response = await _call(self.stub.GetNodeReport(node_pb2.GetNodeReportRequest(
            days=days, loads=loads, rejects_per_load=rejects_per_load), timeout=30))
        return report_from_proto(response.report)
