'use strict';
// Checkpoints: C2SP signed-note, tlog-checkpoint and tlog-cosignature (cosignature/v1), read as
// strictly as xinyi/audit/checkpoint.py reads them. A node's log signs as `xinyi/<node id>` with
// its Ed25519 signing key (type 0x01); the registry cosigns as `xinyi/<registry id>` (type 0x04).
const crypto = require('node:crypto');
const { CheckError } = require('./pki');

const ALG_ED25519 = 0x01;
const ALG_COSIGNATURE_V1 = 0x04;
const SIG_PREFIX = '\u2014 ';
const MAX_SIGNATURES = 100;
const MAX_TREE_SIZE = (1n << 64n) - 1n;

const fail = (message) => { throw new CheckError('BAD_NOTE', message); };
// eslint-disable-next-line no-control-regex
const hasControl = (text) => /[\u0000-\u0009\u000b-\u001f]/.test(text);

function b64Strict(text, what) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) fail(`${what} is not valid base64: ${JSON.stringify(text)}`);
  const raw = Buffer.from(text, 'base64');
  if (raw.toString('base64') !== text) fail(`${what} is not canonical base64: ${JSON.stringify(text)}`);
  return raw;
}

// Raw 32-byte Ed25519 public key of a KeyObject or a DER certificate.
function rawKey(key) {
  const k = Buffer.isBuffer(key) || key instanceof Uint8Array ? new crypto.X509Certificate(key).publicKey : key;
  return Buffer.from(k.export({ format: 'jwk' }).x, 'base64url');
}
const keyObject = (key) => (Buffer.isBuffer(key) || key instanceof Uint8Array ? new crypto.X509Certificate(key).publicKey : key);

// SHA-256(name || 0x0A || type || public key)[:4]
function keyId(name, alg, key) {
  return crypto.createHash('sha256').update(Buffer.concat([Buffer.from(name), Buffer.from([0x0a, alg]), rawKey(key)]))
    .digest().subarray(0, 4);
}

function checkName(name) {
  if (!name || name.includes('+') || /\s/u.test(name) || hasControl(name)) fail(`invalid key name: ${JSON.stringify(name)}`);
}

function parseSignatureLine(line) {
  if (!line.startsWith(SIG_PREFIX)) fail(`signature line must start with an em dash and a space: ${JSON.stringify(line)}`);
  const rest = line.slice(SIG_PREFIX.length);
  const sp = rest.indexOf(' ');
  if (sp < 0) fail(`signature line must be '\u2014 <name> <base64>': ${JSON.stringify(line)}`);
  const name = rest.slice(0, sp);
  checkName(name);
  const raw = b64Strict(rest.slice(sp + 1), `signature of ${name}`);
  if (raw.length <= 4) fail(`signature of ${name} is too short (${raw.length} bytes)`);
  return { name, keyId: raw.subarray(0, 4), payload: raw.subarray(4) };
}

// { body, signatures } of a signed note, verifying nothing.
function splitNote(text) {
  if (hasControl(text)) fail('note must not contain control characters other than newline');
  if (!text.endsWith('\n')) fail('note must end with a newline');
  const split = text.lastIndexOf('\n\n');
  if (split < 0) fail('note has no blank line before its signatures');
  const body = text.slice(0, split + 1);
  const block = text.slice(split + 2);
  if (!block) fail('note has no signature lines');
  const lines = block.slice(0, -1).split('\n');
  if (lines.length > MAX_SIGNATURES) fail(`note has ${lines.length} signature lines, more than ${MAX_SIGNATURES}`);
  return { body, signatures: lines.map(parseSignatureLine) };
}

// origin, size (BigInt), root (32 bytes), extension lines.
function parseCheckpoint(body) {
  if (!body.endsWith('\n')) fail('checkpoint body must end with a newline');
  const lines = body.slice(0, -1).split('\n');
  if (lines.length < 3) fail(`checkpoint body must have at least 3 lines, got ${lines.length}`);
  const [origin, sizeText, rootText, ...extensions] = lines;
  if (!origin) fail('checkpoint origin line is empty');
  if (!/^(0|[1-9][0-9]*)$/.test(sizeText)) fail(`checkpoint size must be decimal without leading zeroes: ${JSON.stringify(sizeText)}`);
  const size = BigInt(sizeText);
  if (size > MAX_TREE_SIZE) fail(`checkpoint size does not fit 64 bits: ${sizeText}`);
  const root = b64Strict(rootText, 'checkpoint root');
  if (root.length !== 32) fail(`checkpoint root must be 32 bytes, got ${root.length}`);
  if (extensions.some((l) => !l)) fail('checkpoint extension lines must not be empty');
  return { origin, size, root, extensions };
}

// A signer's keys over time: the one whose key id a line of the note carries, else the first.
function pickKey(sigs, name, keys, alg) {
  if (!keys.length) fail(`no key known for ${name}`);
  return keys.find((k) => sigs.some((s) => s.name === name && s.keyId.equals(keyId(name, alg, k)))) || keys[0];
}

function ed25519Ok(key, signature, message) {
  return signature.length === 64 && crypto.verify(null, message, keyObject(key), signature);
}

// The checkpoint of a note signed by `name` with one of `keys` (current first; DER
// certificates or KeyObjects). A known key whose signature does not verify rejects the note.
function verifyNote(text, name, keys) {
  const { body, signatures } = splitNote(text);
  const checkpoint = parseCheckpoint(body);
  const key = pickKey(signatures, name, keys, ALG_ED25519);
  const kid = keyId(name, ALG_ED25519, key);
  const matching = signatures.filter((s) => s.name === name && s.keyId.equals(kid));
  if (!matching.length) throw new CheckError('NO_SIGNATURE', `note has no signature by ${name}+${kid.toString('hex')}`);
  for (const s of matching) {
    if (!ed25519Ok(key, s.payload, Buffer.from(body))) {
      throw new CheckError('BAD_SIGNATURE', `invalid signature for key ${name}+${kid.toString('hex')}`);
    }
  }
  return checkpoint;
}

const cosignedMessage = (body, timestamp) => Buffer.from(`cosignature/v1\ntime ${timestamp}\n${body}`);

// The latest timestamp (BigInt, POSIX seconds) of `witness`'s cosignature/v1 on the note.
function verifyCosignature(text, witness, keys) {
  const { body, signatures } = splitNote(text);
  parseCheckpoint(body);
  const key = pickKey(signatures, witness, keys, ALG_COSIGNATURE_V1);
  const kid = keyId(witness, ALG_COSIGNATURE_V1, key);
  const matching = signatures.filter((s) => s.name === witness && s.keyId.equals(kid));
  if (!matching.length) throw new CheckError('NO_COSIGNATURE', `note has no cosignature by ${witness}+${kid.toString('hex')}`);
  let latest = -1n;
  for (const s of matching) {
    if (s.payload.length !== 72) fail(`signature of ${witness} is not a cosignature/v1 (payload ${s.payload.length} bytes)`);
    const timestamp = s.payload.readBigUInt64BE(0);
    if (timestamp > (1n << 63n) - 1n) fail(`cosignature of ${witness} has a timestamp beyond 2^63-1`);
    if (!ed25519Ok(key, s.payload.subarray(8), cosignedMessage(body, timestamp))) {
      throw new CheckError('BAD_COSIGNATURE', `invalid cosignature for key ${witness}+${kid.toString('hex')}`);
    }
    if (timestamp > latest) latest = timestamp;
  }
  return latest;
}

// A log's checkpoint as the log `origin` signed it: its signature under the key name `origin`,
// and `origin` on its first line too (signed-note does not tie the two).
function verifyCheckpoint(text, origin, keys) {
  const checkpoint = verifyNote(text, origin, keys);
  if (checkpoint.origin !== origin) {
    throw new CheckError('WRONG_ORIGIN', `checkpoint is of log '${checkpoint.origin}', not '${origin}'`);
  }
  return checkpoint;
}

module.exports = { splitNote, parseCheckpoint, verifyNote, verifyCheckpoint, verifyCosignature, keyId, ALG_ED25519, ALG_COSIGNATURE_V1 };
