#!/usr/bin/env node
'use strict';
// Prove that a node's signed audit log holds a query's entry (an auditor's identity: audit
// logs are read by auditors only):
//   node clients/node/audit.js --identity certs/auditor-ID --node HOST:PORT --node-id 510100 \
//        --request-hash HEX [--json]
// Reads the node's latest checkpoint (C2SP signed note by `xinyi/<node id>`, checked with the
// node's key in the registry-signed directory the node serves with it), finds the entry of
// the query (action "query", its request hash), fetches its exact bytes (leaf_input, never
// re-encoded), and checks the RFC 6962 inclusion proof against the checkpoint's root; then the
// witness's cosignature (`xinyi/<registry id>`) on the newest cosigned checkpoint and its
// consistency with the latest.
const { loadBundle } = require('./lib/pki');
const { verifyDirectory } = require('./lib/directory');
const { verifyCheckpoint, verifyCosignature } = require('./lib/note');
const { leafHash, verifyInclusion, verifyConsistency } = require('./lib/merkle');
const { type } = require('./lib/proto');
const { client, call } = require('./lib/rpc');
const { run, CommandError } = require('./lib/cli');

const USAGE = 'audit.js --identity AUDITOR_DIR --node HOST:PORT --node-id ID --request-hash HEX [--json]';
const PAGE = 1000;

async function findEntry(audit, requestHash) {
  for (let start = 0; start >= 0;) {
    const page = await call(audit, 'ListAuditRecords', { start, limit: PAGE }, 30);
    const hit = page.records.find((r) => r.action === 'query' && r.request_hash === requestHash);
    if (hit) return Number(hit.index);
    start = Number(page.next);
  }
  throw new CommandError(`the node's audit log holds no query entry with request hash ${requestHash}`);
}

async function audit(values, printJson) {
  const bundle = loadBundle(values.identity);
  const trust = bundle.trust();
  const nodeId = values['node-id'];
  const requestHash = values['request-hash'].toLowerCase();
  const origin = `xinyi/${nodeId}`;
  const stub = client(bundle, 'AuditService', values.node, { role: 'node', id: nodeId });
  try {
    const cp = await call(stub, 'GetCheckpoint', {}, 10);
    if (!cp.directory) throw new CommandError(`node ${nodeId} served no directory with its checkpoint`);
    const directory = verifyDirectory(cp.directory, trust);
    const keys = directory.nodeKeys(nodeId);
    if (!keys.length) throw new CommandError(`node ${nodeId} is not in the signed directory`);
    const checkpoint = verifyCheckpoint(cp.checkpoint, origin, keys);

    const index = await findEntry(stub, requestHash);
    if (BigInt(index) >= checkpoint.size) {
      throw new CommandError(`entry ${index} is past the checkpoint's tree size ${checkpoint.size}`);
    }
    const { entries } = await call(stub, 'GetEntries', { start: index, end: index }, 30);
    if (entries.length !== 1 || Number(entries[0].index) !== index) throw new CommandError(`node did not serve entry ${index}`);
    const leafInput = entries[0].leaf_input;
    const record = type('xinyi.v1.AuditRecord').decode(leafInput);  // read, never re-encoded: the bytes are the entry
    if (record.request_hash !== requestHash || record.action !== 'query') {
      throw new CommandError(`entry ${index} is a ${record.action} of request ${record.request_hash}, not this query`);
    }
    const proof = await call(stub, 'GetInclusionProof', { index, tree_size: checkpoint.size.toString() }, 30);
    const included = Number(proof.leaf_index) === index
      && verifyInclusion(leafHash(leafInput), index, checkpoint.size, proof.audit_path, checkpoint.root);
    if (!included) throw new CommandError(`the inclusion proof of entry ${index} does not verify against the checkpoint`);

    let cosigned = null;
    if (cp.cosigned_checkpoint) {
      const witnessed = verifyCheckpoint(cp.cosigned_checkpoint, origin, keys);
      const at = verifyCosignature(cp.cosigned_checkpoint, `xinyi/${directory.registryId}`, directory.registryCerts());
      let consistent = witnessed.size === checkpoint.size && witnessed.root.equals(checkpoint.root);
      if (witnessed.size > 0n && witnessed.size < checkpoint.size) {
        const { consistency } = await call(stub, 'GetConsistencyProof',
          { first: witnessed.size.toString(), second: checkpoint.size.toString() }, 30);
        consistent = verifyConsistency(witnessed.size, checkpoint.size, witnessed.root, checkpoint.root, consistency);
      }
      if (!consistent) throw new CommandError('the latest checkpoint is not consistent with the cosigned one');
      cosigned = new Map([['tree_size', Number(witnessed.size)], ['timestamp', Number(at)], ['consistent', true]]);
    }
    const out = new Map([['node', nodeId], ['origin', origin], ['tree_size', Number(checkpoint.size)],
      ['root', checkpoint.root.toString('base64')], ['leaf_index', index], ['request_hash', requestHash],
      ['included', true], ['cosigned', cosigned]]);
    if (values.json) printJson(out);
    else console.log(`entry ${index} of ${origin} (query ${requestHash.slice(0, 16)}…) is in the signed tree of size `
      + `${checkpoint.size}${cosigned ? `; witness cosigned size ${cosigned.get('tree_size')}, consistent` : ''}`);
  } finally {
    stub.close();
  }
}

run('audit.js', USAGE, {
  identity: { type: 'string' }, node: { type: 'string' }, 'node-id': { type: 'string' }, 'request-hash': { type: 'string' },
}, ['identity', 'node', 'node-id', 'request-hash'], audit);
