'use strict';
// What both commands share: options, and failures printed as `xinyi` prints them (one line on
// stderr; with --json also {"error": ...} on stdout), exit status 1 (failed) or 2 (usage).
const { parseArgs } = require('node:util');
const pyjson = require('./pyjson');
const { CheckError } = require('./pki');
const { RpcFailure } = require('./rpc');

class CommandError extends Error {
  constructor(message, { code = 1, status = '', reason = '', fields = [], detail = '' } = {}) {
    super(message);
    Object.assign(this, { exitStatus: code, status: status || (code === 2 ? 'USAGE' : 'FAILED'), reason, fields, detail });
  }

  toJSON() {
    return new Map([['error', new Map([['code', this.status], ['reason', this.reason],
      ['message', this.detail || this.message],
      ['fields', this.fields.map(([f, d]) => new Map([['field', f], ['description', d]]))],
      ['exit_status', this.exitStatus]])]]);
  }
}

function fromRpc(f) {
  const hints = { UNAVAILABLE: ' (is the server running, and is this the right address?)',
    DEADLINE_EXCEEDED: ' (the server did not answer in time)' };
  return new CommandError(`${f.code}: ${f.detail}${hints[f.code] || ''}`,
    { status: f.code, reason: f.reason, fields: f.fields, detail: f.detail });
}

// Run `main(values)` with the options parsed; print its failure and set the exit status.
async function run(name, usage, options, required, main) {
  let values;
  let printedJson = false;
  const printJson = (obj) => { process.stdout.write(`${pyjson.dumps(obj)}\n`); printedJson = true; };
  try {
    try {
      ({ values } = parseArgs({ options: { ...options, json: { type: 'boolean' } }, strict: true }));
    } catch (e) {
      throw new CommandError(`${e.message}\nusage: ${usage}`, { code: 2 });
    }
    const missing = required.filter((o) => values[o] === undefined);
    if (missing.length) throw new CommandError(`missing --${missing.join(', --')}\nusage: ${usage}`, { code: 2 });
    await main(values, printJson);
  } catch (e) {
    let error = e;
    if (e instanceof RpcFailure) error = fromRpc(e);
    else if (e instanceof CheckError) error = new CommandError(e.message, { reason: e.reason });
    else if (!(e instanceof CommandError)) error = new CommandError(`unexpected failure: ${e.stack || e}`);
    if (values && values.json && !printedJson) printJson(error.toJSON());
    process.stderr.write(`${name}: ${error.message}\n`);
    process.exitCode = error.exitStatus;
  }
}

module.exports = { run, CommandError };
