'use strict';
// The signed query and its sealed, signed answers: building, opening, checking; and the view
// of an answer that `xinyi query --json` prints.
const crypto = require('node:crypto');
const sodium = require('libsodium-wrappers');
const { sign, verify, sha256 } = require('./envelope');
const { listedKey } = require('./directory');
const { CheckError } = require('./pki');
const pyjson = require('./pyjson');

const NONCE_BYTES = 16;

// A signed query and the one-time X25519 key pair its answers are sealed to.
async function buildQuery(bundle, { uscc, categories, purpose, consentId, nowMs = Date.now(), nonce, answerKey }) {
  await sodium.ready;
  const key = answerKey || sodium.crypto_box_keypair();
  const envelope = sign(bundle, 'xinyi.v1.QueryBody', {
    uscc, categories, purpose, consent_id: consentId,
    nonce: nonce || crypto.randomBytes(NONCE_BYTES), issued_at_ms: nowMs, answer_key: Buffer.from(key.publicKey),
  });
  return { envelope, answerKey: key, requestHash: sha256(envelope.body) };
}

async function openSealed(sealed, answerKey) {
  await sodium.ready;
  try {
    return Buffer.from(sodium.crypto_box_seal_open(Buffer.from(sealed), answerKey.publicKey, answerKey.privateKey));
  } catch {
    throw new CheckError('SEAL', "sealed answer does not open with this query's key");
  }
}

// Open a sealed answer and check it came from `expectedNode` and answers this query. Raises
// CheckError; reason UNLISTED_KEY when a newer directory may list the key (fetch it, retry).
async function openAnswer(sealed, answerKey, { expectedNode, nodeSigningCert, previousKeys = [], requestHash, uscc, trust }) {
  const plaintext = await openSealed(sealed, answerKey);
  let v;
  try {
    v = verify(require('./proto').type('xinyi.v1.SignedEnvelope').decode(plaintext), 'xinyi.v1.AnswerBody', trust,
      { roles: ['node'], field: 'answer' });
  } catch (e) {
    if (e instanceof CheckError) {
      throw new CheckError(e.reason, `answer from ${expectedNode} does not verify: ${e.message}`);
    }
    throw new CheckError('MALFORMED', `answer from ${expectedNode} is malformed`);
  }
  if (v.signer.role !== 'node' || v.signer.id !== expectedNode) {
    throw new CheckError('WRONG_SIGNER', `answer for node ${expectedNode} was signed by ${v.signer}`);
  }
  const a = v.message;
  if (!listedKey(nodeSigningCert, previousKeys, v.signerCertDer, Number(a.answered_at_ms))) {
    throw new CheckError('UNLISTED_KEY',
      `answer from ${expectedNode} was signed with a key the directory does not list for it`);
  }
  if (Buffer.compare(Buffer.from(a.request_hash), Buffer.from(requestHash)) !== 0) {
    throw new CheckError('WRONG_REQUEST', `answer from ${expectedNode} answers another request`);
  }
  if (a.uscc !== uscc || a.node_id !== expectedNode) {
    throw new CheckError('WRONG_SUBJECT', `answer from ${expectedNode} is about ${a.uscc} from ${a.node_id}`);
  }
  return {
    nodeId: a.node_id,
    records: a.records.map(recordToDict),
    indicators: a.indicators.map(indicatorToDict),
    answeredAtMs: Number(a.answered_at_ms),
    signer: v.signer,
  };
}

// A record as the Python client shows it: category, as_of, source, its fields, record_id.
function recordToDict(r) {
  const out = new Map([['category', r.category], ['as_of', r.as_of], ['source', r.source]]);
  for (const [k, v] of pyjson.parse(r.fields_json)) out.set(k, v);
  out.set('record_id', r.record_id);
  if (r.disputed) out.set('disputed', true);
  return out;
}

function indicatorToDict(i) {
  return new Map([['category', i.category], ['name', i.name], ['value', pyjson.parse(i.value_json)], ['as_of', i.as_of]]);
}

// One node's part of the result, as NodeAnswerView.to_json prints it.
function nodeView(node, status, verified, { records = [], error = null, indicators = [] } = {}) {
  const out = new Map([['node', node], ['status', status], ['verified', verified], ['records', records], ['error', error]]);
  if (indicators.length) out.set('indicators', indicators);
  return out;
}

module.exports = { buildQuery, openAnswer, openSealed, recordToDict, indicatorToDict, nodeView, NONCE_BYTES };
