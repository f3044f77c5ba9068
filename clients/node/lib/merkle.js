'use strict';
// RFC 6962 / RFC 9162 Merkle trees over SHA-256: leaf and node hashes, and the verification of
// inclusion (§2.1.3.2) and consistency (§2.1.4.2) proofs, step by step. Sizes are BigInt.
const crypto = require('node:crypto');

const sha256 = (...parts) => crypto.createHash('sha256').update(Buffer.concat(parts)).digest();
const leafHash = (entry) => sha256(Buffer.from([0]), Buffer.from(entry));
const nodeHash = (left, right) => sha256(Buffer.from([1]), left, right);
const hashes = (list) => list.every((h) => h && h.length === 32);
const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

function verifyInclusion(leaf, index, size, proof, root) {
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  if (fn < 0n || fn > sn || !hashes(proof) || !hashes([leaf, root])) return false;
  let r = Buffer.from(leaf);
  for (const p of proof) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      r = nodeHash(Buffer.from(p), r);
      while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      r = nodeHash(r, Buffer.from(p));
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && same(r, root);
}

function verifyConsistency(first, second, firstRoot, secondRoot, proof) {
  const m = BigInt(first);
  const n = BigInt(second);
  // Proofs are defined for 0 < first <= second; every hash is 32 bytes.
  if (m <= 0n || m > n || !hashes(proof) || !hashes([firstRoot, secondRoot])) return false;
  if (m === n) return proof.length === 0 && same(firstRoot, secondRoot);
  if (proof.length === 0) return false;
  let path = proof.map((p) => Buffer.from(p));
  if ((m & (m - 1n)) === 0n) path = [Buffer.from(firstRoot), ...path];
  let fn = m - 1n;
  let sn = n - 1n;
  while ((fn & 1n) === 1n) { fn >>= 1n; sn >>= 1n; }
  let [fr, sr] = [path[0], path[0]];
  for (const c of path.slice(1)) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      sr = nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && same(fr, firstRoot) && same(sr, secondRoot);
}

module.exports = { leafHash, nodeHash, verifyInclusion, verifyConsistency, EMPTY_ROOT: sha256(Buffer.alloc(0)) };
