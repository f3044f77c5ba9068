"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and proof verification.

This is the tamper-evidence core of the audit logs: every audit entry is a leaf, a log
periodically publishes the root of the tree (see xinyi.audit.checkpoint), and anyone holding two
published roots can demand a consistency proof that the later tree extends the earlier one,
and anyone holding an entry can demand an inclusion proof that it is under a published root.

Hashing (RFC 9162 §2.1.1, identical to RFC 6962 §2.1), SHA-256 throughout:

    EMPTY_ROOT      = SHA-256("")                      the root of the empty tree
    leaf_hash(d)    = SHA-256(0x00 || d)
    node_hash(l, r) = SHA-256(0x01 || l || r)
    MTH(D[n])       = node_hash(MTH(D[0:k]), MTH(D[k:n]))  for n > 1, k the largest power
                      of two strictly smaller than n

Contents:

- `MerkleTree`: append-only, answers roots and proofs for ANY past size; in memory, or (given
  where its leaves are stored) holding in memory only what a log's growth does not inflate.
- `RootTracker`: only the O(log n) right edge; the current root after each append.
- `root_of`: the plain recursive MTH definition, for tests and small offline checks.
- `verify_inclusion`, `verify_consistency`, `root_from_inclusion_proof`: the RFC 9162
  §2.1.3.2 and §2.1.4.2 verification algorithms, step by step.

Argument conventions: a call that cannot make sense (index >= size, first > second, a
negative size, a size beyond the tree) raises ValueError naming the argument; a proof that
simply does not verify makes the verify functions return False, never raise. Proof hashes
are `bytes` of 32; proofs are lists ordered from the leaf (or the first tree) upwards,
exactly as RFC 9162 prints them.

Pure domain code: only hashlib; the one I/O is the caller's (MerkleTree's `stored_leaves`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable, Iterable, Sequence

HASH_SIZE = 32
# With stored leaves, a MerkleTree keeps the nodes below this height only for the unfinished
# block of 2^BLOCK_HEIGHT leaves: about 64 / 2^BLOCK_HEIGHT bytes a leaf in memory instead of 64
# (plus the hash->index dict), and a proof that reaches into a finished block reads that block's
# 256 leaf hashes (8 KiB) back.
BLOCK_HEIGHT = 8
_CACHED_BLOCKS = 32

EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256

__all__ = [
    "BLOCK_HEIGHT",
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "RootTracker",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry): the hash of one log entry as a tree leaf."""
    return _sha256(_LEAF_PREFIX + bytes(entry)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _largest_pow2_below(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    value = bytes(value)
    if len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")
    return value


def _check_int(value: object, what: str) -> int:
    # bool is an int subclass; True as a tree size is a bug, not a size.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value}")
    return value


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes, straight from the RFC 6962 §2.1 definition.

    Recursive and O(n) in hashing; meant for tests and for checking small logs offline.
    """
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return bytes(leaf_hashes[0])
    k = _largest_pow2_below(n)
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


class MerkleTree:
    """An append-only Merkle tree over leaf hashes that can answer for any past size.

    Storage: every complete perfect subtree hash, level by level. `_levels[h]` is one
    bytearray of 32-byte slots; slot i of level h is MTH(D[i*2^h : (i+1)*2^h]). Level 0 holds
    the leaf hashes; appending a leaf appends the parents it completes. A tree of n leaves
    holds fewer than 2n hashes, so about 64 bytes a leaf (64 MB at 10^6 leaves) plus, with
    the default `track_index=True`, the hash->index dict.

    Every range the RFC 9162 algorithms need, MTH(D[a:b]), has `a` aligned to the largest
    power of two <= b-a, so it decomposes into the perfect aligned blocks given by the binary
    expansion of b-a (largest first), all already stored; folding those from the right gives
    the range hash with popcount(b-a)-1 hash calls. Roots and proofs therefore cost O(log n)
    stored-hash reads plus at most O(log^2 n) hashing on the right edge, never a rebuild.

    `track_index` (default True): keep a dict from leaf hash to its first index so
    `index_of` is O(1). In CPython the dict costs ~75 bytes a leaf when the caller keeps
    the leaf-hash bytes objects alive anyway (measured: +70 MiB at 10^6 leaves), and ~140
    bytes a leaf when the dict holds the only reference (the 32-byte key object adds ~65 B):
    one to two times the tree itself. With track_index=False, `index_of` falls back to a
    linear scan of the leaf level (bytearray.find; measured ~1.6 ms a lookup at 10^6).

    Not thread-safe for concurrent writers. `size` is published only after all levels are
    updated, so a reader asking about sizes <= a size it has already read sees complete data.
    """

    __slots__ = ("_levels", "_bases", "_size", "_index", "_stored_leaves", "_blocks", "_lock")

    def __init__(self, leaf_hashes: Iterable[bytes] = (), *, track_index: bool = True,
                 stored_leaves: Callable[[int, int], Sequence[bytes]] | None = None) -> None:
        """`stored_leaves(start, stop)`: the leaf hashes [start, stop) as durably stored (an
        audit log's store). Given, the tree forgets the lower levels of every finished block
        of 2^BLOCK_HEIGHT leaves and reads them back when a proof needs them: about a quarter
        of a byte a leaf in memory (250 KB at 10^6 leaves) instead of 64 bytes and the index.
        It keeps no hash->index dict then: a leaf's index is found where the leaves are stored."""
        self._levels: list[bytearray] = [bytearray()]
        # Slot i of level h is at offset (i - _bases[h]) * HASH_SIZE of _levels[h]: the slots
        # below _bases[h] were forgotten (stored_leaves only; else every base stays 0).
        self._bases: list[int] = [0]
        self._size = 0
        self._stored_leaves = stored_leaves
        self._index: dict[bytes, int] | None = {} if track_index and stored_leaves is None else None
        self._blocks: OrderedDict[int, list[bytearray]] = OrderedDict()  # finished blocks read back
        self._lock = threading.Lock()  # a proof in a thread reads a level while the writer trims it
        self.extend(leaf_hashes)

    # -- building -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def resident_bytes(self) -> int:
        """Bytes of node hashes held in memory (not counting finished blocks read back and cached)."""
        return sum(len(row) for row in self._levels)

    def append(self, leaf_hash: bytes) -> int:
        """Add one leaf hash (32 bytes, already leaf-hashed); return its index."""
        h = _check_hash(leaf_hash, "leaf_hash")
        index = self._size
        levels, bases = self._levels, self._bases
        levels[0] += h
        # Each trailing 1 bit of the new leaf's index is a perfect subtree it completes.
        i, level = index, 0
        while i & 1:
            row = levels[level]
            off = (i - 1 - bases[level]) * HASH_SIZE
            h = _sha256(_NODE_PREFIX + row[off:off + 2 * HASH_SIZE]).digest()
            level += 1
            if level == len(levels):
                levels.append(bytearray())
                bases.append(0)
            levels[level] += h
            i >>= 1
        if self._index is not None:
            self._index.setdefault(bytes(leaf_hash), index)
        self._size = index + 1
        self._forget_finished_blocks()
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> int:
        """Append many leaf hashes at once (level by level, faster than append in a loop).

        Returns the new size. All hashes are checked before anything is appended.
        """
        batch = [_check_hash(h, "leaf_hash") for h in leaf_hashes]
        if not batch:
            return self._size
        old = self._size
        new = old + len(batch)
        levels, bases = self._levels, self._bases
        levels[0] += b"".join(batch)
        level = 0
        # At level h, slots [old >> h, new >> h) are new; their parents are the new
        # pairs at level h+1: [old >> (h+1), new >> (h+1)).
        while (new >> (level + 1)) > (old >> (level + 1)):
            row = levels[level]
            if level + 1 == len(levels):
                levels.append(bytearray())
                bases.append(0)
            start, stop = old >> (level + 1), new >> (level + 1)
            step = 2 * HASH_SIZE
            first = bases[level] * HASH_SIZE  # an even slot: bases are multiples of a block's width
            parents = [
                _sha256(_NODE_PREFIX + row[off - first:off - first + step]).digest()
                for off in range(start * step, stop * step, step)
            ]
            levels[level + 1] += b"".join(parents)
            level += 1
        if self._index is not None:
            index = self._index
            for i, h in enumerate(batch, old):
                index.setdefault(h, i)
        self._size = new
        self._forget_finished_blocks()
        return new

    # -- reading --------------------------------------------------------------------------

    def leaf(self, index: int) -> bytes:
        """The leaf hash at `index`."""
        _check_int(index, "index")
        if index >= self._size:
            raise ValueError(f"index {index} is beyond the tree (size {self._size})")
        return self._node(0, index)

    def index_of(self, leaf_hash: bytes) -> int | None:
        """The first index holding `leaf_hash`, or None. O(1) with track_index, else O(n)."""
        h = _check_hash(leaf_hash, "leaf_hash")
        if self._index is not None:
            return self._index.get(h)
        if self._stored_leaves is not None:
            raise ValueError("a tree over stored leaves does not index them: look the hash up where they are stored")
        row = self._levels[0]
        pos = row.find(h)
        while pos != -1:
            if pos % HASH_SIZE == 0:
                return pos // HASH_SIZE
            pos = row.find(h, pos + 1)
        return None

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (default: all of them). EMPTY_ROOT for size 0."""
        size = self._size if size is None else self._check_size(size, "size")
        if size == 0:
            return EMPTY_ROOT
        return self._range_hash(0, size)

    def right_edge(self, size: int | None = None) -> list[bytes]:
        """The perfect subtree hashes of the binary decomposition of `size`, largest first.

        This is exactly the state a `RootTracker` keeps; `RootTracker(size, edge)` resumes.
        """
        size = self._size if size is None else self._check_size(size, "size")
        out, start = [], 0
        for height in range(size.bit_length() - 1, -1, -1):
            if size >> height & 1:
                out.append(self._node(height, start >> height))
                start += 1 << height
        return out

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 PATH(index, D[size]): sibling hashes from the leaf upwards."""
        size = self._size if size is None else self._check_size(size, "size")
        _check_int(index, "index")
        if index >= size:
            raise ValueError(f"index {index} must be smaller than size {size}")
        # Walk PATH's recursion top-down, remembering the sibling subtree at each split;
        # the proof lists them bottom-up.
        siblings: list[bytes] = []
        lo, hi, m = 0, size, index
        while hi - lo > 1:
            n = hi - lo
            if n & (n - 1) == 0:
                # A perfect aligned subtree: its remaining siblings are stored nodes.
                height = n.bit_length() - 1
                pos = lo + m
                for level in range(height - 1, -1, -1):
                    siblings.append(self._node(level, (pos >> level) ^ 1))
                break
            k = _largest_pow2_below(n)
            if m < k:
                siblings.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                siblings.append(self._range_hash(lo, lo + k))
                lo += k
                m -= k
        siblings.reverse()
        return siblings

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 PROOF(first, D[second]) = SUBPROOF(first, D[second], true).

        first == second gives the empty proof. first == 0 raises ValueError: RFC 9162
        defines consistency proofs for 0 < first only (every tree trivially extends the
        empty one; there is nothing to prove).
        """
        second = self._size if second is None else self._check_size(second, "second")
        _check_int(first, "first")
        if first > second:
            raise ValueError(f"first ({first}) must not exceed second ({second})")
        if first == 0:
            raise ValueError("first must be > 0: a consistency proof from the empty tree is meaningless")
        siblings: list[bytes] = []
        lo, hi, m, from_first = 0, second, first, True
        while True:
            n = hi - lo
            if m == n:
                # SUBPROOF's base case: the subtree D[lo:hi] is the old tree's own node;
                # the verifier knows it iff it is the whole old tree (from_first).
                head = [] if from_first else [self._range_hash(lo, hi)]
                break
            k = _largest_pow2_below(n)
            if m <= k:
                siblings.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                siblings.append(self._range_hash(lo, lo + k))
                lo += k
                m -= k
                from_first = False
        siblings.reverse()
        return head + siblings

    # -- internals ------------------------------------------------------------------------

    def _check_size(self, size: int, what: str) -> int:
        _check_int(size, what)
        if size > self._size:
            raise ValueError(f"{what} {size} is beyond the tree (size {self._size})")
        return size

    def _node(self, level: int, index: int) -> bytes:
        with self._lock:
            row, base = self._levels[level], self._bases[level]
        if index < base:  # forgotten: in a finished block, read back
            block = index << level >> BLOCK_HEIGHT
            row, base = self._finished_block(block)[level], block << (BLOCK_HEIGHT - level)
        off = (index - base) * HASH_SIZE
        return bytes(row[off:off + HASH_SIZE])

    def _forget_finished_blocks(self) -> None:
        """With stored leaves: drop the nodes below BLOCK_HEIGHT of every finished block."""
        if self._stored_leaves is None:
            return
        finished = self._size >> BLOCK_HEIGHT << BLOCK_HEIGHT  # leaves in finished blocks
        for level in range(min(BLOCK_HEIGHT, len(self._levels))):
            keep_from = finished >> level
            drop = keep_from - self._bases[level]
            if drop > 0:
                kept = self._levels[level][drop * HASH_SIZE:]  # a copy: a reader may hold the old row
                with self._lock:
                    self._levels[level], self._bases[level] = kept, keep_from

    def _finished_block(self, block: int) -> list[bytearray]:
        """Levels 0..BLOCK_HEIGHT-1 of a finished block, rebuilt from its stored leaf hashes."""
        with self._lock:
            levels = self._blocks.get(block)
            if levels is not None:
                self._blocks.move_to_end(block)
                return levels
        width = 1 << BLOCK_HEIGHT
        leaves = self._stored_leaves(block * width, (block + 1) * width)
        if len(leaves) != width:
            raise ValueError(f"the store returned {len(leaves)} leaf hashes for block {block}, not {width}")
        levels = [bytearray(b"".join(_check_hash(h, "stored leaf hash") for h in leaves))]
        for _ in range(BLOCK_HEIGHT - 1):
            row, step = levels[-1], 2 * HASH_SIZE
            levels.append(bytearray(b"".join(_sha256(_NODE_PREFIX + row[off:off + step]).digest()
                                              for off in range(0, len(row), step))))
        # The block's root must be the node the tree kept: stored leaves that were altered
        # since they were appended give no proof.
        row = levels[-1]
        top = _sha256(_NODE_PREFIX + row[:2 * HASH_SIZE]).digest()
        if top != self._node(BLOCK_HEIGHT, block):
            raise ValueError(f"the stored leaf hashes of block {block} do not hash to the tree's node: the store was altered")
        with self._lock:
            self._blocks[block] = levels
            while len(self._blocks) > _CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        return levels

    def _range_hash(self, start: int, stop: int) -> bytes:
        """MTH(D[start:stop]) for start aligned to the largest power of two <= stop-start."""
        n = stop - start
        blocks: list[bytes] = []
        pos = start
        for height in range(n.bit_length() - 1, -1, -1):
            if n >> height & 1:
                blocks.append(self._node(height, pos >> height))
                pos += 1 << height
        h = blocks.pop()
        while blocks:
            h = _sha256(_NODE_PREFIX + blocks.pop() + h).digest()
        return h


class RootTracker:
    """The current root of a growing log, keeping only the O(log n) right edge.

    The edge is the list of perfect subtree hashes of the binary decomposition of the size,
    largest (leftmost) first. `append` merges equal-height subtrees (amortised O(1) hashes)
    and `root` folds the edge from the right (popcount(size)-1 hashes), so each audit entry
    can embed the previous root cheaply. `RootTracker(size, edge)` resumes from a persisted
    state, e.g. `MerkleTree.right_edge()`; `edge` is validated only for shape.
    """

    __slots__ = ("_size", "_edge")

    def __init__(self, size: int = 0, edge: Sequence[bytes] = ()) -> None:
        _check_int(size, "size")
        edge = [_check_hash(h, "edge hash") for h in edge]
        if len(edge) != bin(size).count("1"):
            raise ValueError(f"edge must hold {bin(size).count('1')} hashes for size {size}, got {len(edge)}")
        self._size = size
        self._edge = edge

    @property
    def size(self) -> int:
        return self._size

    @property
    def edge(self) -> list[bytes]:
        """A copy of the right-edge hashes, largest subtree first."""
        return list(self._edge)

    def append(self, leaf_hash: bytes) -> bytes:
        """Add one leaf hash; return the new root."""
        h = _check_hash(leaf_hash, "leaf_hash")
        edge = self._edge
        i = self._size
        # Each trailing 1 bit of the old size is a same-height subtree to merge with.
        while i & 1:
            h = _sha256(_NODE_PREFIX + edge.pop() + h).digest()
            i >>= 1
        edge.append(h)
        self._size += 1
        return self.root()

    def root(self) -> bytes:
        """The root of the current tree (EMPTY_ROOT when empty)."""
        edge = self._edge
        if not edge:
            return EMPTY_ROOT
        h = edge[-1]
        for left in reversed(edge[:-1]):
            h = _sha256(_NODE_PREFIX + left + h).digest()
        return h


# -- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) -----------------------------------------


def _proof_ok(proof: object) -> list[bytes] | None:
    """The proof as a list of 32-byte bytes, or None when its shape is wrong."""
    if isinstance(proof, (bytes, bytearray, str)):
        raise TypeError("proof must be a sequence of hashes, not a single bytes/str value")
    out = []
    for p in proof:  # type: ignore[attr-defined]
        if not isinstance(p, (bytes, bytearray, memoryview)) or len(p) != HASH_SIZE:
            return None
        out.append(bytes(p))
    return out


def root_from_inclusion_proof(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root that `proof` implies for `leaf_hash` at `index` in a tree of `size`.

    RFC 9162 §2.1.3.2 steps 1-4 plus the `sn == 0` check of step 5. Returns None when the
    proof has the wrong length or a malformed hash (it then proves nothing). Raises
    ValueError if index >= size.
    """
    _check_int(index, "index")
    _check_int(size, "size")
    if index >= size:
        raise ValueError(f"index {index} must be smaller than size {size}")
    path = _proof_ok(proof)
    if path is None:
        return None
    if not isinstance(leaf_hash, (bytes, bytearray, memoryview)) or len(leaf_hash) != HASH_SIZE:
        return None
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn, sn = index, size - 1
    # 3. Set r to hash.
    r = bytes(leaf_hash)
    # 4. For each value p in the inclusion_path array:
    for p in path:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return None
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            r = node_hash(p, r)
            # ii. If LSB(fn) is not set, then right-shift both fn and sn equally until
            #     either LSB(fn) is set or fn is 0.
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        # Otherwise: i. Set r to HASH(0x01 || r || p).
        else:
            r = node_hash(r, p)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Compare sn to 0 (the root comparison is the caller's).
    if sn != 0:
        return None
    return r


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does `proof` show `leaf_hash` at `index` under `root` of `size`?

    Raises ValueError if index >= size (including size 0); False for any proof that does
    not verify, including malformed hashes.
    """
    got = root_from_inclusion_proof(leaf_hash, index, size, proof)
    return got is not None and isinstance(root, (bytes, bytearray, memoryview)) and got == bytes(root)


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: does `proof` show the tree (second, second_root) extends (first, first_root)?

    Raises ValueError if first > second or first == 0 (RFC 9162 defines consistency proofs
    for 0 < first; every tree trivially extends the empty one). For first == second the
    proof must be empty and the roots equal. False for any proof that does not verify.
    """
    _check_int(first, "first")
    _check_int(second, "second")
    if first > second:
        raise ValueError(f"first ({first}) must not exceed second ({second})")
    if first == 0:
        raise ValueError("first must be > 0: a consistency proof from the empty tree is meaningless")
    path = _proof_ok(proof)
    if path is None:
        return False
    for what, value in (("first_root", first_root), ("second_root", second_root)):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    first_root, second_root = bytes(first_root), bytes(second_root)
    if len(first_root) != HASH_SIZE or len(second_root) != HASH_SIZE:
        return False
    if first == second:
        return not path and first_root == second_root
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not path:
        return False
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
    if first & (first - 1) == 0:
        path = [first_root] + path
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set fr to HASH(0x01 || c || fr).  ii. Set sr to HASH(0x01 || c || sr).
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # iii. If LSB(fn) is not set, then right-shift both fn and sn equally until
            #      either LSB(fn) is set or fn is 0.
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        # Otherwise: i. Set sr to HASH(0x01 || sr || c).
        else:
            sr = node_hash(sr, c)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. Verify fr == first_hash, sr == second_hash, and sn == 0.
    return sn == 0 and fr == first_root and sr == second_root
