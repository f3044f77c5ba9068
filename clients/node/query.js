#!/usr/bin/env node
'use strict';
// A bank's (or guarantor's) signed query through the registry, as `xinyi query` makes it:
//   node clients/node/query.js --identity certs/bank-USCC --registry HOST:PORT --uscc USCC \
//        --purpose credit_assessment --categories registration,tax --consent ID [--timeout-ms N] [--json]
// Registers the institution, signs the query with a fresh nonce and one-time answer key,
// routes it, verifies the signed directory, opens and checks every answer. With --json it
// prints exactly what `xinyi query --json` prints for the same answers.
const { loadBundle } = require('./lib/pki');
const { verifyDirectory } = require('./lib/directory');
const { buildQuery, openAnswer, nodeView, QUERYING_ROLES } = require('./lib/query');
const { client, call } = require('./lib/rpc');
const { run, CommandError } = require('./lib/cli');
const { dumps } = require('./lib/pyjson');

const STATUS_NAMES = { NODE_OUTCOME_OK: 'ok', NODE_OUTCOME_NO_DATA: 'no_data', NODE_OUTCOME_DENIED: 'denied',
  NODE_OUTCOME_UNAVAILABLE: 'unavailable', NODE_OUTCOME_TIMEOUT: 'timeout' };
const USAGE = 'query.js --identity DIR --registry HOST:PORT --uscc USCC --purpose P --categories a,b --consent ID '
  + '[--timeout-ms N] [--json]';

async function query(values, printJson) {
  const bundle = loadBundle(values.identity);
  if (!QUERYING_ROLES.includes(bundle.principal.role)) {
    throw new CommandError(`--identity ${values.identity} is a ${bundle.principal.role} identity; this command needs `
      + 'one of: bank or guarantor or government', { code: 2 });
  }
  const trust = bundle.trust();
  const registry = client(bundle, 'RegistryService', values.registry, { role: 'registry' });
  try {
    try {
      await call(registry, 'RegisterInstitution', {}, 10);  // idempotent: lets consents name this institution
    } catch (e) {
      process.stderr.write(`query.js: registering with the registry failed (${e.message}); querying anyway\n`);
    }
    const categories = values.categories.split(',').map((c) => c.trim()).filter(Boolean);
    const { envelope, answerKey, requestHash } = await buildQuery(bundle, {
      uscc: values.uscc, categories, purpose: values.purpose, consentId: values.consent });
    const response = await call(registry, 'RouteQuery',
      { query: envelope, per_node_timeout_ms: Number(values['timeout-ms'] || 0) }, 60);

    let directory = null;
    const fetchDirectory = async () => {
      const known = directory ? directory.version : 0;
      const r = await call(registry, 'GetDirectory', { known_version: known }, 10);
      const fresh = verifyDirectory(r.directory, trust);
      if (directory && fresh.version < directory.version) {
        throw new CommandError(`registry served directory version ${fresh.version}, older than ${directory.version}`);
      }
      directory = fresh;
      return directory;
    };
    await fetchDirectory();

    const open = async (result) => {
      const status = STATUS_NAMES[result.outcome] || 'unavailable';
      if (!result.sealed_answer || result.sealed_answer.length === 0) {
        return nodeView(result.node_id, status, false, { error: result.error_message || null });
      }
      const entry = directory.nodes.get(result.node_id);
      if (!entry) return nodeView(result.node_id, 'invalid', false, { error: `node ${result.node_id} is not in the signed directory` });
      const opened = await openAnswer(result.sealed_answer, answerKey, {
        expectedNode: result.node_id, nodeSigningCert: entry.signing_cert, previousKeys: entry.previous_keys,
        requestHash, uscc: values.uscc, trust });
      // The outcome the relay reported is not trusted: the signed answer decides.
      const found = opened.records.length || opened.indicators.length;
      return nodeView(result.node_id, found ? 'ok' : 'no_data', true,
        { records: opened.records, indicators: opened.indicators });
    };

    const views = [];
    for (const result of response.results) {
      if (!directory.route(values.uscc).includes(result.node_id)) await fetchDirectory();
      if (!directory.route(values.uscc).includes(result.node_id)) {
        views.push(nodeView(result.node_id, 'invalid', false,
          { error: `node ${result.node_id} is not on this enterprise's route in the signed directory` }));
        continue;
      }
      let view;
      try {
        view = await open(result);
      } catch (e) {
        if (e.reason === 'UNLISTED_KEY') {  // the node renewed its key since the directory was fetched
          await fetchDirectory();
          try { view = await open(result); } catch (again) { view = nodeView(result.node_id, 'invalid', false, { error: again.message }); }
        } else if (e.reason) {
          view = nodeView(result.node_id, 'invalid', false, { error: e.message });
        } else {
          throw e;
        }
      }
      views.push(view);
    }
    const result = new Map([['uscc', values.uscc], ['request_hash', requestHash.toString('hex')], ['nodes', views]]);
    if (values.json) printJson(result);
    else printText(result);
    if (!views.some((v) => v.get('verified'))) {
      const reasons = views.map((v) => `${v.get('node')}: ${v.get('status')}${v.get('error') ? ` (${v.get('error')})` : ''}`);
      throw new CommandError(`no node answered: ${reasons.join('; ')}`);
    }
  } finally {
    registry.close();
  }
}

function printText(result) {
  console.log(`enterprise ${result.get('uscc')}   request ${result.get('request_hash').slice(0, 16)}…`);
  for (const n of result.get('nodes')) {
    console.log(`\nnode ${n.get('node')}: ${n.get('status')} (${n.get('verified') ? 'verified' : 'not verified'})`
      + (n.get('error') ? ` - ${n.get('error')}` : ''));
    for (const r of n.get('records')) console.log(`  ${dumps(r, 0).replace(/\n/g, ' ')}`);
    for (const i of n.get('indicators') || []) console.log(`  ${dumps(i, 0).replace(/\n/g, ' ')}`);
  }
}

run('query.js', USAGE, {
  identity: { type: 'string' }, registry: { type: 'string' }, uscc: { type: 'string' }, purpose: { type: 'string' },
  categories: { type: 'string' }, consent: { type: 'string' }, 'timeout-ms': { type: 'string' },
}, ['identity', 'registry', 'uscc', 'purpose', 'categories', 'consent'], query);
