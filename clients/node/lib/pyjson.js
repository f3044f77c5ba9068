'use strict';
// JSON as the Python CLI reads and prints it, so that this client's output is byte-equal to
// `xinyi query --json`: Python's json.loads keeps 1 (int) apart from 1.0 (float), and
// json.dumps(indent=2, ensure_ascii=False) prints a float with Python's repr (1.0, 1e-05,
// 1e+16). JSON.parse/JSON.stringify lose that, and reorder integer-like object keys.
// parse() gives Maps (objects, key order kept), arrays, strings, booleans, null, PyInt and
// PyFloat; dumps() prints those, and plain objects and numbers too.

class PyInt {
  constructor(text) { this.value = BigInt(text); }
  toJSON() { return Number(this.value); }
}

class PyFloat {
  constructor(value) { this.value = value; }
  toJSON() { return this.value; }
}

function parse(text) {
  let i = 0;
  const fail = (what) => { throw new SyntaxError(`JSON: ${what} at offset ${i}`); };
  const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i])) i++; };
  function value() {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const out = new Map();
      ws();
      if (text[i] === '}') { i++; return out; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const key = string();
        ws();
        if (text[i++] !== ':') fail("expected ':'");
        out.set(key, value());  // a repeated key keeps its first place and its last value, as in Python
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i++] === '}') return out;
        fail("expected ',' or '}'");
      }
    }
    if (c === '[') {
      i++;
      const out = [];
      ws();
      if (text[i] === ']') { i++; return out; }
      for (;;) {
        out.push(value());
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i++] === ']') return out;
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return string();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, i)) { i += word.length; return v; }
    }
    const m = /^-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?/.exec(text.slice(i));
    if (!m) fail('unexpected character');
    i += m[0].length;
    return m[1] || m[2] ? new PyFloat(Number(m[0])) : new PyInt(m[0]);
  }
  function string() {
    const m = /^"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/.exec(text.slice(i));
    if (!m) fail('bad string');
    i += m[0].length;
    return JSON.parse(m[0]);
  }
  const out = value();
  ws();
  if (i !== text.length) fail('extra data');
  return out;
}

// Python's repr of a float: the shortest digits that round-trip (as JavaScript's), fixed
// notation for exponents -4..15 with at least one decimal, else d.ddde+XX.
function floatRepr(x) {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, expText] = x.toExponential().split('e');
  const exp = Number(expText);
  const sign = mantissa.startsWith('-') ? '-' : '';
  const digits = mantissa.replace('-', '').replace('.', '');
  if (exp >= -4 && exp < 16) {
    if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
    const whole = digits.padEnd(exp + 1, '0');
    const frac = digits.slice(exp + 1);
    return `${sign}${whole.slice(0, exp + 1)}.${frac || '0'}`;
  }
  const e = `${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  return `${sign}${digits[0]}${digits.length > 1 ? '.' + digits.slice(1) : ''}e${e}`;
}

function dumps(value, indent = 2, level = 0) {
  const pad = (n) => ' '.repeat(indent * n);
  if (value === null || value === undefined) return 'null';
  if (value === true) return 'true';
  if (value === false) return 'false';
  if (value instanceof PyInt) return value.value.toString();
  if (value instanceof PyFloat) return floatRepr(value.value);
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number') return Number.isInteger(value) ? String(value) : floatRepr(value);
  if (typeof value === 'string') return JSON.stringify(value);
  const entries = Array.isArray(value) ? value.map((v) => [null, v])
    : value instanceof Map ? [...value.entries()] : Object.entries(value);
  const [open, close] = Array.isArray(value) ? ['[', ']'] : ['{', '}'];
  if (entries.length === 0) return open + close;
  const items = entries.map(([k, v]) => pad(level + 1) + (k === null ? '' : JSON.stringify(String(k)) + ': ')
    + dumps(v, indent, level + 1));
  return `${open}\n${items.join(',\n')}\n${pad(level)}${close}`;
}

module.exports = { parse, dumps, floatRepr, PyInt, PyFloat };
