"""Property-based fuzzing (hypothesis) of the query and consent RPCs against a real network.

Statements are signed for real by the bank and the enterprise, so fuzzed values reach the checks
behind the signature; envelopes are also broken on the way (wrong type, altered bytes, another
signer). The property: whatever arrives, the answer is a result or a refusal with the fitting
status - never UNKNOWN or INTERNAL - whose text shows no stack trace, class name, source path or
host:port, on SQLite and on PostgreSQL (NUL bytes and unpaired code points included). After the
fuzz every audit log still verifies.

Bounded: a fixed number of examples per RPC, derandomized (the same examples each run), no
shrinking (a failure is reported as found), no example database written.
"""

from __future__ import annotations

import os

import pytest
from harness import BANK, CHENGDU_FIRM, MIANYANG_FIRM, OTHER_BANK, SHANGHAI_FIRM
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from invariants import assert_clean, leaks, verify_logs
from procnet import CATEGORIES, PURPOSE
from rpcs import Caller

from xinyi.clock import DAY_MS, now_ms
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Role
from xinyi.records.categories import CATEGORIES as ALL_CATEGORIES
from xinyi.v1 import consent_pb2, envelope_pb2, query_pb2, registry_pb2

pytestmark = [pytest.mark.adversarial, pytest.mark.timeout(300)]

NODE = "510100"
EXAMPLES = 80
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False,
                suppress_health_check=list(HealthCheck))

USCCS = [CHENGDU_FIRM, SHANGHAI_FIRM, MIANYANG_FIRM, BANK, OTHER_BANK]
text = st.text(max_size=40) | st.sampled_from(["", "\x00", "a\x00b", "\ud7ff\ue000", "🀄" * 5, "' OR 1=1 --", "%s%n"])
usccs = st.sampled_from(USCCS) | text | st.text(alphabet="0123456789ABCDEFGHJKLMNPQRTUWXY", min_size=18, max_size=18)
categories = st.lists(st.sampled_from(sorted(ALL_CATEGORIES)) | text, max_size=20)
purposes = st.sampled_from(["credit_assessment", "loan_monitoring", "guarantee", "policy_matching"]) | text
int64 = st.integers(-(2 ** 63), 2 ** 63 - 1)
int32 = st.integers(-(2 ** 31), 2 ** 31 - 1)
near_now = st.integers(-10 * DAY_MS, 400 * DAY_MS)  # offsets from now
blobs = st.binary(max_size=48) | st.sampled_from([b"", os.urandom(16), os.urandom(32)])
# What happens to the envelope on the way.
tampering = st.sampled_from(["none", "none", "none", "body_type", "flip_body", "truncate_signature", "other_signer",
                             "garbage_body"])


# What happens to the serialized request on the wire: nothing mostly; else bytes flipped, cut or added.
wire = st.just(None) | st.just(None) | st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.integers(0, 10 ** 6),
                                                st.binary(min_size=1, max_size=8))


def mangle(payload: bytes, how) -> bytes:
    if how is None or not payload:
        return payload
    what, at, junk = how
    at %= len(payload)
    if what == "flip":
        return payload[:at] + bytes([payload[at] ^ junk[0]]) + payload[at + 1:]
    if what == "cut":
        return payload[:at]
    return payload[:at] + junk + payload[at:]


def tamper(envelope: envelope_pb2.SignedEnvelope, how: str, other) -> envelope_pb2.SignedEnvelope:
    env = envelope_pb2.SignedEnvelope()
    env.CopyFrom(envelope)
    if how == "body_type":
        env.body_type = "xinyi.v1.AnswerBody"
    elif how == "flip_body" and env.body:
        env.body = bytes([env.body[0] ^ 0x01]) + env.body[1:]
    elif how == "truncate_signature":
        env.signature = env.signature[:40]
    elif how == "other_signer":
        env.signer_cert = other.signing_cert_der
    elif how == "garbage_body":
        env.body = b"\xff\xfe" + env.body
        env.signature = b""
    return env


@pytest.fixture(scope="module")
async def fuzz_net(network_of_processes):
    net = network_of_processes
    caller = Caller(net)
    consent = await net.grant(deliver_to=[NODE])
    yield net, caller, consent
    await caller.close()


def check(response, failure, where: str, response_cls=None) -> None:
    if failure is not None:
        assert_clean(failure, where)
        return
    if response_cls is query_pb2.QueryResponse:
        for result in response_cls.FromString(response).results:
            text_ = f"{result.error_message}\n{result.error_reason}"
            assert not leaks(text_) and result.error_code not in ("UNKNOWN", "INTERNAL"), (where, result)


@FUZZ
@given(uscc=usccs, cats=categories, purpose=purposes, consent_pick=st.sampled_from(["real", "random", "fuzz"]),
       consent_text=text, nonce=blobs, issued=near_now | int64, answer_key=blobs, how=tampering,
       timeout_ms=st.sampled_from([0, 1, 3000]) | int32, where=st.sampled_from(["registry", NODE]), on_wire=wire)
async def test_fuzz_query(fuzz_net, uscc, cats, purpose, consent_pick, consent_text, nonce, issued, answer_key, how,
                          timeout_ms, where, on_wire) -> None:
    net, caller, consent = fuzz_net
    consent_id = {"real": consent, "random": os.urandom(16).hex(), "fuzz": consent_text}[consent_pick]
    issued_at = now_ms() + issued if abs(issued) < 400 * DAY_MS else issued
    body = query_pb2.QueryBody(uscc=uscc, categories=cats, purpose=purpose, consent_id=consent_id, nonce=nonce,
                               issued_at_ms=issued_at, answer_key=answer_key)
    envelope = tamper(sign(net.bank_identity, body), how, net.identity(Role.ENTERPRISE, CHENGDU_FIRM))
    if where == "registry":
        request = registry_pb2.RouteQueryRequest(query=envelope, per_node_timeout_ms=timeout_ms)
        response, failure = await caller.call((Role.BANK, BANK), "registry", "/xinyi.v1.RegistryService/RouteQuery",
                                              mangle(request.SerializeToString(), on_wire))
    else:
        request = query_pb2.QueryRequest(query=envelope)
        response, failure = await caller.call((Role.BANK, BANK), NODE, "/xinyi.v1.NodeService/Query",
                                              mangle(request.SerializeToString(), on_wire))
    check(response, failure, f"{where} query {body!r} tampered {how}, on the wire {on_wire}",
          query_pb2.QueryResponse if where == "registry" else None)


@FUZZ
@given(uscc=st.sampled_from([CHENGDU_FIRM]) | usccs, grantee=usccs, co_grantee=st.just("") | usccs, purpose=purposes,
       cats=categories, valid_from=near_now | int64, valid_until=near_now | int64, nonce=blobs, issued=near_now | int64,
       detail=st.integers(-1, 3) | int32, history=int32, fetch_type=st.integers(-1, 3) | int32, max_fetches=int32,
       fetch_period=st.integers(-1, 3) | int32, how=tampering, on_wire=wire)
async def test_fuzz_grant_consent(fuzz_net, uscc, grantee, co_grantee, purpose, cats, valid_from, valid_until, nonce,
                                  issued, detail, history, fetch_type, max_fetches, fetch_period, how, on_wire) -> None:
    net, caller, _ = fuzz_net
    now = now_ms()
    at = lambda v: now + v if abs(v) < 400 * DAY_MS else v  # noqa: E731
    body = consent_pb2.ConsentBody(uscc=uscc, grantee=grantee, co_grantee=co_grantee, purpose=purpose, categories=cats,
                                   valid_from_ms=at(valid_from), valid_until_ms=at(valid_until), nonce=nonce,
                                   issued_at_ms=at(issued), detail_level=detail, history_months=history,
                                   fetch_type=fetch_type, max_fetches=max_fetches, fetch_period=fetch_period)
    envelope = tamper(sign(net.identity(Role.ENTERPRISE, CHENGDU_FIRM), body), how, net.bank_identity)
    response, failure = await caller.call((Role.ENTERPRISE, CHENGDU_FIRM), "registry",
                                          "/xinyi.v1.ConsentService/GrantConsent",
                                          mangle(consent_pb2.GrantConsentRequest(consent=envelope).SerializeToString(),
                                                 on_wire))
    check(response, failure, f"grant {body!r} tampered {how}")


@FUZZ
@given(consent_pick=st.sampled_from(["real", "random", "fuzz"]), consent_text=text,
       uscc=st.sampled_from([CHENGDU_FIRM]) | usccs,
       action=st.sampled_from([1, 2]) | st.integers(-1, 5) | int32, at=near_now | int64, nonce=blobs, how=tampering,
       rpc=st.sampled_from(["change", "status"]), on_wire=wire)
async def test_fuzz_change_consent(fuzz_net, consent_pick, consent_text, uscc, action, at, nonce, how, rpc, on_wire) -> None:
    """Pause, resume and status of the fuzz network's consent (never a revoke of it: action 3 is
    sent for random ids only, so the other examples keep a live consent to reach)."""
    net, caller, consent = fuzz_net
    consent_id = {"real": consent, "random": os.urandom(16).hex(), "fuzz": consent_text}[consent_pick]
    if consent_id == consent and action == consent_pb2.CONSENT_ACTION_REVOKE:
        action = consent_pb2.CONSENT_ACTION_PAUSE
    if rpc == "status":
        response, failure = await caller.call((Role.ENTERPRISE, CHENGDU_FIRM), "registry",
                                              "/xinyi.v1.ConsentService/GetConsentStatus",
                                              mangle(consent_pb2.GetConsentStatusRequest(consent_id=consent_id)
                                                     .SerializeToString(), on_wire))
        check(response, failure, f"status of {consent_id!r}")
        return
    body = consent_pb2.ConsentChangeBody(consent_id=consent_id, uscc=uscc, action=action,
                                         at_ms=now_ms() + at if abs(at) < 400 * DAY_MS else at, nonce=nonce)
    envelope = tamper(sign(net.identity(Role.ENTERPRISE, CHENGDU_FIRM), body), how, net.bank_identity)
    response, failure = await caller.call((Role.ENTERPRISE, CHENGDU_FIRM), "registry",
                                          "/xinyi.v1.ConsentService/ChangeConsent",
                                          mangle(consent_pb2.ChangeConsentRequest(change=envelope).SerializeToString(),
                                                 on_wire))
    check(response, failure, f"change {body!r} tampered {how}")


async def test_after_the_fuzz_the_network_still_answers_and_every_log_verifies(fuzz_net) -> None:
    net, caller, consent = fuzz_net
    record = await net.enterprise().status(consent)
    if record.status == consent_pb2.CONSENT_STATUS_PAUSED:
        await net.enterprise().change(consent, "resume")
    result = await net.bank().query(CHENGDU_FIRM, CATEGORIES, PURPOSE, consent)
    assert any(v.verified and v.status == "ok" for v in result.nodes), result
    await verify_logs(net)
