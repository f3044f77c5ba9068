'use strict';
// The registry-signed directory: which nodes exist, the key each signs with (and the keys it
// replaced), and who routes for an enterprise.
const { verify } = require('./envelope');
const { CheckError } = require('./pki');

// An old key still signs for this long after it was replaced (statements in flight).
const ROTATION_GRACE_MS = 2 * 60_000;

const num = (v) => Number(v || 0);

// Whether `signerCert` is the key the directory lists, or a replaced one in use at signedAtMs.
function listedKey(current, previous, signerCert, signedAtMs) {
  if (Buffer.compare(Buffer.from(current), Buffer.from(signerCert)) === 0) return true;
  return (previous || []).some((p) => Buffer.compare(Buffer.from(p.signing_cert), Buffer.from(signerCert)) === 0
    && num(p.valid_from_ms) - ROTATION_GRACE_MS <= signedAtMs && signedAtMs <= num(p.valid_until_ms) + ROTATION_GRACE_MS);
}

// County, city, province: the nodes that serve an area (510104 -> 510104, 510100, 510000).
function routeAreaCodes(area) {
  return [...new Set([area, `${area.slice(0, 4)}00`, `${area.slice(0, 2)}0000`])];
}

function verifyDirectory(envelope, trust, { atMs } = {}) {
  const v = verify(envelope, 'xinyi.v1.DirectoryBody', trust, { roles: ['registry'], field: 'directory', atMs });
  const body = v.message;
  if (v.signer.id !== body.registry_id) {
    throw new CheckError('BAD_SIGNATURE', `directory.registry_id names ${body.registry_id} but was signed by ${v.signer}`);
  }
  const nodes = new Map(body.nodes.map((n) => [n.node_id, n]));
  const holdings = new Map();
  for (const h of body.holdings) {
    if (!holdings.has(h.uscc)) holdings.set(h.uscc, new Set());
    holdings.get(h.uscc).add(h.node_id);
  }
  return {
    version: num(body.version),
    registryId: body.registry_id,
    nodes,
    institutions: new Set(body.institutions.map((i) => i.id)),
    envelope,
    // Node ids to ask about an enterprise: its area's nodes, then approved holdings.
    route(uscc) {
      const byArea = routeAreaCodes(uscc.slice(2, 8)).filter((n) => nodes.has(n));
      const extra = [...(holdings.get(uscc) || [])].filter((n) => nodes.has(n) && !byArea.includes(n)).sort();
      return [...byArea, ...extra];
    },
    // Every signing certificate a node has used, current first.
    nodeKeys(nodeId) {
      const e = nodes.get(nodeId);
      return e ? [e.signing_cert, ...[...e.previous_keys].reverse().map((p) => p.signing_cert)] : [];
    },
    // The registry's signing certificates, current (the directory's signer) first.
    registryCerts() {
      return [envelope.signer_cert, ...[...body.registry_keys].reverse().map((p) => p.signing_cert)];
    },
  };
}

module.exports = { verifyDirectory, listedKey, routeAreaCodes, ROTATION_GRACE_MS };
