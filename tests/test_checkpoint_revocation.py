"""Checkpoints and revocation (issue 12, item 2): a checkpoint carries no time, so one signed with
a key whose certificate was revoked (or whose issuing CA was, or which expired) counts only when
the witness cosigned it while the key was in force; a key in force (current, or one a rotation
replaced) keeps verifying as before, and what an auditor verified before the revocation stays
verified. Real PKI objects, real directories signed by the registry, the product's verifiers."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import re

import pytest
from cryptography.hazmat.primitives import serialization

from xinyi.audit import merkle
from xinyi.audit.checkpoint import Checkpoint, NoteError, add_cosignature, note_key_id, sign_note
from xinyi.audit.entry import AuditEntry
from xinyi.audit.verify import verify_checkpoint, verify_log
from xinyi.auditing import log_key, revocations_file, verify_and_remember, verify_fetched
from xinyi.crypto.envelope import sign
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA, TrustAnchor
from xinyi.crypto.revocation import revoke
from xinyi.directory import Directory
from xinyi.privacy.access import AccessProofError, verify_node_accesses
from xinyi.v1 import access_pb2, audit_pb2, directory_pb2

UTC = dt.timezone.utc
NODE = "510100"
ORIGIN = f"xinyi/{NODE}"
WITNESS = "xinyi/national"


# Certificates valid from a month ago, so that a cosignature can be dated days back.
SINCE = dt.datetime.now(UTC) - dt.timedelta(days=30)


@pytest.fixture(scope="module")
def net():
    root = RootCA.create(not_before=SINCE)
    ca = root.certify_ca("sichuan", not_before=SINCE)
    return {"root": root, "ca": ca, "node": issue(ca), "registry": root.issue(Principal(Role.REGISTRY, "national"),
                                                                               not_before=SINCE)}


def issue(ca, **validity):
    return ca.issue(Principal(Role.NODE, NODE), **({"not_before": SINCE} | validity))


def der(x) -> bytes:
    return x.public_bytes(serialization.Encoding.DER)


def directory(net, signing, *, previous=(), crls=(), at: dt.datetime | None = None, version: int = 1) -> Directory:
    """The registry-signed directory listing the node's key (and the ones it replaced) with the
    revocation lists it publishes, verified by a fresh auditor's trust anchor."""
    body = directory_pb2.DirectoryBody(
        version=version, issued_at_ms=int(dt.datetime.now(UTC).timestamp() * 1000), registry_id="national",
        nodes=[directory_pb2.NodeEntry(node_id=NODE, endpoint="127.0.0.1:1", signing_cert=signing.signing_cert_der,
                                       previous_keys=[directory_pb2.KeyPeriod(signing_cert=p.signing_cert_der,
                                                                               valid_from_ms=1, valid_until_ms=2)
                                                      for p in previous])],
        authorities=[der(net["ca"].cert)], revocation_lists=[der(c) for c in crls])
    return Directory.verify(sign(net["registry"], body), TrustAnchor(net["root"].cert), at=at)


def log(size: int) -> list[tuple[int, bytes]]:
    tracker, out = merkle.RootTracker(), []
    for index in range(size):
        leaf = AuditEntry(at_ms=1_767_225_600_000 + index, caller_role="auditor", caller_id="auditor-1",
                          action="list_audit_records", decision="allow", reason="answered"
                          ).to_record(index, tracker.root()).SerializeToString(deterministic=True)
        tracker.append(merkle.leaf_hash(leaf))
        out.append((index, leaf))
    return out


def note_of(entries, identity) -> str:
    root = merkle.root_of([merkle.leaf_hash(leaf) for _, leaf in entries])
    return sign_note(Checkpoint(ORIGIN, len(entries), root), ORIGIN, identity.signing_key)


def cosigned(note: str, net, when: dt.datetime) -> str:
    return add_cosignature(note, WITNESS, net["registry"].signing_key, int(when.timestamp()))


def kid(identity) -> str:
    return note_key_id(ORIGIN, identity.signing_cert.public_key()).hex()


def revoked_key(net, identity, at: dt.datetime, reason: str = "key_compromise"):
    return revoke(net["ca"].cert, net["ca"].key, None, [identity.tls_cert.serial_number,
                                                        identity.signing_cert.serial_number], reason, now=at)


def check(note, d, entries, previous=None):
    return verify_log(note, ORIGIN, log_key(d, ORIGIN), entries, previous)


def test_a_checkpoint_signed_with_a_revoked_key_is_refused_saying_which_key_and_when(net):
    entries = log(5)
    note = note_of(entries, net["node"])
    # Before the revocation is published, it verifies (as it did before).
    assert check(note, directory(net, net["node"]), entries)[0].ok
    revoked_at = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    d = directory(net, net["node"], crls=[revoked_key(net, net["node"], revoked_at)])
    report, state = check(note, d, entries)
    assert not report.ok and state is None
    expected = (f"checkpoint signed by key {kid(net['node'])} of {ORIGIN}, whose certificate (serial "
                f"{net['node'].signing_cert.serial_number:x}) was revoked at {revoked_at:%Y-%m-%d %H:%M:%S} UTC "
                "(key_compromise); only checkpoints a witness cosigned before then are accepted "
                "(it carries no valid witness cosignature)")
    assert report.problems == [f"checkpoint: {expected}"]


def test_the_same_checkpoint_cosigned_before_the_revocation_is_accepted_and_after_it_refused(net):
    entries = log(5)
    note = note_of(entries, net["node"])
    revoked_at = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    d = directory(net, net["node"], crls=[revoked_key(net, net["node"], revoked_at)])
    before = cosigned(note, net, revoked_at - dt.timedelta(minutes=10))
    report, state = check(before, d, entries)
    assert report.ok, report.problems
    assert state is not None and state.size == 5
    after = cosigned(note, net, revoked_at + dt.timedelta(minutes=10))
    report, _ = check(after, d, entries)
    assert not report.ok
    assert "only checkpoints a witness cosigned before then are accepted (the witness cosigned it at " \
           f"{revoked_at + dt.timedelta(minutes=10):%Y-%m-%d %H:%M:%S} UTC)" in report.problems[0]
    # A cosignature by someone else than the registry's listed key dates nothing.
    forged = add_cosignature(note, WITNESS, net["node"].signing_key, int((revoked_at - dt.timedelta(hours=1)).timestamp()))
    assert not check(forged, d, entries)[0].ok


def test_after_a_rotation_the_new_key_verifies_and_the_revoked_old_one_does_not(net):
    old, new = net["node"], issue(net["ca"])
    revoked_at = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    d = directory(net, new, previous=[old], crls=[revoked_key(net, old, revoked_at)])
    entries = log(6)
    report, _ = check(note_of(entries, new), d, entries)
    assert report.ok, report.problems
    report, _ = check(note_of(entries, old), d, entries)
    assert not report.ok and f"key {kid(old)} of {ORIGIN}, whose certificate" in report.problems[0]
    # A replaced key that was not revoked keeps signing acceptable checkpoints (the rotation rules).
    kept = directory(net, new, previous=[old])
    assert check(note_of(entries, old), kept, entries)[0].ok


def test_what_the_auditor_verified_before_the_revocation_stays_verified(net):
    old, new = net["node"], issue(net["ca"])
    first = log(4)
    report, state = check(note_of(first, old), directory(net, old), first)
    assert report.ok and state is not None
    # Then the old key is revoked; the node signs with its new key from then on.
    d = directory(net, new, previous=[old], crls=[revoked_key(net, old, dt.datetime.now(UTC) - dt.timedelta(seconds=5))])
    grown = log(9)
    report, state2 = check(note_of(grown, new), d, grown, state)
    assert report.ok, report.problems
    assert report.previous_size == 4 and state2.size == 9
    # The entries verified under the old checkpoint are the same ones (the saved leaf hashes).
    assert state2.leaf_hashes[:4] == state.leaf_hashes


def test_a_revoked_issuing_ca_makes_its_keys_checkpoints_count_only_when_cosigned_before(net):
    root = net["root"]
    ca = root.certify_ca("chengdu", not_before=SINCE)
    node = issue(ca)
    entries = log(3)
    note = note_of(entries, node)
    revoked_at = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=2)
    crl = revoke(root.cert, root.key, None, [ca.cert.serial_number], "ca_compromise", now=revoked_at)
    body = directory_pb2.DirectoryBody(
        version=1, issued_at_ms=int(dt.datetime.now(UTC).timestamp() * 1000), registry_id="national",
        nodes=[directory_pb2.NodeEntry(node_id=NODE, endpoint="127.0.0.1:1", signing_cert=node.signing_cert_der)],
        authorities=[der(ca.cert)], revocation_lists=[der(crl)])
    d = Directory.verify(sign(net["registry"], body), TrustAnchor(root.cert))
    report, _ = check(note, d, entries)
    assert not report.ok
    assert re.search(rf"key {kid(node)} of {ORIGIN}, whose issuing CA's certificate \(serial {ca.cert.serial_number:x}\) "
                     rf"was revoked at {revoked_at:%Y-%m-%d %H:%M:%S} UTC \(ca_compromise\)", report.problems[0])
    assert check(cosigned(note, net, revoked_at - dt.timedelta(minutes=1)), d, entries)[0].ok


def test_an_expired_key_signs_only_checkpoints_cosigned_while_it_was_valid(net):
    now = dt.datetime.now(UTC)
    expired = issue(net["ca"], not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    entries = log(2)
    note = note_of(entries, expired)
    d = directory(net, expired)
    report, _ = check(note, d, entries)
    assert not report.ok and "whose certificate is not in force" in report.problems[0]
    assert "outside its validity" in report.problems[0]
    assert check(cosigned(note, net, now - dt.timedelta(days=3)), d, entries)[0].ok
    # An archive checked as of its directory's time, while the key was valid, still verifies.
    archived = directory(net, expired, at=now - dt.timedelta(days=2))
    assert check(note, archived, entries)[0].ok


def test_verify_fetched_takes_the_witness_date_from_the_cosigned_copy_of_the_same_checkpoint(net):
    entries = log(5)
    note = note_of(entries, net["node"])
    revoked_at = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    d = directory(net, net["node"], crls=[revoked_key(net, net["node"], revoked_at)])

    def fetched(cosigned_note: str):
        response = audit_pb2.GetCheckpointResponse(checkpoint=note, cosigned_checkpoint=cosigned_note)
        return asyncio.run(verify_fetched(None, response, d, entries, None))

    report, state = fetched(cosigned(note, net, revoked_at - dt.timedelta(minutes=1)))
    assert report.ok, report.problems
    assert state is not None
    report, state = fetched("")
    assert not report.ok and state is None and "was revoked at" in report.problems[0]
    # A cosigned copy of a smaller tree does not date the larger one.
    smaller = cosigned(note_of(entries[:3], net["node"]), net, revoked_at - dt.timedelta(minutes=1))
    report, _ = fetched(smaller)
    assert not report.ok and "was revoked at" in report.problems[0]


def test_an_enterprise_s_access_list_with_a_checkpoint_by_a_revoked_key_is_refused(net):
    entries = log(2)
    note = note_of(entries, net["node"])
    revoked_at = dt.datetime.now(UTC) - dt.timedelta(hours=1)
    accesses = access_pb2.NodeAccesses(node_id=NODE, checkpoint=note)
    assert verify_node_accesses(accesses, directory(net, net["node"]), "91510100MA61234567") == []
    d = directory(net, net["node"], crls=[revoked_key(net, net["node"], revoked_at)])
    with pytest.raises(AccessProofError, match=rf"node {NODE}'s checkpoint does not verify: checkpoint signed by key "
                                               rf"{kid(net['node'])} of {ORIGIN}, whose certificate .* was revoked"):
        verify_node_accesses(accesses, d, "91510100MA61234567")


def test_a_cosignature_by_a_revoked_witness_key_dates_nothing(net):
    """A cosignature's time is the witness key's own word: once that key is revoked (it may have
    leaked, as the node's did), whoever holds it can date a cosignature before any revocation.
    Checked at the cosignature's own date, a revoked witness key still dated a checkpoint signed
    with a revoked node key; only a witness key not revoked now dates anything."""
    root = net["root"]
    old_witness = root.issue(Principal(Role.REGISTRY, "national"), not_before=SINCE)
    new_witness = root.issue(Principal(Role.REGISTRY, "national"), not_before=SINCE)
    node = issue(net["ca"])
    entries = log(4)
    note = note_of(entries, node)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    node_revoked_at, witness_revoked_at = now - dt.timedelta(hours=1), now - dt.timedelta(hours=2)
    crls = [revoked_key(net, node, node_revoked_at),
            revoke(root.cert, root.key, None, [old_witness.signing_cert.serial_number], "key_compromise",
                   now=witness_revoked_at)]

    def directory_signed_by_the_new_witness(crls) -> Directory:
        body = directory_pb2.DirectoryBody(
            version=1, issued_at_ms=int(now.timestamp() * 1000), registry_id="national",
            nodes=[directory_pb2.NodeEntry(node_id=NODE, endpoint="127.0.0.1:1", signing_cert=node.signing_cert_der)],
            authorities=[der(net["ca"].cert)], revocation_lists=[der(c) for c in crls],
            registry_keys=[directory_pb2.KeyPeriod(signing_cert=old_witness.signing_cert_der, valid_from_ms=1,
                                                   valid_until_ms=int(witness_revoked_at.timestamp() * 1000))])
        return Directory.verify(sign(new_witness, body), TrustAnchor(root.cert))

    backdated = add_cosignature(note, WITNESS, old_witness.signing_key, int((now - dt.timedelta(days=3)).timestamp()))
    d = directory_signed_by_the_new_witness(crls)
    report, _ = check(backdated, d, entries)
    assert not report.ok and "(it carries no valid witness cosignature)" in report.problems[0]
    # The same cosignature by the old witness key while it is not revoked dates the checkpoint
    # (a key rotation replaced it; it was not revoked).
    assert check(backdated, directory_signed_by_the_new_witness(crls[:1]), entries)[0].ok
    # And a cosignature by the witness key in force, dated before the revocation, still counts.
    genuine = add_cosignature(note, WITNESS, new_witness.signing_key, int((now - dt.timedelta(days=3)).timestamp()))
    assert check(genuine, d, entries)[0].ok
    # The registry's own log needs only the one leaked key: its checkpoint signed by the revoked
    # registry key and cosigned by the same key, backdated, must not count either.
    own = sign_note(Checkpoint(WITNESS, 1, merkle.leaf_hash(b"x")), WITNESS, old_witness.signing_key)
    own = add_cosignature(own, WITNESS, old_witness.signing_key, int((now - dt.timedelta(days=3)).timestamp()))
    with pytest.raises(NoteError, match=r"was revoked at .* \(it carries no valid witness cosignature\)"):
        verify_checkpoint(own, WITNESS, log_key(d, WITNESS))


class ServedLog:
    """What an auditor asks a log server for besides entries: consistency proofs of its tree
    (`lying`: proofs of another tree, as a server that rewrote its history would give)."""

    def __init__(self, entries, *, lying: bool = False) -> None:
        leaves = [merkle.leaf_hash(leaf + (b"!" if lying else b"")) for _, leaf in entries]
        self.tree = merkle.MerkleTree(leaves)
        self.asked: list[tuple[int, int]] = []

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        self.asked.append((first, second))
        return self.tree.consistency_proof(first, second)


def remembered_verify(entries, note: str, served: Directory, state):
    response = audit_pb2.GetCheckpointResponse(checkpoint=note)
    return asyncio.run(verify_and_remember(ServedLog(entries), response, served, entries, state))


def remembered(state) -> list[int]:
    """The CRL numbers of the revocation lists the auditor keeps beside its state of the log."""
    from cryptography import x509

    from xinyi.crypto.revocation import crl_number

    data = json.loads(revocations_file(state).read_text())
    return sorted(crl_number(x509.load_der_x509_crl(base64.b64decode(d))) for d in data["revocation_lists"])


def test_a_server_holding_a_revoked_key_cannot_make_the_auditor_forget_the_revocation(net, tmp_path):
    """The node's first key leaked and was revoked; the node went on with a new one. Whoever holds
    the old key copies the log, extends it and signs it, and serves the directory of before the
    revocation (registry-signed and valid, but old). An auditor who verified the log before with
    the newer directory still holds its revocation list: refused as signed by a revoked key. Not
    even a directory of another registry in between makes it forget."""
    leaked, current_key = issue(net["ca"]), issue(net["ca"])
    revoked_at = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    current = directory(net, current_key, previous=[leaked], crls=[revoked_key(net, leaked, revoked_at)], version=2)
    state = tmp_path / "xinyi_510100.json"
    honest = log(5)
    report = remembered_verify(honest, note_of(honest, current_key), current, state)
    assert report.ok, report.problems
    assert remembered(state) == [1]

    # The honest log replayed with the directory of another registry, without the list.
    other = net["root"].issue(Principal(Role.REGISTRY, "successor"), not_before=SINCE)
    body = directory_pb2.DirectoryBody.FromString(directory(net, current_key, version=7).envelope.body)
    body.registry_id = "successor"
    successor = Directory.verify(sign(other, body), TrustAnchor(net["root"].cert))
    assert remembered_verify(honest, note_of(honest, current_key), successor, state).ok
    assert remembered(state) == [1]

    grown = log(8)  # the same five entries, three more
    forged = note_of(grown, leaked)
    assert check(forged, directory(net, leaked, version=1), grown)[0].ok  # what an auditor without that memory accepts
    report = remembered_verify(grown, forged, directory(net, leaked, version=1), state)
    assert not report.ok
    assert f"was revoked at {revoked_at:%Y-%m-%d %H:%M:%S} UTC (key_compromise)" in report.problems[0], report.problems
    assert remembered(state) == [1]


def test_an_auditor_keeps_the_newest_revocation_lists_and_only_after_a_verification_that_held(net, tmp_path):
    state = tmp_path / "xinyi_510100.json"
    entries = log(3)
    note = note_of(entries, net["node"])
    # A failed verification remembers nothing.
    assert not remembered_verify(entries, note, directory(net, issue(net["ca"])), state).ok
    assert not revocations_file(state).exists() and not state.exists()
    unrelated = issue(net["ca"])
    first = revoke(net["ca"].cert, net["ca"].key, None, [unrelated.signing_cert.serial_number], "superseded")
    assert remembered_verify(entries, note, directory(net, net["node"], crls=[first]), state).ok
    assert remembered(state) == [1]
    second = revoke(net["ca"].cert, net["ca"].key, first, [unrelated.tls_cert.serial_number], "superseded")
    assert remembered_verify(entries, note, directory(net, net["node"], crls=[second]), state).ok
    assert remembered(state) == [2]
    # The older list served again does not replace the newer one.
    assert remembered_verify(entries, note, directory(net, net["node"], crls=[first]), state).ok
    assert remembered(state) == [2]
    # A file that does not parse is left aside, and written anew.
    revocations_file(state).write_text("{not json")
    assert remembered_verify(entries, note, directory(net, net["node"], crls=[first]), state).ok
    assert remembered(state) == [1]


def test_a_tampered_revocations_file_adds_nothing_false(net, tmp_path):
    """A list revoking the node's key, signed by a CA the root never certified, put in the file:
    the anchor refuses it, and the log verifies."""
    state = tmp_path / "xinyi_510100.json"
    entries = log(3)
    rogue_root = RootCA.create(not_before=SINCE)
    rogue = rogue_root.certify_ca("sichuan", not_before=SINCE)  # the same name, another key
    forged = revoke(rogue.cert, rogue.key, None, [net["node"].signing_cert.serial_number], "key_compromise")
    der = lambda x: base64.b64encode(x.public_bytes(serialization.Encoding.DER)).decode()  # noqa: E731
    revocations_file(state).write_text(json.dumps({"authorities": [der(rogue.cert)], "revocation_lists": [der(forged)]}))
    report = remembered_verify(entries, note_of(entries, net["node"]), directory(net, net["node"]), state)
    assert report.ok, report.problems
    assert remembered(state) == []


def test_a_revocations_file_cannot_swap_a_ca_or_break_the_check_with_a_malformed_list(tmp_path):
    """The root certified "sichuan" twice and revoked the first; the node's key is from the second.
    A file naming the first CA (an auditor's own from before, or edited) does not replace the CA the
    served directory publishes, and a list whose extensions only fail when read is left out: the
    honest log verifies either way."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    root = RootCA.create(not_before=SINCE)
    old, new = root.certify_ca("sichuan", not_before=SINCE), root.certify_ca("sichuan", not_before=SINCE)
    registry = root.issue(Principal(Role.REGISTRY, "national"), not_before=SINCE)
    node = issue(new)
    root_list = revoke(root.cert, root.key, None, [old.cert.serial_number], "ca_compromise",
                       now=dt.datetime.now(UTC) - dt.timedelta(days=1))

    def served() -> Directory:
        body = directory_pb2.DirectoryBody(
            version=2, issued_at_ms=1, registry_id="national",
            nodes=[directory_pb2.NodeEntry(node_id=NODE, endpoint="127.0.0.1:1", signing_cert=node.signing_cert_der)],
            authorities=[der(new.cert)], revocation_lists=[der(root_list)])
        return Directory.verify(sign(registry, body), TrustAnchor(root.cert))

    # A list with its CRL-number extension twice: it loads, and fails only when read.
    now = dt.datetime.now(UTC)
    raw = der(x509.CertificateRevocationListBuilder().issuer_name(new.cert.subject).last_update(now)
              .next_update(now + dt.timedelta(days=1)).add_extension(x509.CRLNumber(5), False)
              .add_extension(x509.DeltaCRLIndicator(6), True).sign(ec.generate_private_key(ec.SECP256R1()),
                                                                   hashes.SHA256()))
    malformed = raw.replace(bytes.fromhex("0603551d1b"), bytes.fromhex("0603551d14"))  # deltaCRLIndicator -> cRLNumber
    x509.load_der_x509_crl(malformed)
    state, entries = tmp_path / "xinyi_510100.json", log(3)
    b = lambda x: base64.b64encode(x).decode()  # noqa: E731
    revocations_file(state).write_text(json.dumps({"authorities": [b(der(old.cert))],
                                                   "revocation_lists": [b(malformed)]}))
    report = remembered_verify(entries, note_of(entries, node), served(), state)
    assert report.ok, report.problems
    assert remembered(state) == [1]  # the root's list, from the served directory; nothing of the file's


def fetched(net, entries, cosigned_note: str, previous=None, served: ServedLog | None = None):
    note = note_of(entries, net["node"])
    response = audit_pb2.GetCheckpointResponse(checkpoint=note, cosigned_checkpoint=cosigned_note)
    return asyncio.run(verify_fetched(served or ServedLog(entries), response, directory(net, net["node"]), entries,
                                      previous))


@pytest.mark.parametrize("size", [3, 5])
def test_a_cosigned_checkpoint_the_entries_do_not_give_is_a_split_view_named_at_its_last_entry(net, size):
    entries = log(5)
    other = [(i, leaf + b"!") for i, leaf in entries[:size]]  # another history the log signed, and had cosigned
    report, state = fetched(net, entries, cosigned(note_of(other, net["node"]), net, dt.datetime.now(UTC)))
    assert report.problems == [f"the witness cosigned size {size} with a root these entries do not give: split view"]
    assert report.first_bad_index == size - 1
    assert state is None  # nothing to remember: the next verification must not build on it


def test_a_cosigned_checkpoint_larger_than_the_entries_is_not_held_against_them(net):
    entries = log(5)
    report, _ = fetched(net, entries, cosigned(note_of(log(7), net["node"]), net, dt.datetime.now(UTC)))
    assert report.ok, report.problems


@pytest.mark.parametrize("cosigned_note", ["not a signed note", "cosigned by the node"])
def test_a_cosigned_copy_that_does_not_verify_is_reported_not_raised(net, cosigned_note):
    entries = log(5)
    note = note_of(entries, net["node"])
    if cosigned_note == "cosigned by the node":  # under the witness's name, with a key that is not the registry's
        cosigned_note = add_cosignature(note, WITNESS, net["node"].signing_key, int(dt.datetime.now(UTC).timestamp()))
    report, state = fetched(net, entries, cosigned_note)
    assert len(report.problems) == 1 and report.problems[0].startswith("cosigned checkpoint: "), report.problems
    assert state is None


def test_the_log_must_prove_it_extends_what_the_auditor_verified_and_is_asked_only_when_it_grew(net):
    entries = log(5)
    _, before = fetched(net, entries[:3], "")
    assert before is not None and before.size == 3
    report, state = fetched(net, entries, "", before, ServedLog(entries, lying=True))
    assert report.problems == ["the log's consistency proof from 3 to 5 does not verify"] and state is None
    served = ServedLog(entries)
    report, state = fetched(net, entries, "", before, served)
    assert report.ok and state.size == 5 and served.asked == [(3, 5)]
    served = ServedLog(entries)
    report, again = fetched(net, entries, "", state, served)
    assert report.ok and again.size == 5 and served.asked == []  # nothing grew: nothing to prove
