"""verify_log, the auditor's check of a log, in-process over real logs.

The logs are written by the node's own AuditLog over a NodeStore on SQLite and signed with a
node certificate the root issued; the tests then serve their stored entries (whole, edited,
removed, moved, cut short, past an older checkpoint, rewritten and re-signed by the operator)
and check the exact finding: the first bad index and the message naming it. Milliseconds a
test, so that scripts/mutate.py runs them once per mutant of xinyi/audit/verify.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.store import NodeStore
from xinyi.audit import merkle
from xinyi.audit.checkpoint import Checkpoint, sign_note, verify_note
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.audit.verify import AuditorState, verify_log
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, RootCA
from xinyi.v1 import audit_pb2

ORIGIN = "xinyi/510100"
BANK = "91510100MA0000000B"
FIRM = "91510100MA61000000"


def entry(i: int) -> AuditEntry:
    return AuditEntry(at_ms=1_700_000_000_000 + i, caller_role="bank", caller_id=BANK, action="query",
                      decision="allow", uscc=FIRM, categories=("tax",), request_hash=f"{i:064x}")


@dataclass
class Log:
    entries: list[tuple[int, bytes]]  # (index, leaf_input) as the store serves them
    notes: dict[int, str]  # the checkpoint the log signed at each size

    def checkpoint(self, size: int) -> Checkpoint:
        return Checkpoint.parse(self.notes[size].split("\n\n")[0] + "\n")

    def leaves(self, size: int) -> list[bytes]:
        return [merkle.leaf_hash(leaf_input) for _, leaf_input in self.entries[:size]]


async def _write(path: Path, identity: Identity, items: list[AuditEntry]) -> Log:
    store = NodeStore(f"sqlite:///{path}")
    store.create_schema()
    log = AuditLog(store, identity, now_ms)
    await log.open()
    notes = {0: log.latest.note}
    for i, item in enumerate(items):
        assert await log.append(item) == i
        notes[i + 1] = log.latest.note  # one commit per append: the log signs every size
    await log.close()
    rows = store.audit_entries(0, len(items))
    store.close()
    return Log([(row.index, row.leaf_input) for row in rows], notes)


@dataclass
class Logs:
    identity: Identity
    real: Log  # 7 entries
    rewritten: Log  # the same key's log with the same first 3 entries, then 5 others (8 entries)

    @property
    def key(self):
        return self.identity.signing_key.public_key()


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Logs:
    root = RootCA.create()
    identity = root.issue(Principal(Role.NODE, "510100"))
    where = tmp_path_factory.mktemp("logs")
    real = asyncio.run(_write(where / "real.db", identity, [entry(i) for i in range(7)]))
    rewritten = asyncio.run(_write(where / "rewritten.db", identity,
                                   [entry(i) for i in range(3)] + [entry(100 + i) for i in range(5)]))
    assert real.entries[:3] == rewritten.entries[:3] and real.entries[3] != rewritten.entries[3]
    return Logs(identity, real, rewritten)


def edited(entries: list[tuple[int, bytes]], index: int, **fields) -> list[tuple[int, bytes]]:
    """The entries with one record's fields changed (re-encoded as the log encodes them)."""
    record = audit_pb2.AuditRecord.FromString(entries[index][1])
    for name, value in fields.items():
        setattr(record, name, value)
    out = list(entries)
    out[index] = (index, record.SerializeToString(deterministic=True))
    assert out[index] != entries[index]
    return out


def state_of(logs: Logs, size: int, *, leaves: bool = True) -> AuditorState:
    """What an auditor remembers after verifying the real log at `size` (its leaf hashes
    optional: a state saved by an older auditor, or whose .leaves file was lost, has none)."""
    report, state = verify_log(logs.real.notes[size], ORIGIN, logs.key, logs.real.entries)
    assert report.ok and state is not None and state.size == size
    if not leaves:
        state.leaf_hashes = []
    return state


# --- a log that verifies -----------------------------------------------------------------------
def test_a_whole_log_verifies_and_the_state_to_remember_is_its_signed_checkpoint(logs):
    note = logs.real.notes[7]
    report, state = verify_log(note, ORIGIN, logs.key, logs.real.entries)
    cp = verify_note(note, ORIGIN, logs.key)
    assert cp.size == 7 and cp.root == merkle.root_of(logs.real.leaves(7))
    assert report.ok and report.problems == [] and report.first_bad_index is None
    assert (report.size, report.root, report.entries_checked, report.previous_size) == (7, cp.root, 7, None)
    assert state == AuditorState(ORIGIN, 7, cp.root, note, logs.real.leaves(7))


def test_the_log_key_may_be_one_of_several_and_an_empty_log_verifies(logs):
    other = RootCA.create().issue(Principal(Role.NODE, "510100")).signing_key.public_key()
    report, state = verify_log(logs.real.notes[7], ORIGIN, [other, logs.key], logs.real.entries)
    assert report.ok and state.size == 7
    report, state = verify_log(logs.real.notes[0], ORIGIN, logs.key, [])
    assert report.ok and (report.size, report.entries_checked) == (0, 0)
    assert state == AuditorState(ORIGIN, 0, merkle.root_of([]), logs.real.notes[0], [])


def test_entries_past_the_checkpoint_are_neither_checked_nor_read(logs):
    """The log grew after the checkpoint it served: the entries past it are not the checkpoint's
    business, and an auditor reading the log as it streams stops at the checkpoint's size."""
    read = []

    def served():
        for item in logs.real.entries[:5]:
            read.append(item[0])
            yield item
        raise AssertionError("verify_log read past the entry after the checkpoint's last")

    report, state = verify_log(logs.real.notes[4], ORIGIN, logs.key, served())
    assert report.ok, report.problems
    assert (report.size, report.entries_checked, read) == (4, 4, [0, 1, 2, 3, 4])
    assert state == AuditorState(ORIGIN, 4, logs.real.checkpoint(4).root, logs.real.notes[4], logs.real.leaves(4))


# --- a checkpoint that does not verify ---------------------------------------------------------
def test_a_checkpoint_signed_by_another_key_is_refused_before_any_entry_is_read(logs):
    stranger = RootCA.create().issue(Principal(Role.NODE, "510100")).signing_key
    note = sign_note(logs.real.checkpoint(7), ORIGIN, stranger)

    def served():
        raise AssertionError("entries read although the checkpoint did not verify")
        yield

    report, state = verify_log(note, ORIGIN, logs.key, served())
    assert state is None and not report.ok and len(report.problems) == 1
    assert report.problems[0].startswith("checkpoint: ")
    assert (report.size, report.root, report.entries_checked, report.first_bad_index) == (0, b"", 0, None)


def test_a_checkpoint_of_another_log_signed_under_this_logs_name_is_refused(logs):
    cp = logs.real.checkpoint(7)
    note = sign_note(Checkpoint("xinyi/510000", cp.size, cp.root), ORIGIN, logs.identity.signing_key)
    report, state = verify_log(note, ORIGIN, logs.key, logs.real.entries)
    assert state is None
    assert report.problems == ["checkpoint: checkpoint is of log 'xinyi/510000', not 'xinyi/510100'"]
    assert (report.size, report.entries_checked, report.first_bad_index) == (0, 0, None)


def test_a_checkpoint_signing_another_root_for_the_same_entries_names_the_last_entry(logs):
    note = sign_note(Checkpoint(ORIGIN, 7, bytes(32)), ORIGIN, logs.identity.signing_key)
    report, state = verify_log(note, ORIGIN, logs.key, logs.real.entries)
    assert state is None and (report.size, report.root) == (7, bytes(32))
    assert report.problems == ["entry 6: the entries do not hash to the signed root; the last entry was altered "
                               "or the log was rewritten"]
    assert (report.first_bad_index, report.entries_checked) == (6, 7)


def test_a_checkpoint_signing_a_size_its_root_is_not_of_names_its_last_entry(logs):
    # The root of 7 entries signed as the root of 6: entries 0..5 chain, their root is another one.
    note = sign_note(Checkpoint(ORIGIN, 6, logs.real.checkpoint(7).root), ORIGIN, logs.identity.signing_key)
    report, state = verify_log(note, ORIGIN, logs.key, logs.real.entries)
    assert state is None
    assert report.problems == ["entry 5: the entries do not hash to the signed root; the last entry was altered "
                               "or the log was rewritten"]
    assert (report.first_bad_index, report.entries_checked) == (5, 6)


# --- entries edited, removed, moved, missing ---------------------------------------------------
@pytest.mark.parametrize("index", [0, 3, 5])
def test_an_edited_entry_is_named_by_the_chain_of_the_entry_after_it(logs, index):
    entries = edited(logs.real.entries, index, request_hash="f" * 64)
    report, state = verify_log(logs.real.notes[7], ORIGIN, logs.key, entries)
    assert state is None
    assert report.problems == [f"entry {index}: altered (entry {index + 1} chains to another history)"]
    assert (report.first_bad_index, report.entries_checked, report.size) == (index, index + 1, 7)


def test_an_entry_chained_to_another_history_names_the_entry_before_it(logs):
    entries = edited(logs.real.entries, 4, prev_root=bytes(32))
    report, state = verify_log(logs.real.notes[7], ORIGIN, logs.key, entries)
    assert state is None and report.problems == ["entry 3: altered (entry 4 chains to another history)"]
    assert (report.first_bad_index, report.entries_checked) == (3, 4)


def test_a_first_entry_chained_to_another_history_is_named_itself(logs):
    """No entry before it to blame: entry 0 must chain to the empty log."""
    entries = edited(logs.real.entries, 0, prev_root=bytes(32))
    report, state = verify_log(logs.real.notes[7], ORIGIN, logs.key, entries)
    assert state is None and report.problems == ["entry 0: altered (it does not chain to the empty log)"]
    assert (report.first_bad_index, report.entries_checked) == (0, 0)


def test_the_last_signed_entry_edited_is_caught_by_the_signed_root(logs):
    entries = edited(logs.real.entries, 6, reason="edited")
    report, state = verify_log(logs.real.notes[7], ORIGIN, logs.key, entries)
    assert state is None
    assert report.problems == ["entry 6: the entries do not hash to the signed root; the last entry was altered "
                               "or the log was rewritten"]
    assert (report.first_bad_index, report.entries_checked) == (6, 7)


def test_the_last_entry_of_an_older_checkpoint_edited_is_caught_though_later_entries_are_served(logs):
    """The issue's case: the entry edited is the last one the checkpoint signs, while the log
    serves more after it (whose chain would name it, were they read)."""
    entries = edited(logs.real.entries, 3, caller_id="91510100MA0000000X")
    report, state = verify_log(logs.real.notes[4], ORIGIN, logs.key, entries)
    assert state is None
    assert report.problems == ["entry 3: the entries do not hash to the signed root; the last entry was altered "
                               "or the log was rewritten"]
    assert (report.first_bad_index, report.entries_checked, report.size) == (3, 4, 4)


def test_a_removed_entry_is_named_where_the_next_one_is_served_in_its_place(logs):
    entries = logs.real.entries[:2] + logs.real.entries[3:]
    report, state = verify_log(logs.real.notes[7], ORIGIN, logs.key, entries)
    assert state is None
    assert report.problems == ["entry 2: the log served index 3 in its place; an entry was removed or moved"]
    assert (report.first_bad_index, report.entries_checked) == (2, 2)


def test_an_entry_served_under_another_index_is_named_by_the_record_it_holds(logs):
    entries = list(logs.real.entries)
    entries[2], entries[3] = (2, entries[3][1]), (3, entries[2][1])  # records swapped, indexes kept
    report, state = verify_log(logs.real.notes[7], ORIGIN, logs.key, entries)
    assert state is None
    assert report.problems == ["entry 2: holds the record of entry 3; an entry was removed or moved"]
    assert (report.first_bad_index, report.entries_checked) == (2, 2)


def test_an_entry_that_is_not_an_audit_record_is_named(logs):
    entries = list(logs.real.entries)
    entries[1] = (1, b"\xff\xff\xff")
    report, state = verify_log(logs.real.notes[7], ORIGIN, logs.key, entries)
    assert state is None and report.problems == ["entry 1: not a valid audit record"]
    assert (report.first_bad_index, report.entries_checked) == (1, 1)


@pytest.mark.parametrize("served", [0, 5])
def test_entries_the_checkpoint_signs_but_the_log_did_not_serve_are_named_missing(logs, served):
    report, state = verify_log(logs.real.notes[7], ORIGIN, logs.key, logs.real.entries[:served])
    assert state is None
    assert report.problems == [f"entry {served}: missing; the checkpoint signs 7 entries but only {served} were served"]
    assert (report.first_bad_index, report.entries_checked) == (served, served)


# --- against what this auditor verified before ---------------------------------------------------
@pytest.mark.parametrize("before", [0, 4, 7])
@pytest.mark.parametrize("leaves", [True, False])
def test_a_log_that_extends_what_this_auditor_verified_verifies(logs, before, leaves):
    previous = state_of(logs, before, leaves=leaves)
    report, state = verify_log(logs.real.notes[7], ORIGIN, logs.key, logs.real.entries, previous)
    assert report.ok, report.problems
    assert (report.previous_size, report.entries_checked, report.first_bad_index) == (before, 7, None)
    assert state == AuditorState(ORIGIN, 7, logs.real.checkpoint(7).root, logs.real.notes[7], logs.real.leaves(7))


def test_a_log_shorter_than_what_this_auditor_verified_is_truncated(logs):
    report, state = verify_log(logs.real.notes[4], ORIGIN, logs.key, logs.real.entries, state_of(logs, 7))
    assert state is None
    assert report.problems == ["log truncated: the checkpoint signs 4 entries, this auditor verified 7 before"]
    assert (report.first_bad_index, report.previous_size, report.entries_checked) == (4, 7, 4)


def test_a_rewritten_log_is_named_at_the_first_entry_that_differs_from_what_this_auditor_verified(logs):
    """The operator rewrote entries 3 on and re-signed: the chain and the signed root hold, the
    leaf hashes this auditor kept do not."""
    report, state = verify_log(logs.rewritten.notes[8], ORIGIN, logs.key, logs.rewritten.entries, state_of(logs, 7))
    assert state is None
    assert report.problems == ["entry 3: differs from what this auditor verified before"]
    assert (report.first_bad_index, report.entries_checked, report.previous_size) == (3, 3, 7)


@pytest.mark.parametrize("after", [7, 8])
def test_a_rewritten_log_is_caught_by_the_root_this_auditor_verified_when_it_kept_no_leaves(logs, after):
    previous = state_of(logs, 7, leaves=False)
    report, state = verify_log(logs.rewritten.notes[after], ORIGIN, logs.key, logs.rewritten.entries, previous)
    assert state is None
    assert report.problems == ["history rewritten: the first 7 entries no longer hash to the root this auditor "
                               "verified"]
    assert (report.first_bad_index, report.entries_checked, report.previous_size) == (0, after, 7)


@pytest.mark.parametrize("leaves", [True, False])
def test_a_log_rewritten_only_past_what_this_auditor_verified_extends_it(logs, leaves):
    # Entries 0..2 are the same in both: an auditor that saw 3 cannot tell, and must not refuse.
    previous = state_of(logs, 3, leaves=leaves)
    report, state = verify_log(logs.rewritten.notes[8], ORIGIN, logs.key, logs.rewritten.entries, previous)
    assert report.ok, report.problems
    assert state.size == 8 and state.leaf_hashes == logs.rewritten.leaves(8)


def test_an_edited_entry_is_named_once_even_when_this_auditor_verified_the_log_before(logs):
    entries = edited(logs.real.entries, 2, purpose="marketing")
    report, state = verify_log(logs.real.notes[7], ORIGIN, logs.key, entries, state_of(logs, 7))
    assert state is None
    assert report.problems == ["entry 2: differs from what this auditor verified before"]
    assert (report.first_bad_index, report.entries_checked, report.previous_size) == (2, 2, 7)
    report, _ = verify_log(logs.real.notes[7], ORIGIN, logs.key, entries, state_of(logs, 7, leaves=False))
    assert report.problems == ["entry 2: altered (entry 3 chains to another history)"]
