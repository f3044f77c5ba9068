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
const TIMESTAMP_WINDOW_MS = 5 * 60_000;
const QUERYING_ROLES = ['bank', 'guarantor', 'government'];
// An enterprise's query of its own records (§5.4); this bank client does not send one.
const SELF_ACCESS = 'self_access';

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
    throw new CheckError('SEAL', "sealed answer does not open with this query's key", 'open');
  }
}

// What a relying party checks of a query (a node, the registry): signature, certificate and
// role, then the fields a signer cannot get wrong by accident: nonce, clock window, answer key.
// An enterprise signs only self_access queries of its own USCC, without a consent
// (docs/protocol.md §5.2 steps 1, 5 and 11, §5.4).
function checkQuery(envelope, trust, nowMs = Date.now()) {
  const v = verify(envelope, 'xinyi.v1.QueryBody', trust,
    { roles: [...QUERYING_ROLES, 'enterprise'], field: 'query', atMs: nowMs });
  const q = v.message;
  if (v.signer.role === 'enterprise' && q.purpose !== SELF_ACCESS) {
    throw new CheckError('WRONG_SIGNER_ROLE', `query: signer is an enterprise, which signs only ${SELF_ACCESS} queries `
      + `of its own records; only ${QUERYING_ROLES.join(', ')} may sign a query for ${JSON.stringify(q.purpose)}`);
  }
  if (q.purpose === SELF_ACCESS && q.consent_id !== '') {
    throw new CheckError('INVALID_FIELD', `query.consent_id must be empty for a ${SELF_ACCESS} query: it relies on no consent`);
  }
  if (q.nonce.length !== NONCE_BYTES) throw new CheckError('INVALID_FIELD', `query.nonce must be ${NONCE_BYTES} random bytes`);
  const skew = Number(q.issued_at_ms) - nowMs;
  if (Math.abs(skew) > TIMESTAMP_WINDOW_MS) {
    throw new CheckError('STALE_TIMESTAMP', `query.issued_at_ms is ${Math.floor(Math.abs(skew) / 1000)} s `
      + `${skew > 0 ? 'ahead of' : 'behind'} this clock; at most 300 s is accepted`);
  }
  if (q.answer_key.length !== 32) throw new CheckError('INVALID_FIELD', 'query.answer_key must be a 32-byte X25519 public key');
  if (v.signer.role === 'enterprise' && q.uscc !== v.signer.id) {
    throw new CheckError('SELF_ACCESS_OF_ANOTHER_ENTERPRISE',
      `query.uscc: ${v.signer} may read only its own records (${SELF_ACCESS})`);
  }
  return v;
}

// Open a sealed answer and check it came from `expectedNode` and answers this query. Raises
// CheckError; reason UNLISTED_KEY when a newer directory may list the key (fetch it, retry).
async function openAnswer(sealed, answerKey, { expectedNode, nodeSigningCert, previousKeys = [], requestHash, uscc, trust,
  atMs = Date.now() }) {
  const plaintext = await openSealed(sealed, answerKey);
  let v;
  try {
    v = verify(require('./proto').type('xinyi.v1.SignedEnvelope').decode(plaintext), 'xinyi.v1.AnswerBody', trust,
      { roles: ['node'], field: 'answer', atMs });
  } catch (e) {
    if (e instanceof CheckError) {
      throw new CheckError(e.reason, `answer from ${expectedNode} does not verify: ${e.message}`, 'envelope');
    }
    throw new CheckError('MALFORMED', `answer from ${expectedNode} is malformed`, 'envelope');
  }
  if (v.signer.role !== 'node' || v.signer.id !== expectedNode) {
    throw new CheckError('WRONG_SIGNER', `answer for node ${expectedNode} was signed by ${v.signer}`, 'signer');
  }
  const a = v.message;
  if (!listedKey(nodeSigningCert, previousKeys, v.signerCertDer, Number(a.answered_at_ms))) {
    throw new CheckError('UNLISTED_KEY',
      `answer from ${expectedNode} was signed with a key the directory does not list for it`, 'listed_key');
  }
  if (Buffer.compare(Buffer.from(a.request_hash), Buffer.from(requestHash)) !== 0) {
    throw new CheckError('WRONG_REQUEST', `answer from ${expectedNode} answers another request`, 'request_hash');
  }
  for (const [check, ok] of [['uscc', a.uscc === uscc], ['node_id', a.node_id === expectedNode]]) {
    if (!ok) throw new CheckError('WRONG_SUBJECT', `answer from ${expectedNode} is about ${a.uscc} from ${a.node_id}`, check);
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

module.exports = { buildQuery, checkQuery, openAnswer, QUERYING_ROLES, SELF_ACCESS, openSealed, recordToDict, indicatorToDict, nodeView, NONCE_BYTES };
