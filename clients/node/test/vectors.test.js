'use strict';
// conformance/*.json (scripts/conformance.py): every good vector passes with the stated
// values, every bad one is refused for the stated reason.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const { TrustAnchor } = require('../lib/pki');
const { signedInput, sha256, encode } = require('../lib/envelope');
const { verifyDirectory } = require('../lib/directory');
const { checkQuery, openAnswer } = require('../lib/query');
const { verifyCheckpoint, verifyCosignature } = require('../lib/note');
const { leafHash, verifyInclusion, verifyConsistency, EMPTY_ROOT } = require('../lib/merkle');
const { type } = require('../lib/proto');
const pyjson = require('../lib/pyjson');

const DIR = path.resolve(__dirname, '..', '..', '..', 'conformance');
const load = (name) => {
  const v = JSON.parse(fs.readFileSync(path.join(DIR, name), 'utf8'));
  assert.equal(v.format, 'xinyi-conformance/v1');
  return v;
};
const hex = (h) => Buffer.from(h, 'hex');
const envelopeOf = (e) => ({ body_type: e.body_type, body: hex(e.body), signature: hex(e.signature),
  signer_cert: hex(e.signer_cert), signer_chain: e.signer_chain.map(hex) });
const trustOf = (v) => new TrustAnchor(new crypto.X509Certificate(hex(v.root_cert)).toString());

test('query: the exact signed bytes, the request hash, the checks a relying party makes', () => {
  const v = load('query.json');
  const env = envelopeOf(v.signed_envelope);
  assert.deepEqual(signedInput(env.body_type, env.body), hex(v.signed_envelope.signed_input));
  assert.deepEqual(sha256(env.body), hex(v.request_hash));
  const q = v.query;
  // This client's encoding of the same fields is the same bytes (it signs what it encodes).
  assert.deepEqual(encode('xinyi.v1.QueryBody', { uscc: q.uscc, categories: q.categories, purpose: q.purpose,
    consent_id: q.consent_id, nonce: hex(q.nonce), issued_at_ms: q.issued_at_ms, answer_key: hex(q.answer_key) }), env.body);
  assert.deepEqual(type('xinyi.v1.SignedEnvelope').encode(env).finish(), hex(v.signed_envelope.envelope));
  const checked = checkQuery(env, trustOf(v), v.now_ms);
  assert.equal(`${checked.signer.role}/${checked.signer.id}`, v.signer);
  assert.equal(checked.message.consent_id, q.consent_id);
  for (const bad of v.bad) {
    assert.throws(() => checkQuery(envelopeOf(bad.signed_envelope), trustOf(v), v.now_ms),
      (e) => e.reason === bad.expect.reason, `${bad.name}: expected ${bad.expect.reason}`);
  }
  assert.ok(v.bad.some((b) => b.expect.reason === 'SELF_ACCESS_OF_ANOTHER_ENTERPRISE'));
});

test('query: an enterprise\'s self_access query of its own records, signed by the enterprise', () => {
  const v = load('query.json');
  const own = v.self_access;
  const env = envelopeOf(own.signed_envelope);
  assert.deepEqual(signedInput(env.body_type, env.body), hex(own.signed_envelope.signed_input));
  assert.deepEqual(sha256(env.body), hex(own.request_hash));
  const q = own.query;
  assert.deepEqual(encode('xinyi.v1.QueryBody', { uscc: q.uscc, categories: q.categories, purpose: q.purpose,
    consent_id: q.consent_id, nonce: hex(q.nonce), issued_at_ms: q.issued_at_ms, answer_key: hex(q.answer_key) }), env.body);
  const checked = checkQuery(env, trustOf(v), v.now_ms);
  assert.equal(`${checked.signer.role}/${checked.signer.id}`, own.signer);
  assert.equal(checked.message.purpose, 'self_access');
  assert.equal(checked.message.consent_id, '');
});

test('directory: verified, read, routed; each bad variant refused with its reason', () => {
  const v = load('directory.json');
  const d = verifyDirectory(envelopeOf(v.signed_envelope), trustOf(v), { atMs: v.now_ms });
  const e = v.expected;
  assert.equal(d.version, e.version);
  assert.equal(d.registryId, e.registry_id);
  assert.deepEqual([...d.nodes.keys()], e.nodes.map((n) => n.node_id));
  for (const n of e.nodes) {
    assert.equal(d.nodes.get(n.node_id).endpoint, n.endpoint);
    assert.deepEqual(Buffer.from(d.nodes.get(n.node_id).signing_cert), hex(n.signing_cert));
  }
  assert.deepEqual([...d.institutions], e.institutions.map((i) => i.id));
  assert.deepEqual(d.route(e.route.uscc), e.route.node_ids);
  for (const bad of v.bad) {
    assert.throws(() => verifyDirectory(envelopeOf(bad.signed_envelope), trustOf(v), { atMs: v.now_ms }),
      (err) => err.reason === bad.expect.reason, `${bad.name}: expected ${bad.expect.reason}`);
  }
});

test('answer: opened with the one-time key, checked, shown as the Python client shows it', async () => {
  const v = load('answer.json');
  const i = v.inputs;
  const key = { publicKey: hex(i.answer_key), privateKey: hex(i.answer_key_private) };
  const inputs = { expectedNode: i.expected_node, nodeSigningCert: hex(i.node_signing_cert), requestHash: hex(i.request_hash),
    uscc: i.uscc, trust: trustOf(v), atMs: v.now_ms };
  const opened = await openAnswer(hex(v.sealed_answer), key, inputs);
  assert.equal(opened.nodeId, v.opened.node_id);
  assert.equal(`${opened.signer.role}/${opened.signer.id}`, v.opened.signer);
  assert.equal(opened.answeredAtMs, v.opened.answered_at_ms);
  // The same records (the vector lists fields in its own order; the client keeps fields_json's).
  const plain = (records) => JSON.parse(JSON.stringify(records.map((r) => Object.fromEntries(r))));
  assert.deepEqual(plain(opened.records), v.opened.records);
  assert.deepEqual(opened.indicators, v.opened.indicators);
  // Number forms as Python prints them: an int stays 5000000, a float 182300.5.
  assert.match(pyjson.dumps(opened.records), /"registered_capital": 5000000,\n[\s\S]*"tax_paid": 182300.5,/);
  for (const bad of v.bad) {
    await assert.rejects(openAnswer(hex(bad.sealed_answer), key, inputs), (e) => {
      assert.equal(e.check, bad.expect.check, bad.name);
      if (bad.expect.check === 'envelope') assert.match(e.message, /^answer from 510100 does not verify: /);
      else assert.equal(e.message, bad.expect.message, bad.name);
      return true;
    });
  }
});

test('checkpoint: the log signature, the origin, the witness cosignature', () => {
  const v = load('checkpoint.json');
  const logKey = [hex(v.log.signing_cert)];
  const witnessKey = [hex(v.witness.signing_cert)];
  for (const note of [v.note, v.cosigned_note]) {
    const cp = verifyCheckpoint(note, v.origin, logKey);
    assert.equal(cp.size, BigInt(v.tree_size));
    assert.deepEqual(cp.root, hex(v.root));
  }
  assert.equal(verifyCosignature(v.cosigned_note, v.witness.key_name, witnessKey), BigInt(v.witness.timestamp));
  for (const bad of v.bad) {
    assert.throws(() => {
      verifyCheckpoint(bad.cosigned_note, v.origin, logKey);
      verifyCosignature(bad.cosigned_note, v.witness.key_name, witnessKey);
    }, (e) => e.message === bad.expect.message, `${bad.name}: expected ${bad.expect.message}`);
  }
});

test('proofs: leaf hashes, roots, inclusion and consistency proofs; every bad proof fails', () => {
  const v = load('proofs.json');
  for (const l of v.leaves) assert.deepEqual(leafHash(hex(l.leaf_input)), hex(l.leaf_hash), `leaf ${l.index}`);
  assert.deepEqual(hex(v.roots[0].root), EMPTY_ROOT);
  for (const p of v.inclusion) {
    assert.ok(verifyInclusion(hex(p.leaf_hash), p.index, p.tree_size, p.proof.map(hex), hex(p.root)), `${p.index}/${p.tree_size}`);
  }
  for (const p of v.consistency) {
    assert.ok(verifyConsistency(p.first, p.second, hex(p.first_root), hex(p.second_root), p.proof.map(hex)),
      `${p.first} -> ${p.second}`);
  }
  for (const b of v.bad) {
    const ok = b.kind === 'inclusion'
      ? verifyInclusion(hex(b.leaf_hash), b.index, b.tree_size, b.proof.map(hex), hex(b.root))
      : verifyConsistency(b.first, b.second, hex(b.first_root), hex(b.second_root), b.proof.map(hex));
    assert.equal(ok, false, b.name);
  }
  // The leaves are audit records: they decode as AuditRecord, read and never re-encoded.
  assert.equal(Number(type('xinyi.v1.AuditRecord').decode(hex(v.leaves[1].leaf_input)).index), 1);
});
