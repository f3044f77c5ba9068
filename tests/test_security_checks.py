"""Unit tests of the security checks, written against the mutants `make mutate` found surviving.

Each test names the check it pins down; every one runs in-process in milliseconds, so that
scripts/mutate.py can run it once per mutant (mutation.toml lists this file for each module).
"""

from __future__ import annotations

import pytest
from nacl.public import PrivateKey, PublicKey, SealedBox

from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.crypto.sealing import AnswerKey, open_as_node, seal_to, seal_to_node
from xinyi.errors import Refusal


@pytest.fixture(scope="module")
def root() -> RootCA:
    return RootCA.create()


@pytest.fixture(scope="module")
def node(root):
    return root.issue(Principal(Role.NODE, "510100"))


# --- sealing -------------------------------------------------------------------------------------
def test_a_low_order_answer_key_is_refused_as_unusable_not_raised_as_a_crash():
    # All-zero is a low-order X25519 point: libsodium refuses to seal to it.
    with pytest.raises(Refusal) as caught:
        seal_to(bytes(32), b"answer", field="query.answer_key")
    assert [v.field for v in caught.value.violations] == ["query.answer_key"]
    assert "not a usable X25519 public key" in str(caught.value)


def test_a_sealed_answer_opens_with_its_key_and_only_with_it():
    key = AnswerKey.generate()
    sealed = seal_to(key.public_bytes, b"the answer")
    assert key.open(sealed) == b"the answer"
    with pytest.raises(ValueError, match="does not open with this query's key"):
        AnswerKey.generate().open(sealed)


def test_a_bundle_sealed_to_another_node_or_tampered_does_not_open_as_this_node(root, node):
    sealed = seal_to_node(node.signing_key.public_key().public_bytes_raw(), b"features")
    assert open_as_node(node, sealed) == b"features"
    other = root.issue(Principal(Role.NODE, "510000"))
    with pytest.raises(ValueError, match="does not open with this node's key"):
        open_as_node(other, sealed)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ValueError, match="does not open with this node's key"):
        open_as_node(node, tampered)
    # Sealed to a random X25519 key (not the node's): refused the same way.
    stranger = SealedBox(PublicKey(bytes(PrivateKey.generate().public_key))).encrypt(b"x")
    with pytest.raises(ValueError, match="does not open with this node's key"):
        open_as_node(node, stranger)


# --- signed envelopes ----------------------------------------------------------------------------
def _signed_over(identity, body_type: str, body: bytes, chain: tuple[bytes, ...] | None = None):
    from xinyi.crypto.envelope import signed_input
    from xinyi.v1 import envelope_pb2

    return envelope_pb2.SignedEnvelope(
        body_type=body_type, body=body, signature=identity.signing_key.sign(signed_input(body_type, body)),
        signer_cert=identity.signing_cert_der,
        signer_chain=identity.chain_der if chain is None else chain)


def test_a_well_signed_body_that_is_not_the_named_message_is_refused_as_invalid(root, node):
    from xinyi.crypto.envelope import verify
    from xinyi.v1 import query_pb2

    garbage = b"\xff\xff\xff\xff"  # an unterminated varint: no protobuf parses it
    env = _signed_over(node, query_pb2.AnswerBody.DESCRIPTOR.full_name, garbage)
    with pytest.raises(Refusal) as caught:
        verify(env, query_pb2.AnswerBody, root_trust(root), field="answer")
    assert caught.value.kind.name == "INVALID"
    assert [v.field for v in caught.value.violations] == ["answer.body"]
    assert "is not a valid xinyi.v1.AnswerBody" in str(caught.value)


def root_trust(root):
    from xinyi.crypto.pki import TrustAnchor

    return TrustAnchor(root.cert)


def test_a_chain_of_exactly_the_largest_length_is_accepted_one_more_is_refused(root):
    from xinyi.crypto.envelope import MAX_CHAIN, verify
    from xinyi.v1 import query_pb2

    issuing = root.certify_ca("sichuan")
    signer = issuing.issue(Principal(Role.NODE, "510000"))
    assert len(signer.chain_der) == 1
    body = query_pb2.AnswerBody(node_id="510000").SerializeToString()
    name = query_pb2.AnswerBody.DESCRIPTOR.full_name
    longest = signer.chain_der * MAX_CHAIN  # the issuing CA repeated: still a valid chain
    v = verify(_signed_over(signer, name, body, longest), query_pb2.AnswerBody, root_trust(root))
    assert v.signer == Principal(Role.NODE, "510000")
    with pytest.raises(Refusal) as caught:
        verify(_signed_over(signer, name, body, signer.chain_der * (MAX_CHAIN + 1)), query_pb2.AnswerBody,
               root_trust(root))
    assert [v.field for v in caught.value.violations] == ["envelope.signer_chain"]


def test_claimed_time_reads_the_signed_milliseconds_and_nothing_else(node):
    import datetime as dt

    from xinyi.crypto.envelope import claimed_time, sign
    from xinyi.v1 import consent_pb2, envelope_pb2

    env = sign(node, consent_pb2.ConsentChangeBody(consent_id="c", at_ms=1_700_000_000_123))
    assert claimed_time(env, consent_pb2.ConsentChangeBody, "at_ms") == \
        dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.timezone.utc)
    # No time in the body, a field the body does not have, or a body that does not parse: None.
    assert claimed_time(sign(node, consent_pb2.ConsentChangeBody(consent_id="c")), consent_pb2.ConsentChangeBody,
                        "at_ms") is None
    assert claimed_time(env, consent_pb2.ConsentChangeBody, "no_such_field") is None
    first_ms = sign(node, consent_pb2.ConsentChangeBody(consent_id="c", at_ms=1))
    assert claimed_time(first_ms, consent_pb2.ConsentChangeBody, "at_ms") == \
        dt.datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=dt.timezone.utc)
    # A time no calendar holds (int64 max of milliseconds is year 292 million): read as no time.
    far = sign(node, consent_pb2.ConsentChangeBody(consent_id="c", at_ms=2**63 - 1))
    assert claimed_time(far, consent_pb2.ConsentChangeBody, "at_ms") is None
    junk = envelope_pb2.SignedEnvelope(body=b"\xff\xff\xff\xff")
    assert claimed_time(junk, consent_pb2.ConsentChangeBody, "at_ms") is None


def test_a_signed_body_is_the_deterministic_encoding_whatever_order_a_map_was_filled_in(node):
    from xinyi.crypto.envelope import sign
    from xinyi.v1 import alerts_pb2

    body = alerts_pb2.PollAlertsBody()
    for i in reversed(range(64)):
        body.cursors[f"node-{i:03d}"] = i
    env = sign(node, body)
    assert env.body == body.SerializeToString(deterministic=True)


# --- certificates --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["-sichuan", "", "Sichuan", "a" * 41, "si chuan"])
def test_a_ca_name_that_starts_with_a_dash_or_is_not_lowercase_letters_digits_dashes_is_refused(name):
    from xinyi.crypto.pki import PKIError, check_ca_name

    with pytest.raises(PKIError, match="use 1-40 lowercase letters, digits and dashes"):
        check_ca_name(name)


@pytest.mark.parametrize("name", ["sichuan", "banks-2", "a" * 40, "abcdefghijklmnopqrstuvwxyz0123456789-"])
def test_a_well_formed_ca_name_is_accepted(name):
    from xinyi.crypto.pki import check_ca_name

    assert check_ca_name(name) is None


def test_a_peer_certificate_that_is_not_pem_is_refused_by_name(root):
    from xinyi.crypto.pki import PKIError

    trust = root_trust(root)
    with pytest.raises(PKIError, match="peer certificate is not PEM"):
        trust.check_peer(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(PKIError, match="peer certificate is not PEM"):
        trust.principal_of_tls_cert(b"no certificate here")


def test_a_renewed_bundle_replaces_one_of_the_same_principal_and_no_other(root, node):
    from xinyi.crypto.pki import PKIError

    node.check_renewal(root.issue(Principal(Role.NODE, "510100")))  # same principal, same root: accepted
    with pytest.raises(PKIError, match="the new bundle is .*, not "):
        node.check_renewal(root.issue(Principal(Role.NODE, "510000")))
    with pytest.raises(PKIError, match="trusts another national root"):
        node.check_renewal(RootCA.create().issue(Principal(Role.NODE, "510100")))


def test_authorities_from_another_root_are_left_out_and_the_rest_of_the_chain_still_learned(root):
    foreign = RootCA.create().certify_ca("sichuan")
    ours = root.certify_ca("shanghai")
    trust = root_trust(root)
    kept = trust.add_authorities([foreign.cert, ours.cert])
    assert kept == [ours.cert]
    assert trust.authorities == (ours.cert,)


def test_the_verified_signer_cache_never_holds_more_than_its_limit(root):
    trust = root_trust(root)
    trust._CACHE_LIMIT = 2  # the bound's logic, at a size a test can reach (4096 in production)
    for i in range(3):
        signer = root.issue(Principal(Role.NODE, f"51010{i}"))
        trust.verify_signing_cert(signer.signing_cert_der)
        assert len(trust._verified) == [1, 2, 1][i]  # kept until full, then started afresh
    # The third verification found the cache full and started it afresh.
    assert len(trust._verified) == 1


def test_a_certificate_naming_an_unknown_role_is_refused_as_a_pki_error():
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    from xinyi.crypto.pki import PKIError, principal_of

    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("xinyi://wizard/1")]),
                           critical=False)
            .sign(key, None))
    with pytest.raises(PKIError, match="unknown role 'wizard'"):
        principal_of(cert)


def test_a_body_of_exactly_the_largest_size_is_accepted_one_byte_more_is_refused(root, node):
    from xinyi.crypto.envelope import sign, verify
    from xinyi.v1 import query_pb2

    env = sign(node, query_pb2.AnswerBody(node_id="510100", uscc="x" * 100))
    size = len(env.body)
    assert verify(env, query_pb2.AnswerBody, root_trust(root), max_body_bytes=size).message.node_id == "510100"
    with pytest.raises(Refusal) as caught:
        verify(env, query_pb2.AnswerBody, root_trust(root), max_body_bytes=size - 1)
    assert caught.value.reason == "TOO_LARGE"


def test_learning_authorities_skips_known_and_non_ca_certificates_without_dropping_the_rest(root, node):
    trust = root_trust(root)
    known = root.certify_ca("sichuan")
    later = root.certify_ca("chongqing")
    assert trust.add_authorities([known.cert]) == [known.cert]
    # An authority already held, then a new one: both kept.
    assert trust.add_authorities([known.cert, later.cert]) == [known.cert, later.cert]
    # A certificate the root issued that is no CA (a node's), then a CA: the CA is still learned.
    third = root.certify_ca("hubei")
    assert trust.add_authorities([node.signing_cert, third.cert]) == [third.cert]
    assert set(trust.authorities) == {known.cert, later.cert, third.cert}


def test_an_identity_is_usable_up_to_the_last_instant_of_its_certificates(root):
    import datetime as dt

    from xinyi.crypto.pki import PKIError, check_own_validity

    identity = root.issue(Principal(Role.NODE, "310000"))
    last = min(identity.tls_cert.not_valid_after_utc, identity.signing_cert.not_valid_after_utc)
    check_own_validity(identity, now=last)
    first = max(identity.tls_cert.not_valid_before_utc, identity.signing_cert.not_valid_before_utc)
    check_own_validity(identity, now=first)
    with pytest.raises(PKIError, match="is not valid before"):
        check_own_validity(identity, now=first - dt.timedelta(seconds=1))
    # A signer's certificate is valid from its first instant to its last, both included.
    trust = root_trust(root)
    cert = identity.signing_cert
    for at in (cert.not_valid_before_utc, cert.not_valid_after_utc):
        assert trust.verify_signing_cert(identity.signing_cert_der, at=at)[0] == identity.principal
    with pytest.raises(PKIError, match="outside its validity"):
        trust.verify_signing_cert(identity.signing_cert_der, at=cert.not_valid_before_utc - dt.timedelta(seconds=1))
    with pytest.raises(PKIError, match="expired on"):
        check_own_validity(identity, now=last + dt.timedelta(seconds=1))


def test_a_peer_is_refused_while_its_issuing_ca_is_outside_its_validity_or_revoked(root):
    import datetime as dt

    from xinyi.crypto.pki import CertificateRevoked, PKIError, RevocationSet
    from xinyi.crypto.revocation import revoke

    ca = root.certify_ca("sichuan")
    ca_start = ca.cert.not_valid_before_utc
    # A certificate dated from before its CA was (issue allows an early start; only the end is capped).
    peer = ca.issue(Principal(Role.NODE, "510000"), not_before=ca_start - dt.timedelta(days=2))
    trust = root_trust(root)
    trust.add_authorities([ca.cert])
    assert trust.check_peer(peer.tls_cert, at=ca_start + dt.timedelta(hours=1)) == Principal(Role.NODE, "510000")
    # Both windows are closed intervals: the CA's first instant is inside it.
    assert trust.check_peer(peer.tls_cert, at=ca_start) == Principal(Role.NODE, "510000")
    with pytest.raises(PKIError, match="the issuing CA of node/510000 is outside its validity"):
        trust.check_peer(peer.tls_cert, at=ca_start - dt.timedelta(days=1))
    # A certificate ending with its CA is usable up to that last instant, not after.
    ca_end = ca.cert.not_valid_after_utc
    last = ca.issue(Principal(Role.NODE, "510100"), not_after=ca_end)
    assert trust.check_peer(last.tls_cert, at=ca_end) == Principal(Role.NODE, "510100")
    with pytest.raises(PKIError):
        trust.check_peer(last.tls_cert, at=ca_end + dt.timedelta(seconds=1))
    # The root revokes the CA: its peers are refused from then on.
    crl = revoke(root.cert, root.key, None, [ca.cert.serial_number], "key_compromise")
    trust.set_revocations(RevocationSet.verified([crl], trust.issuer_cert_by_name))
    with pytest.raises(CertificateRevoked, match="the issuing CA of node/510000 was revoked") as refused:
        trust.check_peer(peer.tls_cert)
    # It says whose certificate was revoked: an auditor's report names the CA's, not the node's.
    assert refused.value.issuing_ca is True and refused.value.revoked.serial == ca.cert.serial_number


def test_a_new_revocation_list_from_the_directory_is_learned_and_an_older_one_changes_nothing(root):
    from cryptography.hazmat.primitives import serialization

    from xinyi.crypto.pki import CertificateRevoked, PKIError
    from xinyi.crypto.revocation import revoke

    first = root.issue(Principal(Role.NODE, "510000"))
    second = root.issue(Principal(Role.NODE, "310000"))
    older = revoke(root.cert, root.key, None, [first.signing_cert.serial_number], "key_compromise")
    newer = revoke(root.cert, root.key, older, [second.signing_cert.serial_number], "key_compromise")
    der = lambda crl: crl.public_bytes(serialization.Encoding.DER)  # noqa: E731
    trust = root_trust(root)
    assert trust.verify_signing_cert(second.signing_cert_der)[0] == Principal(Role.NODE, "310000")
    assert trust.learn([], [der(newer)]) == []
    for revoked in (first, second):
        with pytest.raises(CertificateRevoked):
            trust.verify_signing_cert(revoked.signing_cert_der)
    assert trust.learn([], [der(older)]) == []  # as old as the one held: left as it is
    with pytest.raises(PKIError):
        trust.verify_signing_cert(second.signing_cert_der)


# --- queries and replay --------------------------------------------------------------------------
BANK_USCC = "914403001922038216"


@pytest.fixture(scope="module")
def firm_uscc() -> str:
    from xinyi.records import uscc as uscc_codes

    return uscc_codes.with_check_character("91510104MA6CW8J7X")


@pytest.fixture(scope="module")
def bank(root):
    return root.issue(Principal(Role.BANK, BANK_USCC), licence="B0014H144030001")


def _query(identity, firm, *, now_ms, issued_at_ms=None, purpose="credit_assessment", consent_id="c" * 32,
           categories=("tax",)):
    from xinyi.crypto.envelope import sign
    from xinyi.v1 import query_pb2

    import os
    body = query_pb2.QueryBody(uscc=firm, categories=list(categories), purpose=purpose, consent_id=consent_id,
                               nonce=os.urandom(16), issued_at_ms=now_ms if issued_at_ms is None else issued_at_ms,
                               answer_key=AnswerKey.generate().public_bytes)
    return sign(identity, body)


def test_every_category_of_a_query_is_checked_not_only_the_count(firm_uscc):
    from xinyi.query import check_query_fields

    with pytest.raises(Refusal) as caught:
        check_query_fields(firm_uscc, ["tax", "horoscope"], "credit_assessment", "c" * 32)
    assert caught.value.reason == "UNKNOWN_CATEGORY"


def test_a_query_timestamp_exactly_at_the_window_edge_is_accepted_one_ms_past_is_stale(root, bank, firm_uscc):
    from xinyi.query import TIMESTAMP_WINDOW_MS, check_query

    now = 1_800_000_000_000
    trust = root_trust(root)
    for skew in (TIMESTAMP_WINDOW_MS, -TIMESTAMP_WINDOW_MS):
        check_query(_query(bank, firm_uscc, now_ms=now, issued_at_ms=now + skew), trust, now)
    for skew, word in ((TIMESTAMP_WINDOW_MS + 1, "ahead of"), (-TIMESTAMP_WINDOW_MS - 1, "behind")):
        with pytest.raises(Refusal) as caught:
            check_query(_query(bank, firm_uscc, now_ms=now, issued_at_ms=now + skew), trust, now)
        assert caught.value.reason == "STALE_TIMESTAMP"
        assert word in str(caught.value)
    with pytest.raises(Refusal, match="is 999 s ahead of this server's clock"):
        check_query(_query(bank, firm_uscc, now_ms=now, issued_at_ms=now + 999_000), trust, now)


def test_an_enterprise_signs_its_own_self_access_query_and_no_other(root, firm_uscc):
    import time

    from xinyi.query import build_self_query, check_query

    firm = root.issue(Principal(Role.ENTERPRISE, firm_uscc))
    now = int(time.time() * 1000)
    env, _ = build_self_query(firm, now_ms=now)
    assert check_query(env, root_trust(root), now).signer == Principal(Role.ENTERPRISE, firm_uscc)
    with pytest.raises(Refusal) as caught:
        check_query(_query(firm, firm_uscc, now_ms=now), root_trust(root), now)
    assert caught.value.reason == "WRONG_SIGNER_ROLE"


def test_the_replay_guard_refuses_a_nonce_until_it_expires_then_forgets_it():
    from xinyi.query import NONCE_PRUNE_MS, TIMESTAMP_WINDOW_MS, ReplayGuard

    guard = ReplayGuard()
    t0 = 10 * TIMESTAMP_WINDOW_MS
    row = guard.take("bank/x", b"n1", t0, issued_at_ms=t0)
    assert row == ("seen_nonces", {"signer": "bank/x", "nonce": b"n1", "expires_at_ms": t0 + TIMESTAMP_WINDOW_MS})
    assert guard.take("bank/x", b"n1", t0 + 1) is None  # a replay
    assert guard.take("bank/x", b"n1", t0 + TIMESTAMP_WINDOW_MS) is None  # the last instant it is kept
    assert guard.take("bank/y", b"n1", t0 + 1) is not None  # another signer's nonce is its own
    # Without the query's time, a nonce is kept two windows.
    assert guard.take("bank/x", b"n2", t0)[1]["expires_at_ms"] == t0 + 2 * TIMESTAMP_WINDOW_MS
    # Once expired, pruning drops it (the guard's memory stays bounded) and the nonce is free again.
    later = t0 + 2 * TIMESTAMP_WINDOW_MS + NONCE_PRUNE_MS + 1
    assert guard.take("bank/z", b"other", later) is not None
    assert len(guard) == 1
    assert guard.take("bank/x", b"n1", later) is not None


def test_the_replay_guard_prunes_only_after_its_interval_and_keeps_live_nonces():
    from xinyi.query import NONCE_PRUNE_MS, ReplayGuard

    guard = ReplayGuard()
    t0 = 10 * NONCE_PRUNE_MS
    guard.take("s", b"short", t0, issued_at_ms=t0 - 300_000)  # expires at t0 (its window already over)
    guard.take("s", b"long", t0)
    assert len(guard) == 2
    guard.take("s", b"x", t0 + NONCE_PRUNE_MS)  # not yet a whole interval since the last prune
    assert len(guard) == 3
    guard.take("s", b"y", t0 + NONCE_PRUNE_MS + 1)  # now it prunes: "short" expired, the rest live
    assert len(guard) == 3
    assert guard.take("s", b"long", t0 + NONCE_PRUNE_MS + 2) is None


def test_claiming_a_nonce_returns_the_row_with_its_query_and_refuses_it_a_second_time():
    import asyncio

    from xinyi.query import ReplayGuard

    guard = ReplayGuard()
    table, row = asyncio.run(guard.claim("bank/x", b"n1", 1_000_000, request_hash="abc"))
    assert (table, row["request_hash"], row["nonce"]) == ("seen_nonces", "abc", b"n1")
    assert "request_hash" not in asyncio.run(guard.claim("bank/x", b"n2", 1_000_000))[1]
    with pytest.raises(Refusal) as caught:
        asyncio.run(guard.claim("bank/x", b"n1", 1_000_001, request_hash="abc"))
    assert caught.value.reason == "REPLAYED_NONCE"


def test_the_replay_guard_loaded_from_the_store_refuses_what_it_held():
    from xinyi.query import ReplayGuard

    guard = ReplayGuard()
    guard.load([("bank/x", b"n1", 5_000)])
    assert guard.take("bank/x", b"n1", 1_000) is None
    assert guard.take("bank/x", b"n1", 5_001) is not None


def test_a_query_nonce_is_remembered_by_the_store_for_two_windows(tmp_path, bank, firm_uscc, root):
    import asyncio

    from sqlalchemy import select

    from node.store import NodeStore
    from xinyi.query import TIMESTAMP_WINDOW_MS, check_query, refuse_replay

    store = NodeStore(f"sqlite:///{tmp_path}/node.db")
    store.create_schema()
    now = 1_800_000_000_000
    v = check_query(_query(bank, firm_uscc, now_ms=now), root_trust(root), now)
    asyncio.run(refuse_replay(store, v, now))
    with store.engine.begin() as conn:
        assert conn.execute(select(store.nonces.c.expires_at_ms)).scalar_one() == now + 2 * TIMESTAMP_WINDOW_MS
    with pytest.raises(Refusal) as caught:
        asyncio.run(refuse_replay(store, v, now + 1))
    assert caught.value.reason == "REPLAYED_NONCE"


def test_a_revocation_list_that_is_not_der_is_named_and_the_next_one_still_learned(root):
    from cryptography.hazmat.primitives import serialization

    from xinyi.crypto.pki import CertificateRevoked
    from xinyi.crypto.revocation import revoke

    victim = root.issue(Principal(Role.NODE, "510000"))
    crl = revoke(root.cert, root.key, None, [victim.signing_cert.serial_number], "key_compromise")
    trust = root_trust(root)
    problems = trust.learn([], [b"not a CRL", crl.public_bytes(serialization.Encoding.DER)])
    assert problems == ["a revocation list that is not DER"]
    with pytest.raises(CertificateRevoked):
        trust.verify_signing_cert(victim.signing_cert_der)


def test_a_revocation_list_that_loads_but_cannot_be_read_is_named_not_raised(root):
    """cryptography parses a list lazily: one with its CRL-number extension twice loads, and fails
    only when its number is read. It is named as a problem and the next list is still learned."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from xinyi.crypto.pki import CertificateRevoked
    from xinyi.crypto.revocation import revoke

    now = dt.datetime.now(dt.timezone.utc)
    raw = (x509.CertificateRevocationListBuilder().issuer_name(root.cert.subject).last_update(now)
           .next_update(now + dt.timedelta(days=1)).add_extension(x509.CRLNumber(5), False)
           .add_extension(x509.DeltaCRLIndicator(6), True).sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
           ).public_bytes(serialization.Encoding.DER)
    malformed = raw.replace(bytes.fromhex("0603551d1b"), bytes.fromhex("0603551d14"))  # deltaCRLIndicator -> cRLNumber
    x509.load_der_x509_crl(malformed)  # it loads
    victim = root.issue(Principal(Role.NODE, "510000"))
    crl = revoke(root.cert, root.key, None, [victim.signing_cert.serial_number], "key_compromise")
    trust = root_trust(root)
    problems = trust.learn([], [malformed, crl.public_bytes(serialization.Encoding.DER)])
    assert problems == ["a revocation list whose extensions or names do not parse"]
    with pytest.raises(CertificateRevoked):
        trust.verify_signing_cert(victim.signing_cert_der)


def test_an_answer_that_opens_but_is_no_signed_envelope_is_refused_as_malformed(root, firm_uscc):
    from xinyi.query import AnswerError, open_answer

    key = AnswerKey.generate()
    sealed = seal_to(key.public_bytes, b"\xff\xff\xff\xff")  # opens, then parses as nothing
    node = root.issue(Principal(Role.NODE, "510100"))
    with pytest.raises(AnswerError, match="answer from 510100 is malformed"):
        open_answer(sealed, key, expected_node="510100", node_signing_cert=node.signing_cert_der,
                    request_hash=b"h" * 32, uscc=firm_uscc, trust=root_trust(root))


# --- fair use: the self-access cap's window -----------------------------------------------------
@pytest.mark.parametrize("period, now, start, again", [
    # 2026-03-15 14:37:12.345 Beijing: the day began at 00:00 that day, the month on the 1st.
    ("day", "2026-03-15T14:37:12.345", "2026-03-15T00:00:00", "2026-03-16 00:00"),
    ("month", "2026-03-15T14:37:12.345", "2026-03-01T00:00:00", "2026-04-01 00:00"),
    # Beijing's midnight is 16:00 UTC the day before: 00:30 Beijing is already the new day.
    ("day", "2026-03-01T00:30:00", "2026-03-01T00:00:00", "2026-03-02 00:00"),
    ("month", "2026-02-28T23:59:59.999", "2026-02-01T00:00:00", "2026-03-01 00:00"),
    ("month", "2026-12-31T10:00:00", "2026-12-01T00:00:00", "2027-01-01 00:00"),
])
def test_the_self_access_window_starts_at_beijing_midnight_and_the_refusal_says_when_it_reopens(period, now, start,
                                                                                                  again):
    import datetime as dt

    from xinyi.privacy.fairuse import SelfAccessRule

    beijing = dt.timezone(dt.timedelta(hours=8))
    now_ms = int(dt.datetime.fromisoformat(now).replace(tzinfo=beijing).timestamp() * 1000)
    start_ms = int(dt.datetime.fromisoformat(start).replace(tzinfo=beijing).timestamp() * 1000)
    rule = SelfAccessRule(max_queries=3, period=period)
    assert rule.window_start(now_ms) == start_ms
    refusal = rule.refusal(3, now_ms)
    assert refusal.reason == "FETCH_LIMIT"
    assert f"try again from {again} Beijing time" in str(refusal)
    assert f"at most 3 times a {period}" in str(refusal)
    assert refusal.metadata == {"rule": "self_access.max_queries", "limit": "3", "actual": "3"}


def test_an_unknown_purpose_is_refused_naming_it():
    from xinyi.privacy.fairuse import FairUse

    with pytest.raises(Refusal) as caught:
        FairUse.from_dir().rule("fortune_telling")
    from xinyi.records.vocab import purpose_problem

    assert [v.field for v in caught.value.violations] == ["consent.purpose"]
    assert caught.value.violations[0].description == purpose_problem("fortune_telling")  # the vocabulary's words


def test_a_certificate_without_a_subject_alt_name_is_refused_as_naming_no_principal():
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    from xinyi.crypto.pki import PKIError, principal_of

    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node/510100")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)).sign(key, None))
    with pytest.raises(PKIError, match="has no subjectAltName naming a xinyi principal"):
        principal_of(cert)


# --- signed notes: a signer's keys over time ----------------------------------------------------
def test_a_witness_with_a_replaced_key_verifies_the_cosignature_made_with_its_current_one():
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from xinyi.audit.checkpoint import (Checkpoint, NoteError, add_cosignature, sign_note, verify_cosignature,
                                        verify_note)

    log_old, log_new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    witness_old, witness_new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    note = sign_note(Checkpoint("node.example/audit", 3, hashlib.sha256(b"r").digest()), "node.example/audit", log_new)
    note = add_cosignature(note, "registry.example", witness_new, 1_700_000_000)
    # The keys each party has had, oldest first: the key id on the line picks the one that signed.
    assert verify_note(note, "node.example/audit", [log_old.public_key(), log_new.public_key()]).size == 3
    assert verify_cosignature(note, "registry.example", [witness_old.public_key(), witness_new.public_key()]) \
        == 1_700_000_000
    with pytest.raises(NoteError):
        verify_cosignature(note, "registry.example", [witness_old.public_key()])


# --- Cedar: decisions remembered, within a bound ------------------------------------------------
def test_the_authorizer_remembers_its_decisions_and_forgets_them_all_past_its_bound(monkeypatch):
    from xinyi import policy
    from xinyi.policy import Action, Authorizer, Resource

    authz = Authorizer.from_dir()
    bank = Principal(Role.BANK, "914403001922038216")
    remembered = authz._state[2]
    for i, purpose in enumerate(["credit_assessment", "loan_monitoring", "guarantee"]):
        d = authz.decide(bank, Action.QUERY, Resource.enterprise("91440300708461136T"),
                         {"purpose": purpose, "categories": ["tax"]}, licence="B0014H144030001")
        assert len(remembered) == i + 1
        assert authz.decide(bank, Action.QUERY, Resource.enterprise("91440300708461136T"),
                            {"purpose": purpose, "categories": ["tax"]}, licence="B0014H144030001") is d
    monkeypatch.setattr(policy, "MAX_REMEMBERED", 3)
    authz.decide(bank, Action.QUERY, Resource.enterprise("91100000100003962T"), {"purpose": "credit_assessment",
                                                                                 "categories": ["tax"]})
    assert len(remembered) == 1  # full: forgotten all at once, then the new decision kept


@pytest.mark.parametrize("context", ["circular", "not_json"])
def test_a_request_cedar_cannot_even_read_is_denied_not_raised(context):
    from xinyi.policy import Action, Authorizer, Resource

    authz = Authorizer.from_dir()
    policies, schema, _ = authz._state
    if context == "circular":
        ctx: dict = {"purpose": "credit_assessment"}
        ctx["self"] = ctx  # json.dumps raises ValueError
    else:
        ctx = {"purpose": object()}  # json.dumps raises TypeError
    decision = authz._evaluate(policies, schema, Principal(Role.BANK, "914403001922038216"), Action.QUERY,
                               Resource.enterprise("91440300708461136T"), ctx, "B0014H144030001", frozenset())
    assert decision.allowed is False
    assert decision.reason.startswith("denied: Cedar cannot evaluate the request:")


def test_a_signer_under_a_ca_without_key_usage_fails_path_validation_with_a_pki_error(root):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.x509.oid import NameOID

    from xinyi.crypto.pki import PKIError

    now = dt.datetime.now(dt.timezone.utc)
    der = lambda c: c.public_bytes(serialization.Encoding.DER)  # noqa: E731
    # The root signed a CA certificate that says "CA" but carries no key usage: RFC 5280 path
    # validation must refuse what it signs, though the signature chain itself is sound.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no-key-usage")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(root.cert.subject)
               .public_key(ca_key.public_key()).serial_number(7)
               .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .sign(root.key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n")]))
            .issuer_name(ca_name).public_key(ed25519.Ed25519PrivateKey.generate().public_key()).serial_number(8)
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=10))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("xinyi://node/510000")]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    with pytest.raises(PKIError, match="certificate path to the national root does not validate"):
        root_trust(root).verify_signing_cert(der(leaf), chain=(der(ca_cert),))


def test_a_repeated_category_is_refused_even_when_the_count_is_allowed(firm_uscc):
    from xinyi.query import check_query_fields

    with pytest.raises(Refusal, match="must not repeat a category"):
        check_query_fields(firm_uscc, ["tax", "tax"], "credit_assessment", "c" * 32)


def test_an_enterprise_reads_only_its_own_records_and_other_signers_are_left_to_policy(root, bank, firm_uscc):
    import time

    from xinyi.crypto.envelope import verify
    from xinyi.query import build_self_query, check_query, check_self_access, is_self_access
    from xinyi.records import uscc as uscc_codes
    from xinyi.v1 import query_pb2

    now = int(time.time() * 1000)
    firm = root.issue(Principal(Role.ENTERPRISE, firm_uscc))
    own = check_query(build_self_query(firm, now_ms=now)[0], root_trust(root), now)
    assert is_self_access(own)
    check_self_access(own)  # its own USCC: passes
    other_uscc = uscc_codes.with_check_character("91440300708461136")
    other = verify(_query(firm, other_uscc, now_ms=now, purpose="self_access", consent_id=""),
                   query_pb2.QueryBody, root_trust(root), roles={Role.ENTERPRISE}, field="query")
    with pytest.raises(Refusal) as caught:
        check_self_access(other)
    assert caught.value.reason == "SELF_ACCESS_OF_ANOTHER_ENTERPRISE"
    # A bank's query is not this check's business (policy decides what a bank may read).
    by_bank = check_query(_query(bank, firm_uscc, now_ms=now), root_trust(root), now)
    assert not is_self_access(by_bank)
    check_self_access(by_bank)


# --- Merkle proofs -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [b"x" * 31, b"x" * 33, bytearray(b"x" * 64)])
def test_a_proof_holding_a_hash_of_the_wrong_length_proves_nothing(bad):
    from xinyi.audit.merkle import leaf_hash, root_from_inclusion_proof, verify_consistency

    leaf = leaf_hash(b"entry")
    assert root_from_inclusion_proof(leaf, 0, 2, [bad]) is None
    assert root_from_inclusion_proof(leaf, 0, 2, [leaf_hash(b"other")]) is not None  # the same shape, well formed
    assert verify_consistency(1, 2, leaf, leaf, [bad]) is False


def test_an_authority_issued_under_another_roots_name_is_skipped_and_the_next_one_learned(root):
    stranger = RootCA.create(name="Some Other Root CA").certify_ca("sichuan")
    ours = root.certify_ca("gansu")
    trust = root_trust(root)
    assert stranger.cert.issuer != root.cert.subject
    assert trust.add_authorities([stranger.cert, ours.cert]) == [ours.cert]


# --- the revocation lists and authorities the directory publishes (TrustAnchor.learn) ------------
def _der_crl(crl) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return crl.public_bytes(serialization.Encoding.DER)


def test_an_unreadable_authority_in_the_directory_is_named_and_its_revocation_lists_still_learned(root):
    from xinyi.crypto.pki import CertificateRevoked
    from xinyi.crypto.revocation import revoke

    victim = root.issue(Principal(Role.NODE, "510000"))
    crl = revoke(root.cert, root.key, None, [victim.signing_cert.serial_number], "key_compromise")
    trust = root_trust(root)
    assert trust.learn([b"not a certificate"], [_der_crl(crl)]) == \
        ["issuing CA certificate is not a DER X.509 certificate"]
    with pytest.raises(CertificateRevoked):
        trust.verify_signing_cert(victim.signing_cert_der)


def test_a_revocation_list_its_ca_did_not_sign_is_named_and_the_next_one_still_learned(root):
    from cryptography.hazmat.primitives.asymmetric import ec

    from xinyi.crypto.pki import CertificateRevoked
    from xinyi.crypto.revocation import revoke

    ca = root.certify_ca("gansu")
    spared = root.issue(Principal(Role.NODE, "510000"))
    victim = ca.issue(Principal(Role.NODE, "620000"))
    # Under the root's name and with the root's key identifier, but signed by another key.
    forged = revoke(root.cert, ec.generate_private_key(ec.SECP256R1()), None, [spared.signing_cert.serial_number],
                    "key_compromise")
    genuine = revoke(ca.cert, ca.key, None, [victim.signing_cert.serial_number], "key_compromise")
    trust = root_trust(root)
    problems = trust.learn([ca.cert], [_der_crl(forged), _der_crl(genuine)])
    assert problems == [f"the revocation list of {root.cert.subject.rfc4514_string()} is not signed by that CA"]
    assert trust.verify_signing_cert(spared.signing_cert_der)[0] == Principal(Role.NODE, "510000")
    with pytest.raises(CertificateRevoked):
        trust.verify_signing_cert(victim.signing_cert_der, chain=victim.chain_der)


def test_a_revocation_list_as_new_as_the_one_held_is_not_taken_again_and_the_next_one_is(root):
    """The directory republishes the lists it holds every time: one numbered as the list held is
    left as it is, unread, even when it would not verify (nothing to report, nothing changes),
    and the lists after it are still learned."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from xinyi.crypto.pki import CertificateRevoked
    from xinyi.crypto.revocation import crl_number, revoke

    ca = root.certify_ca("gansu")
    victim = root.issue(Principal(Role.NODE, "510000"))
    spared = root.issue(Principal(Role.NODE, "310000"))
    later = ca.issue(Principal(Role.NODE, "620000"))
    held = revoke(root.cert, root.key, None, [victim.signing_cert.serial_number], "key_compromise")
    same_number = revoke(root.cert, ec.generate_private_key(ec.SECP256R1()), None,
                         [spared.signing_cert.serial_number], "key_compromise")
    after = revoke(ca.cert, ca.key, None, [later.signing_cert.serial_number], "key_compromise")
    assert crl_number(held) == crl_number(same_number) == 1
    trust = root_trust(root)
    assert trust.learn([ca.cert], [_der_crl(held)]) == []
    assert trust.learn([ca.cert], [_der_crl(held), _der_crl(same_number), _der_crl(after)]) == []
    assert sorted(map(_der_crl, trust.revocations.crls)) == sorted(map(_der_crl, (held, after)))
    for revoked in (victim, later):
        with pytest.raises(CertificateRevoked):
            trust.verify_signing_cert(revoked.signing_cert_der, chain=revoked.chain_der)
    assert trust.verify_signing_cert(spared.signing_cert_der)[0] == Principal(Role.NODE, "310000")


def test_a_certificate_whose_subject_alt_name_does_not_parse_is_refused_as_a_pki_error():
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtensionOID, NameOID

    from xinyi.crypto.pki import PKIError, principal_of

    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node/510100")])
    now = dt.datetime.now(dt.timezone.utc)
    damaged = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x05\x86\x09xinyi")  # cut short
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(damaged, critical=False).sign(key, None))
    cert = x509.load_der_x509_certificate(cert.public_bytes(Encoding.DER))
    with pytest.raises(PKIError, match="^certificate's extensions do not parse$"):
        principal_of(cert)
