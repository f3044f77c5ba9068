'use strict';
// Signed statements: Ed25519 over "xinyi-signed-envelope/v1\n" + body_type + "\n" + body, the
// body carried as the exact bytes signed; verified before it is parsed, never re-serialized.
const crypto = require('node:crypto');
const { type } = require('./proto');
const { CheckError } = require('./pki');

const CONTEXT = Buffer.from('xinyi-signed-envelope/v1\n');
const MAX_BODY_BYTES = 16 * 1024;

const typeName = (t) => t.fullName.replace(/^\./, '');
const signedInput = (bodyType, body) => Buffer.concat([CONTEXT, Buffer.from(bodyType), Buffer.from('\n'), body]);
const sha256 = (data) => crypto.createHash('sha256').update(data).digest();

// A body message encoded in field-number order, its proto3 default values left out (protobufjs
// would write an empty string it is given, e.g. a self_access query's consent_id): what Python's
// deterministic serialization gives for these flat messages (no maps, no unknown fields).
// Verifiers never re-encode, so any valid encoding would verify; this one gives the same bytes.
const isDefault = (v) => v === undefined || v === null || v === '' || v === 0 || v === false
  || ((Array.isArray(v) || v instanceof Uint8Array) && v.length === 0);

function encode(messageType, fields) {
  const t = type(messageType);
  const present = Object.fromEntries(Object.entries(fields).filter(([, v]) => !isDefault(v)));
  const problem = t.verify(present);
  if (problem) throw new Error(`${messageType}: ${problem}`);
  return Buffer.from(t.encode(t.fromObject(present)).finish());
}

function sign(bundle, messageType, fields) {
  const body = encode(messageType, fields);
  return {
    body_type: messageType,
    body,
    signature: crypto.sign(null, signedInput(messageType, body), bundle.signingKey),
    signer_cert: bundle.signingCertDer,
    signer_chain: bundle.chainDer,
  };
}

// The envelope's parsed body, signer and certificate, after every check; CheckError otherwise.
function verify(envelope, messageType, trust, { roles = null, field = 'envelope', atMs = Date.now() } = {}) {
  const body = Buffer.from(envelope.body || []);
  if (body.length === 0) throw new CheckError('INVALID_FIELD', `${field}.body is empty`);
  if (body.length > MAX_BODY_BYTES) throw new CheckError('TOO_LARGE', `${field}.body is ${body.length} bytes`);
  if (envelope.body_type !== messageType) {
    throw new CheckError('INVALID_FIELD', `${field}.body_type is ${JSON.stringify(envelope.body_type)}; expected ${messageType}`);
  }
  const { principal, cert } = trust.verifySigningCert(Buffer.from(envelope.signer_cert || []),
    { chain: (envelope.signer_chain || []).map((c) => Buffer.from(c)), atMs });
  if (roles && !roles.includes(principal.role)) {
    throw new CheckError('WRONG_SIGNER_ROLE', `${field}: signer is a ${principal.role}; only ${roles.join(', ')} may sign this`);
  }
  const signature = Buffer.from(envelope.signature || []);
  if (signature.length !== 64 || !crypto.verify(null, signedInput(envelope.body_type, body), cert.publicKey, signature)) {
    throw new CheckError('BAD_SIGNATURE', `${field}.signature does not verify with the key of ${principal}`);
  }
  let message;
  try {
    message = type(messageType).decode(body);
  } catch {
    throw new CheckError('INVALID_FIELD', `${field}.body is not a valid ${messageType}`);
  }
  return { message, body, signer: principal, signerCertDer: cert.raw, bodyHash: sha256(body) };
}

module.exports = { sign, verify, encode, signedInput, sha256, typeName, CONTEXT };
