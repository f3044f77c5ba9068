"""Usable but not visible: a bank's model trained with scikit-learn, exported to ONNX, approved
by the platform operator, run by the nodes on features that never leave them; eligibility
checks over the same features. Through the real servers, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest
from harness import BANK, CHENGDU_FIRM, Network
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from xinyi.client import ClientError, OperatorModels
from xinyi.compute.models import sha256
from xinyi.crypto.identity import Role

FEATURES = ["tax_credit_rating", "open_cases_as_defendant", "years_established"]


def trained_model() -> bytes:
    """Good tax rating and no open cases: low risk. A logistic regression, as banks use."""
    rng = np.random.RandomState(7)
    x = np.column_stack([rng.randint(0, 5, 400), rng.randint(0, 4, 400), rng.uniform(0, 30, 400)]).astype(np.float32)
    risk = (x[:, 0] < 2.5) | (x[:, 1] >= 2)
    model = LogisticRegression().fit(x, risk.astype(int))
    return to_onnx(model, x[:1], options={id(model): {"zipmap": False}}).SerializeToString()


async def approved(net: Network, onnx: bytes, features=FEATURES) -> bytes:
    submitted = await net.bank().submit_model(onnx, name="sme-risk-v1", features=features, output_min=0.0, output_max=1.0)
    assert submitted.sha256 == sha256(onnx) and submitted.status == "submitted"
    operator = OperatorModels(net.identity(Role.REGISTRY, "national"), net.registry_addr)
    try:
        response = await operator.approve(submitted.sha256)
    finally:
        await operator.close()
    assert response.approval.categories == ["judicial", "registration", "tax"]
    return submitted.sha256


async def test_a_model_scores_an_enterprise_whose_data_sits_on_two_nodes(network: Network):
    onnx = trained_model()
    model = await approved(network, onnx)
    directory = await network.bank().directory(refresh=True)
    assert [m.name for m in directory.models] == ["sme-risk-v1"]  # the approval is published, signed
    consent = await network.grant(categories=("registration", "tax", "judicial"))
    view = await network.bank().evaluate(CHENGDU_FIRM, "credit_assessment", consent, model_sha256=model)
    # The Chengdu node evaluated with its own registration and court data and the Sichuan node's
    # tax rating, which reached it sealed: both contributed.
    assert view.evaluator == "510100" and sorted(view.nodes) == ["510000", "510100"]
    assert 0.0 <= view.score <= 1.0 and view.score == round(view.score, 3)
    assert {f for f, _ in view.reasons} <= set(FEATURES) and view.reasons
    # The same score computed from the known features (rating A = 4, one open case, established 2015).
    import onnxruntime as ort

    session = ort.InferenceSession(onnx)
    expected = session.run(["probabilities"], {session.get_inputs()[0].name: np.array([[4, 1, view_years(view)]], np.float32)})
    assert abs(expected[0][0][1] - view.score) < 0.02
    # Feature values appear nowhere the bank or the registry could see: the bank's view holds the
    # score, the nodes and, per reason, a feature's name and which way it moved the score, nothing else.
    shown = view.to_json()
    assert shown == {"evaluator": "510100", "verified": True, "nodes": view.nodes, "score": view.score,
                     "reasons": [{"feature": f, "direction": d} for f, d in view.reasons]}
    assert all(d in ("raises", "lowers") for _, d in view.reasons), view.reasons
    node_log = await network.auditor(network.node_addr("510000"), Role.NODE).records()
    assert any(r.action == "compute_features" and "sealed to node 510100" in r.reason for r in node_log)
    evaluator_log = await network.auditor(network.node_addr("510100"), Role.NODE).records()
    assert any(r.action == "evaluate" and model.hex()[:16] in r.detail for r in evaluator_log)
    # Nor in any audit record of the evaluation, the registry's or a node's: no feature named, no value given.
    registry_log = await network.auditor(network.registry_addr, Role.REGISTRY).records()
    evaluation_records = [r for r in (*registry_log, *node_log, *evaluator_log) if r.action in ("evaluate", "compute_features")]
    assert {r.action for r in evaluation_records} == {"evaluate", "compute_features"}
    values = ((4.0, 0.01), (1.0, 0.01), (view_years(view), 0.5))  # the node counts years in its own steps
    for r in evaluation_records:
        text = f"{r.reason} {r.detail}"
        assert not any(f in text for f in FEATURES), text
        decimals = [float(n) for n in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", text)]
        assert not any(abs(n - v) < within for n in decimals for v, within in values), text


async def test_an_evaluation_that_cannot_be_sealed_leaves_a_once_consent_usable_at_the_evaluator(network: Network):
    import os

    import grpc

    from xinyi.clock import now_ms
    from xinyi.crypto.envelope import sign
    from xinyi.rpc.status import RpcFailure
    from xinyi.v1 import scoring_pb2

    model = await approved(network, trained_model())
    consent = await network.grant(categories=("registration", "tax", "judicial"))
    # Signed, valid, but its one-time key is the X25519 point of order 1: no result can be sealed to it.
    body = scoring_pb2.EvaluationBody(uscc=CHENGDU_FIRM, purpose="credit_assessment", consent_id=consent,
                                      nonce=os.urandom(16), issued_at_ms=now_ms(), answer_key=bytes(32),
                                      model_sha256=model)
    bank = network.bank()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await bank.models.Evaluate(scoring_pb2.EvaluateRequest(evaluation=sign(network.identity(Role.BANK, BANK), body)),
                                   timeout=60)
    failure = RpcFailure.from_error(e.value)
    assert failure.code == "INVALID_ARGUMENT" and "evaluation.answer_key" in failure.message, failure
    # The evaluator answered nothing, so its once consent is still there. (Sichuan sealed its
    # features to the evaluator and audited that: its use is spent, and it contributes no more.)
    view = await bank.evaluate(CHENGDU_FIRM, "credit_assessment", consent, model_sha256=model)
    assert view.evaluator == "510100" and view.nodes == ["510100"] and 0.0 <= view.score <= 1.0
    with pytest.raises(ClientError) as e:
        await bank.evaluate(CHENGDU_FIRM, "credit_assessment", consent, model_sha256=model)
    assert e.value.failure.reason == "CONSENT_SPENT"


def view_years(view) -> float:
    import datetime as dt

    return (dt.date.today() - dt.date(2015, 3, 2)).days / 365.25


async def test_eligibility_says_yes_or_no_with_the_criteria_and_no_values(network: Network):
    consent = (await network.enterprise().grant(BANK, "policy_matching", ["tax", "social_security", "dishonesty_list"], 30,
                                                detail_level="summary")).consent_id
    view = await network.bank().evaluate(CHENGDU_FIRM, "policy_matching", consent, programme="chengdu_sme_interest_subsidy")
    criteria = dict(view.criteria)
    assert criteria["tax credit rating A or B"] is True  # from the Sichuan node's tax records
    # No node holds social security or dishonesty-list data for this firm: what cannot be shown
    # is not met (a programme never qualifies a firm on data nobody has).
    assert criteria["fewer than 300 insured staff"] is False
    assert criteria["not on a dishonesty list"] is False
    assert view.qualifies is False
    assert set(view.to_json()) == {"evaluator", "verified", "nodes", "programme", "qualifies", "criteria"}


async def test_only_approved_unaltered_models_run(network: Network):
    onnx = trained_model()
    consent = await network.grant(categories=("registration", "tax", "judicial"))
    submitted = await network.bank().submit_model(onnx, name="pending", features=FEATURES, output_min=0, output_max=1)
    with pytest.raises(ClientError) as e:  # submitted, not approved
        await network.bank().evaluate(CHENGDU_FIRM, "credit_assessment", consent, model_sha256=submitted.sha256)
    assert e.value.failure.code == "PERMISSION_DENIED" and e.value.failure.reason == "MODEL_NOT_APPROVED"


@pytest.mark.parametrize("case", ["altered", "non-catalogue", "not-scalar", "malformed", "wrong-width"])
async def test_bad_models_are_refused_at_submission(network: Network, case: str):
    import grpc
    from sklearn.linear_model import LogisticRegression

    from xinyi.crypto.envelope import sign
    from xinyi.rpc.status import RpcFailure
    from xinyi.v1 import scoring_pb2, scoring_pb2_grpc

    onnx, features = trained_model(), list(FEATURES)
    claimed = sha256(onnx)
    if case == "altered":
        onnx = onnx[:-1] + bytes([onnx[-1] ^ 1])
    elif case == "non-catalogue":
        features = ["tax_credit_rating", "legal_representative_id", "years_established"]
    elif case == "not-scalar":
        x = np.random.RandomState(1).rand(90, 3).astype(np.float32)
        three = LogisticRegression().fit(x, np.arange(90) % 3)
        onnx = to_onnx(three, x[:1], options={id(three): {"zipmap": False}}).SerializeToString()
        claimed = sha256(onnx)
    elif case == "malformed":
        onnx, claimed = b"\x08\x07 not onnx at all", sha256(b"\x08\x07 not onnx at all")
    elif case == "wrong-width":
        features = FEATURES[:2]
    body = scoring_pb2.ModelBody(name=case, sha256=claimed, features=features, output_min=0, output_max=1)
    stub = scoring_pb2_grpc.ModelServiceStub(network.bank().channel)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.SubmitModel(scoring_pb2.SubmitModelRequest(model=sign(network.identity(Role.BANK, BANK), body), onnx=onnx))
    f = RpcFailure.from_error(e.value)
    expected = {"altered": "HASH_MISMATCH", "non-catalogue": "NOT_IN_CATALOGUE", "not-scalar": "BAD_MODEL_OUTPUT",
                "malformed": "MALFORMED_MODEL", "wrong-width": "BAD_MODEL_INPUT"}[case]
    assert f.code == "INVALID_ARGUMENT" and f.reason == expected
    assert await asyncio.to_thread(network.registry.store.list_models) == []


async def test_scoring_without_consent_for_the_features_categories_is_refused(network: Network):
    model = await approved(network, trained_model())
    consent = await network.grant(categories=("registration", "tax"))  # not judicial
    with pytest.raises(ClientError) as e:
        await network.bank().evaluate(CHENGDU_FIRM, "credit_assessment", consent, model_sha256=model)
    assert e.value.failure.code == "PERMISSION_DENIED" and e.value.failure.reason == "CONSENT_SCOPE"
    assert "judicial" in e.value.failure.message


async def test_only_the_platform_operator_approves(network: Network):
    submitted = await network.bank().submit_model(trained_model(), name="m", features=FEATURES, output_min=0, output_max=1)
    impostor = OperatorModels(network.identity(Role.BANK, BANK), network.registry_addr)
    try:
        with pytest.raises(ClientError) as e:
            await impostor.approve(submitted.sha256)
        assert e.value.failure.code == "PERMISSION_DENIED"
    finally:
        await impostor.close()
    assert (await network.bank().directory(refresh=True)).models == ()


async def test_a_firm_meeting_every_criterion_qualifies(network: Network):
    from harness import MIANYANG_FIRM

    from node.store import Record
    from xinyi.clock import now_ms

    # Chengdu holds the firm's social security; Sichuan holds the dishonesty lists (another firm listed).
    await asyncio.to_thread(network.nodes["510100"].store.add_records, [Record(
        CHENGDU_FIRM, "social_security", "2026-06-15", "成都市社会保险事业管理局",
        {"period": "2026-05", "insured_headcount": 45, "contributions_paid": "52000.00"})], now_ms())
    await asyncio.to_thread(network.nodes["510000"].store.add_records, [Record(
        MIANYANG_FIRM, "dishonesty_list", "2026-03-01", "四川省发展和改革委员会",
        {"list_name": "严重失信主体名单", "authority": "四川省发展和改革委员会", "listed": "2026-02-20",
         "reason": "拒不履行法院生效判决"})], now_ms())
    consent = (await network.enterprise().grant(BANK, "policy_matching", ["tax", "social_security", "dishonesty_list"], 30,
                                                detail_level="summary")).consent_id
    view = await network.bank().evaluate(CHENGDU_FIRM, "policy_matching", consent, programme="chengdu_sme_interest_subsidy")
    assert view.qualifies is True and all(met for _, met in view.criteria)
    assert "45" not in json.dumps(view.to_json())  # the headcount itself never leaves
