"""RFC 6962 / RFC 9162 Merkle tree: published test vectors and property tests.

Vectors (copied verbatim, hex) from github.com/transparency-dev/merkle:

- testonly/constants.go: LeafInputs, NodeHashes, RootHashes, CompactTrees, EmptyRootHash
  (the roots are the C++ certificate-transparency merkle_tree_test.cc constants).
- proof/verify_test.go: inclusionProofs and consistencyProofs (leaf numbers there are
  1-based: {leaf: 1, size: 8} is index 0), and the corruption probes of verifierCheck /
  verifierConsistencyCheck.
- proof/proof_test.go: TestInclusion / TestConsistency node-id expectations, restated here
  as NodeHashes entries for the trees that fit in the 8-leaf vector tree.
"""

from __future__ import annotations

import hashlib
import math
import random

import pytest

from xinyi.audit.merkle import (
    BLOCK_HEIGHT,
    EMPTY_ROOT,
    MerkleTree,
    RootTracker,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)

H = bytes.fromhex

# -- transparency-dev/merkle testonly/constants.go -----------------------------------------

LEAF_INPUTS = [
    H(""),
    H("00"),
    H("10"),
    H("2021"),
    H("3031"),
    H("40414243"),
    H("5051525354555657"),
    H("606162636465666768696a6b6c6d6e6f"),
]

NODE_HASHES = [
    [
        H("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        H("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        H("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        H("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        H("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        H("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        H("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        H("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [
        H("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
    ],
]

EMPTY_ROOT_HASH = H("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")

ROOT_HASHES = [
    EMPTY_ROOT_HASH,
    H("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    H("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    H("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    H("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    H("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    H("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    H("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

_NH = NODE_HASHES
COMPACT_TREES = [  # CompactTrees(): the right edge of every size, largest subtree first
    [],
    [_NH[0][0]],
    [_NH[1][0]],
    [_NH[1][0], _NH[0][2]],
    [_NH[2][0]],
    [_NH[2][0], _NH[0][4]],
    [_NH[2][0], _NH[1][2]],
    [_NH[2][0], _NH[1][2], _NH[0][6]],
    [_NH[3][0]],
]

# -- transparency-dev/merkle proof/verify_test.go ------------------------------------------

# (leaf, size, proof) with leaf 1-based, as in the Go table.
INCLUSION_PROOFS = [
    (1, 1, []),
    (1, 8, [
        H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ]),
    (6, 8, [
        H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
        H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    ]),
    (3, 3, [
        H("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    ]),
    (2, 5, [
        H("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
    ]),
]

CONSISTENCY_PROOFS = [
    (1, 1, []),
    (1, 8, [
        H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ]),
    (6, 8, [
        H("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
        H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    ]),
    (2, 5, [
        H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
    ]),
    (6, 7, [
        H("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        H("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    ]),
]

SOME_HASH = H("abacaba000000000000000000000000000000000000000000060061e00123456")

# -- transparency-dev/merkle proof/proof_test.go (node ids -> NodeHashes) ------------------
# A node id (level, index) is NODE_HASHES[level][index]; ("rehash", [ids]) is the
# single hash Go's Nodes.Rehash folds those ids into (later ids are left siblings).

STRUCT_INCLUSION = [  # (size, index, ids)
    (1, 0, []),
    (2, 0, [(0, 1)]),
    (2, 1, [(0, 0)]),
    (3, 1, [(0, 0), (0, 2)]),
    (7, 0, [(0, 1), (1, 1), ("rehash", [(0, 6), (1, 2)])]),
    (7, 1, [(0, 0), (1, 1), ("rehash", [(0, 6), (1, 2)])]),
    (7, 2, [(0, 3), (1, 0), ("rehash", [(0, 6), (1, 2)])]),
    (7, 3, [(0, 2), (1, 0), ("rehash", [(0, 6), (1, 2)])]),
    (7, 4, [(0, 5), (0, 6), (2, 0)]),
    (7, 5, [(0, 4), (0, 6), (2, 0)]),
    (7, 6, [(1, 2), (2, 0)]),
    (4, 2, [(0, 3), (1, 0)]),
    (5, 3, [(0, 2), (1, 0), (0, 4)]),
    (6, 3, [(0, 2), (1, 0), (1, 2)]),
    (6, 4, [(0, 5), (2, 0)]),
]

STRUCT_CONSISTENCY = [  # (size1, size2, ids)
    (1, 2, [(0, 1)]),
    (1, 4, [(0, 1), (1, 1)]),
    (1, 6, [(0, 1), (1, 1), (1, 2)]),
    (2, 3, [(0, 2)]),
    (2, 8, [(1, 1), (2, 1)]),
    (3, 7, [(0, 2), (0, 3), (1, 0), ("rehash", [(0, 6), (1, 2)])]),
    (4, 7, [("rehash", [(0, 6), (1, 2)])]),
    (5, 7, [(0, 4), (0, 5), (0, 6), (2, 0)]),
    (6, 7, [(1, 2), (0, 6), (2, 0)]),
    (7, 8, [(0, 6), (0, 7), (1, 2), (2, 0)]),
    (1, 1, []), (2, 2, []), (3, 3, []), (4, 4, []), (5, 5, []), (7, 7, []), (8, 8, []),
    (2, 4, [(1, 1)]),
    (3, 5, [(0, 2), (0, 3), (1, 0), (0, 4)]),
    (3, 6, [(0, 2), (0, 3), (1, 0), (1, 2)]),
    (4, 6, [(1, 2)]),
    (1, 7, [(0, 1), (1, 1), ("rehash", [(0, 6), (1, 2)])]),
]


def _resolve(ids) -> list[bytes]:
    out = []
    for item in ids:
        if item[0] == "rehash":
            hashes = [NODE_HASHES[lv][ix] for lv, ix in item[1]]
            acc = hashes[0]
            for h in hashes[1:]:
                acc = node_hash(h, acc)
            out.append(acc)
        else:
            out.append(NODE_HASHES[item[0]][item[1]])
    return out


@pytest.fixture(scope="module")
def vector_tree() -> MerkleTree:
    return MerkleTree(leaf_hash(d) for d in LEAF_INPUTS)


# -- hashing and roots ----------------------------------------------------------------------


def test_hash_primitives():
    assert EMPTY_ROOT == EMPTY_ROOT_HASH == hashlib.sha256(b"").digest()
    assert leaf_hash(b"") == NODE_HASHES[0][0]
    assert node_hash(NODE_HASHES[0][0], NODE_HASHES[0][1]) == NODE_HASHES[1][0]
    for i, data in enumerate(LEAF_INPUTS):
        assert leaf_hash(data) == NODE_HASHES[0][i]


def test_root_vectors_every_size(vector_tree):
    leaves = [leaf_hash(d) for d in LEAF_INPUTS]
    tracker = RootTracker()
    assert tracker.root() == ROOT_HASHES[0]
    for size in range(0, 9):
        assert vector_tree.root(size) == ROOT_HASHES[size], size
        assert root_of(leaves[:size]) == ROOT_HASHES[size], size
        if size:
            assert tracker.append(leaves[size - 1]) == ROOT_HASHES[size], size
    assert vector_tree.root() == ROOT_HASHES[8]
    assert MerkleTree().root() == EMPTY_ROOT


def test_stored_levels_match_node_hashes(vector_tree):
    # Every complete subtree hash of the 8-leaf tree is a NodeHashes entry, and the right
    # edge at each size is the CompactTrees vector.
    for level, row in enumerate(NODE_HASHES):
        span = 1 << level
        for index, want in enumerate(row):
            sub = MerkleTree(leaf_hash(d) for d in LEAF_INPUTS[index * span:(index + 1) * span])
            assert sub.root() == want, (level, index)
    for size, want in enumerate(COMPACT_TREES):
        assert vector_tree.right_edge(size) == want, size
        tracker = RootTracker(size, want)
        assert tracker.root() == ROOT_HASHES[size]


# -- inclusion vectors ----------------------------------------------------------------------


def _corrupt_inclusion(index, size, proof, root, leaf):
    """The probes of verify_test.go corruptInclusionProof (each must fail)."""
    probes = [
        (index - 1, size, root, leaf, proof, "index - 1"),
        (index + 1, size, root, leaf, proof, "index + 1"),
        (index ^ 2, size, root, leaf, proof, "index ^ 2"),
        (index, size * 2, root, leaf, proof, "size * 2"),
        (index, size // 2, root, leaf, proof, "size / 2"),
        (index, size, root, b"WrongLeaf", proof, "wrong leaf"),
        (index, size, EMPTY_ROOT_HASH, leaf, proof, "empty root"),
        (index, size, SOME_HASH, leaf, proof, "random root"),
        (index, size, root, leaf, proof + [b""], "trailing garbage"),
        (index, size, root, leaf, proof + [root], "trailing root"),
        (index, size, root, leaf, [b""] + proof, "preceding garbage"),
        (index, size, root, leaf, [root] + proof, "preceding root"),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 8]) + wrong[i][1:]
        probes.append((index, size, root, leaf, wrong, f"modified proof[{i}] bit 3"))
    if proof:
        probes.append((index, size, root, leaf, proof[:-1], "removed component"))
    if len(proof) > 1:
        probes.append((index, size, root, leaf, [proof[0], SOME_HASH] + proof[1:], "inserted component"))
    return probes


def _must_not_verify_inclusion(leaf, index, size, proof, root):
    try:
        return not verify_inclusion(leaf, index, size, proof, root)
    except ValueError:  # impossible index/size: rejected outright, which also counts
        return True


@pytest.mark.parametrize("leaf_no,size,proof", INCLUSION_PROOFS)
def test_inclusion_vectors(vector_tree, leaf_no, size, proof):
    index = leaf_no - 1
    leaf = leaf_hash(LEAF_INPUTS[index])
    root = ROOT_HASHES[size]
    assert vector_tree.inclusion_proof(index, size) == proof
    assert root_from_inclusion_proof(leaf, index, size, proof) == root
    assert verify_inclusion(leaf, index, size, proof, root)
    wrong = [desc for (i, s, r, lf, p, desc) in _corrupt_inclusion(index, size, proof, root, leaf)
             if not _must_not_verify_inclusion(lf, i, s, p, r)]
    assert wrong == []


@pytest.mark.parametrize("size,index,ids", STRUCT_INCLUSION)
def test_inclusion_structure_vectors(vector_tree, size, index, ids):
    proof = vector_tree.inclusion_proof(index, size)
    assert proof == _resolve(ids)
    assert verify_inclusion(vector_tree.leaf(index), index, size, proof, ROOT_HASHES[size])


def test_inclusion_single_entry():
    h = leaf_hash(b"data")
    assert verify_inclusion(h, 0, 1, [], h)
    assert not verify_inclusion(h, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], h)
    assert not verify_inclusion(b"", 0, 1, [], b"")


@pytest.mark.parametrize("index,size", [(0, 0), (1, 0), (2, 1), (1, 1), (8, 7)])
def test_inclusion_impossible_arguments(vector_tree, index, size):
    with pytest.raises(ValueError, match="index"):
        verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)
    with pytest.raises(ValueError, match="index"):
        root_from_inclusion_proof(SOME_HASH, index, size, [])
    if size <= vector_tree.size:
        with pytest.raises(ValueError, match="index"):
            vector_tree.inclusion_proof(index, size)


def test_tree_argument_errors(vector_tree):
    with pytest.raises(ValueError, match="size"):
        vector_tree.inclusion_proof(0, 9)
    with pytest.raises(ValueError, match="size"):
        vector_tree.root(9)
    with pytest.raises(ValueError, match="size"):
        vector_tree.root(-1)
    with pytest.raises(ValueError, match="index"):
        vector_tree.leaf(8)
    with pytest.raises(ValueError, match="index"):
        vector_tree.inclusion_proof(-1, 4)
    with pytest.raises(ValueError, match="second"):
        vector_tree.consistency_proof(1, 9)
    with pytest.raises(ValueError, match="first"):
        vector_tree.consistency_proof(5, 4)
    with pytest.raises(ValueError, match="first"):
        vector_tree.consistency_proof(0, 4)
    with pytest.raises(ValueError, match="leaf_hash"):
        MerkleTree().append(b"short")
    with pytest.raises(ValueError, match="leaf_hash"):
        MerkleTree().extend([SOME_HASH, b"short"])
    with pytest.raises(TypeError):
        vector_tree.root(True)


# -- consistency vectors --------------------------------------------------------------------


def _corrupt_consistency(size1, size2, root1, root2, proof):
    """The probes of verify_test.go corruptConsistencyProof (each must fail)."""
    probes = [
        (size1 - 1, size2, root1, root2, proof, "size1 - 1"),
        (size1 + 1, size2, root1, root2, proof, "size1 + 1"),
        (size1 ^ 2, size2, root1, root2, proof, "size1 ^ 2"),
        (size1, size2 * 2, root1, root2, proof, "size2 * 2"),
        (size1, size2 // 2, root1, root2, proof, "size2 / 2"),
        (size1, size2, b"WrongRoot", root2, proof, "wrong root1"),
        (size1, size2, root1, b"WrongRoot", proof, "wrong root2"),
        (size1, size2, root2, root1, proof, "swapped roots"),
        (size1, size2, root1, root2, [], "empty proof"),
        (size1, size2, root1, root2, proof + [b""], "trailing garbage"),
        (size1, size2, root1, root2, proof + [root1], "trailing root1"),
        (size1, size2, root1, root2, proof + [root2], "trailing root2"),
        (size1, size2, root1, root2, [b""] + proof, "preceding garbage"),
        (size1, size2, root1, root2, [root1] + proof, "preceding root1"),
        (size1, size2, root1, root2, [root2] + proof, "preceding root2"),
        (size1, size2, root1, root2, [proof[0]] + proof, "preceding proof[0]"),
    ]
    if proof:
        probes.append((size1, size2, root1, root2, proof[:-1], "truncated proof"))
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 16]) + wrong[i][1:]
        probes.append((size1, size2, root1, root2, wrong, f"modified proof[{i}] bit 4"))
    return probes


def _must_not_verify_consistency(s1, s2, r1, r2, proof):
    try:
        return not verify_consistency(s1, s2, r1, r2, proof)
    except ValueError:
        return True


@pytest.mark.parametrize("size1,size2,proof", CONSISTENCY_PROOFS)
def test_consistency_vectors(vector_tree, size1, size2, proof):
    root1, root2 = ROOT_HASHES[size1], ROOT_HASHES[size2]
    assert vector_tree.consistency_proof(size1, size2) == proof
    assert verify_consistency(size1, size2, root1, root2, proof)
    if proof:
        wrong = [desc for (s1, s2, r1, r2, p, desc) in _corrupt_consistency(size1, size2, root1, root2, proof)
                 if not _must_not_verify_consistency(s1, s2, r1, r2, p)]
        assert wrong == []


@pytest.mark.parametrize("size1,size2,ids", STRUCT_CONSISTENCY)
def test_consistency_structure_vectors(vector_tree, size1, size2, ids):
    proof = vector_tree.consistency_proof(size1, size2)
    assert proof == _resolve(ids)
    assert verify_consistency(size1, size2, ROOT_HASHES[size1], ROOT_HASHES[size2], proof)


def test_consistency_edge_cases():
    # From verify_test.go TestVerifyConsistency, adapted: size 0 and time travel are
    # impossible arguments here (ValueError), equal sizes need equal roots and no proof.
    r1, r2 = b"don't care 1".ljust(32, b"."), b"don't care 2".ljust(32, b".")
    assert not verify_consistency(1, 1, r1, r2, [])
    assert verify_consistency(1, 1, r2, r2, [])
    assert not verify_consistency(1, 2, r1, r2, [])
    assert not verify_consistency(1, 1, EMPTY_ROOT_HASH, EMPTY_ROOT_HASH, [EMPTY_ROOT_HASH])
    for first, second in ((1, 0), (2, 1)):
        with pytest.raises(ValueError, match="first"):
            verify_consistency(first, second, r1, r2, [])
    with pytest.raises(ValueError, match="first"):
        verify_consistency(0, 1, EMPTY_ROOT, r2, [])
    with pytest.raises(ValueError, match="first"):
        verify_consistency(-1, 1, EMPTY_ROOT, r2, [])


# -- properties over random trees -----------------------------------------------------------


def _random_leaves(rng: random.Random, n: int) -> list[bytes]:
    return [leaf_hash(rng.randbytes(rng.randint(0, 40))) for _ in range(n)]


def _max_proof_len(size: int) -> int:
    return math.ceil(math.log2(size)) + 1 if size > 1 else 1


def test_random_sizes_against_reference():
    rng = random.Random(6962)
    sizes = sorted({rng.randint(1, 400) for _ in range(12)} | {1, 2, 3, 255, 256, 257})
    for n in sizes:
        leaves = _random_leaves(rng, n)
        tree = MerkleTree(leaves)
        assert tree.size == n
        assert tree.root() == root_of(leaves)
        for size in sorted({rng.randint(1, n) for _ in range(6)} | {n}):
            root = root_of(leaves[:size])
            assert tree.root(size) == root
            for index in sorted({rng.randrange(size) for _ in range(8)} | {0, size - 1}):
                proof = tree.inclusion_proof(index, size)
                assert len(proof) <= _max_proof_len(size)
                assert verify_inclusion(leaves[index], index, size, proof, root)
                # wrong leaf, wrong index, wrong root
                other = leaf_hash(b"not a leaf of this tree")
                assert not verify_inclusion(other, index, size, proof, root)
                if size > 1:
                    wrong_index = (index + 1) % size
                    assert not verify_inclusion(leaves[index], wrong_index, size, proof, root) or \
                        leaves[wrong_index] == leaves[index]
                assert not verify_inclusion(leaves[index], index, size, proof, SOME_HASH)


def test_every_inclusion_proof_small_trees():
    rng = random.Random(1)
    leaves = _random_leaves(rng, 64)
    tree = MerkleTree(leaves)
    for size in range(1, 65):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert len(proof) <= _max_proof_len(size)
            assert verify_inclusion(leaves[index], index, size, proof, root)
            assert not verify_inclusion(leaves[index], index, size, proof, tree.root(size - 1) if size > 1 else SOME_HASH)


def test_every_consistency_pair_up_to_64():
    rng = random.Random(9162)
    leaves = _random_leaves(rng, 64)
    tree = MerkleTree(leaves)
    roots = [root_of(leaves[:n]) for n in range(65)]
    for n in range(1, 65):
        assert tree.root(n) == roots[n]
        for m in range(1, n + 1):
            proof = tree.consistency_proof(m, n)
            assert len(proof) <= _max_proof_len(n)
            assert verify_consistency(m, n, roots[m], roots[n], proof), (m, n)
            if m < n:
                assert proof
                assert not verify_consistency(m, n, roots[m], SOME_HASH, proof)
                assert not verify_consistency(m, n, SOME_HASH, roots[n], proof)
                flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:]] + proof[1:]
                assert not verify_consistency(m, n, roots[m], roots[n], flipped)
                if m > 1:
                    assert not verify_consistency(m - 1, n, roots[m], roots[n], proof)


def test_consistency_random_pairs_larger_trees():
    rng = random.Random(77)
    leaves = _random_leaves(rng, 500)
    tree = MerkleTree(leaves)
    for _ in range(200):
        n = rng.randint(1, 500)
        m = rng.randint(1, n)
        proof = tree.consistency_proof(m, n)
        assert len(proof) <= _max_proof_len(n)
        assert verify_consistency(m, n, root_of(leaves[:m]), root_of(leaves[:n]), proof)


def test_root_tracker_agrees_at_every_size():
    rng = random.Random(5)
    leaves = _random_leaves(rng, 300)
    tree = MerkleTree()
    tracker = RootTracker()
    for i, h in enumerate(leaves):
        assert tree.append(h) == i
        got = tracker.append(h)
        assert got == tree.root() == tracker.root()
        assert tracker.size == tree.size == i + 1
        assert tracker.edge == tree.right_edge()
    # every past size too, and resuming from a persisted edge
    for size in range(0, 301, 7):
        assert RootTracker(size, tree.right_edge(size)).root() == tree.root(size) == root_of(leaves[:size])
    resumed = RootTracker(123, tree.right_edge(123))
    for h in leaves[123:200]:
        resumed.append(h)
    assert resumed.root() == tree.root(200)
    with pytest.raises(ValueError, match="edge"):
        RootTracker(3, [SOME_HASH])


def test_extend_equals_append_in_any_batches():
    rng = random.Random(11)
    leaves = _random_leaves(rng, 333)
    one_by_one = MerkleTree()
    for h in leaves:
        one_by_one.append(h)
    batched = MerkleTree()
    pos = 0
    while pos < len(leaves):
        step = rng.randint(0, 40)
        assert batched.extend(leaves[pos:pos + step]) == min(pos + step, len(leaves))
        pos += step
    assert batched._levels == one_by_one._levels  # identical storage, level by level
    for size in range(0, 334, 13):
        assert batched.root(size) == one_by_one.root(size)


def test_leaf_and_index_of_with_and_without_dict():
    rng = random.Random(3)
    leaves = _random_leaves(rng, 100)
    leaves[60] = leaves[10]  # duplicate: index_of gives the first
    for track in (True, False):
        tree = MerkleTree(leaves[:50], track_index=track)
        for h in leaves[50:]:
            tree.append(h)
        for i, h in enumerate(leaves):
            assert tree.leaf(i) == h
            assert tree.index_of(h) == leaves.index(h)
        assert tree.index_of(SOME_HASH) is None
        # a hash straddling two slots must not be reported
        straddle = leaves[3][16:] + leaves[4][:16]
        assert tree.index_of(straddle) is None


def test_proof_lengths_are_logarithmic():
    rng = random.Random(8)
    tree = MerkleTree(_random_leaves(rng, 5000))
    for _ in range(300):
        size = rng.randint(2, 5000)
        assert len(tree.inclusion_proof(rng.randrange(size), size)) <= math.ceil(math.log2(size))
        first = rng.randint(1, size)
        assert len(tree.consistency_proof(first, size)) <= math.ceil(math.log2(size)) + 1


# -- a tree over stored leaves: the memory an audit log keeps does not grow with it -----------------


def _stored(leaves: list[bytes], reads: list | None = None):
    def read(start: int, stop: int) -> list[bytes]:
        if reads is not None:
            reads.append((start, stop))
        return leaves[start:stop]
    return read


def test_a_tree_over_stored_leaves_answers_as_the_tree_in_memory():
    """Roots, right edges and proofs for past sizes reach into finished blocks, which are read
    back from the store; every answer equals the in-memory tree's, across block boundaries."""
    rng = random.Random(7)
    width = 1 << BLOCK_HEIGHT
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(5 * width + 37)]
    reads: list = []
    stored = MerkleTree(stored_leaves=_stored(leaves, reads))
    for chunk in (1, width - 1, 3, 2 * width, width + 33):  # appends and extends across block edges
        stored.extend(leaves[stored.size:stored.size + chunk]) if chunk > 1 else stored.append(leaves[stored.size])
    stored.extend(leaves[stored.size:])
    memory = MerkleTree(leaves)
    assert stored.size == memory.size == len(leaves)
    sizes = sorted({1, 2, width - 1, width, width + 1, 2 * width, len(leaves), *rng.sample(range(1, len(leaves) + 1), 40)})
    for size in sizes:
        assert stored.root(size) == memory.root(size) == root_of(leaves[:size])
        assert stored.right_edge(size) == memory.right_edge(size)
        for index in {0, size - 1, size // 2, rng.randrange(size)}:
            assert stored.inclusion_proof(index, size) == memory.inclusion_proof(index, size)
        for first in {1, size, max(1, size - width), rng.randrange(1, size + 1)}:
            assert stored.consistency_proof(first, size) == memory.consistency_proof(first, size)
    assert reads, "no proof read a finished block back: the forgetting was not exercised"
    assert all(stop - start == width and start % width == 0 for start, stop in reads)


def test_a_tree_over_stored_leaves_keeps_a_fraction_of_the_memory():
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(100_000)]
    memory = MerkleTree(leaves, track_index=False)
    stored = MerkleTree(stored_leaves=_stored(leaves))
    for i in range(0, len(leaves), 997):
        stored.extend(leaves[i:i + 997])
    assert memory.resident_bytes > 6_000_000  # 64 bytes a leaf
    assert stored.resident_bytes < 40_000  # about a quarter of a byte a leaf, and the unfinished block
    assert stored.root() == memory.root()


def test_a_stored_block_that_was_altered_gives_no_proof():
    width = 1 << BLOCK_HEIGHT
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(3 * width)]
    altered = list(leaves)
    altered[width + 5] = leaf_hash(b"edited afterwards")
    tree = MerkleTree(leaves, stored_leaves=_stored(altered))
    assert tree.inclusion_proof(5, 3 * width) == MerkleTree(leaves).inclusion_proof(5, 3 * width)  # block 0 intact
    with pytest.raises(ValueError, match="the store was altered"):
        tree.inclusion_proof(width + 5, 3 * width)
    with pytest.raises(ValueError, match="does not index them"):
        tree.index_of(leaves[0])


def test_a_proof_longer_than_the_tree_is_deep_proves_nothing():
    # RFC 9162 step 4a: once sn reaches 0 another path hash must fail the proof, not be folded in.
    rng = random.Random(2)
    leaves = _random_leaves(rng, 13)
    tree = MerkleTree(leaves)
    for size in (1, 2, 5, 8, 13):
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert root_from_inclusion_proof(leaves[index], index, size, proof) == tree.root(size)
            assert root_from_inclusion_proof(leaves[index], index, size, [*proof, SOME_HASH]) is None


def test_consistency_roots_must_be_bytes_not_anything_bytes_accepts():
    tree = MerkleTree(_random_leaves(random.Random(3), 8))
    proof = tree.consistency_proof(3, 8)
    assert verify_consistency(3, 8, tree.root(3), tree.root(8), proof)
    # bytes(32) would be 32 zero bytes, a well-formed hash: refused as the wrong type, not compared.
    with pytest.raises(TypeError, match="first_root must be bytes, got int"):
        verify_consistency(3, 8, 32, tree.root(8), proof)
    with pytest.raises(TypeError, match="second_root must be bytes, got str"):
        verify_consistency(3, 8, tree.root(3), "a" * 32, proof)
