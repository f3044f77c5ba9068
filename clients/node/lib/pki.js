'use strict';
// Identities: the bundle `xinyi pki issue` writes, the principal a certificate names, and the
// checks on a signer's certificate (issued by the national root or an issuing CA it
// certified, inside its validity, an Ed25519 key).
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');

class CheckError extends Error {
  // `reason`: what was wrong, as the servers' ErrorInfo reasons name it (BAD_SIGNATURE,
  // BAD_CERTIFICATE, ...); `check`: which check of an answer failed (open, envelope, signer, ...).
  constructor(reason, message, check = '') { super(message); this.reason = reason; this.check = check; }
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

function readFile(dir, name, { optional = false } = {}) {
  const file = path.join(dir, name);
  try {
    return fs.readFileSync(file);
  } catch (e) {
    if (optional && e.code === 'ENOENT') return null;
    throw new CheckError('BAD_IDENTITY', `${file} is missing; issue the identity with \`xinyi pki issue\``);
  }
}

// xinyi://ROLE/ID from the one xinyi:// subjectAltName URI: the only place identity is read from.
function principalOf(cert) {
  const uris = [...(cert.subjectAltName || '').matchAll(/URI:"?(xinyi:\/\/[^,"\s]+)/g)].map((m) => m[1]);
  if (uris.length !== 1) throw new CheckError('BAD_CERTIFICATE', 'certificate must name exactly one xinyi:// principal');
  const m = /^xinyi:\/\/([a-z]+)\/([^/]+)$/.exec(uris[0]);
  if (!m) throw new CheckError('BAD_CERTIFICATE', `certificate names ${uris[0]}, not xinyi://ROLE/ID`);
  return { role: m[1], id: m[2], toString() { return `${this.role}/${this.id}`; } };
}

const tlsServerName = (principal) => `${principal.role}-${principal.id}.xinyi`;
const tlsRoleName = (role) => `${role}.xinyi`;

function validity(cert) {
  return [Date.parse(cert.validFrom), Date.parse(cert.validTo)];
}

function checkTimes(cert, atMs, what) {
  const [from, to] = validity(cert);
  if (atMs < from) throw new CheckError('BAD_CERTIFICATE', `${what} is not valid before ${new Date(from).toISOString()}`);
  if (atMs > to) throw new CheckError('BAD_CERTIFICATE', `${what} expired on ${new Date(to).toISOString()}`);
}

// What a party trusts: the national root, and issuing CAs shown to it (a signer's chain, a
// directory's authorities), each accepted only when the root signed it.
class TrustAnchor {
  constructor(rootPem) {
    this.root = new crypto.X509Certificate(rootPem);
  }

  issuerOf(cert, chainDer = []) {
    if (cert.checkIssued(this.root) && cert.verify(this.root.publicKey)) return this.root;
    for (const der of chainDer) {
      const ca = new crypto.X509Certificate(der);
      if (ca.ca && ca.checkIssued(this.root) && ca.verify(this.root.publicKey) && cert.checkIssued(ca)
          && cert.verify(ca.publicKey)) return ca;
    }
    return null;
  }

  // The principal and certificate of an Ed25519 signing certificate (DER), checked as of atMs.
  verifySigningCert(der, { chain = [], atMs = Date.now() } = {}) {
    let cert;
    try {
      cert = new crypto.X509Certificate(der);
    } catch {
      throw new CheckError('BAD_CERTIFICATE', 'signer certificate is not a DER X.509 certificate');
    }
    const principal = principalOf(cert);
    checkTimes(cert, atMs, 'signer certificate');
    if (chain.length > 2) throw new CheckError('BAD_CERTIFICATE', `signer chain holds ${chain.length} certificates; at most 2`);
    const issuer = this.issuerOf(cert, chain);
    if (issuer === null || cert.ca) {
      throw new CheckError('BAD_CERTIFICATE',
        'signer certificate was not issued by the national root or an issuing CA it certified');
    }
    if (issuer !== this.root) checkTimes(issuer, atMs, 'issuing CA certificate');
    if (cert.publicKey.asymmetricKeyType !== 'ed25519') {
      throw new CheckError('BAD_CERTIFICATE', 'signer certificate does not carry an Ed25519 signing key');
    }
    return { principal, cert };
  }
}

// A bundle directory D/ROLE-ID as `xinyi pki issue` writes it.
function loadBundle(dir) {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new CheckError('BAD_IDENTITY', `identity directory ${dir} does not exist; create it with \`xinyi pki issue\``);
  }
  const caPem = readFile(dir, 'ca.crt');
  const chainPem = readFile(dir, 'chain.crt', { optional: true });
  const tlsCertPem = readFile(dir, 'tls.crt');
  const signingCert = new crypto.X509Certificate(readFile(dir, 'signing.crt'));
  const signingKey = crypto.createPrivateKey(readFile(dir, 'signing.key'));
  const chain = chainPem ? (chainPem.toString().match(PEM_CERT) || []).map((p) => new crypto.X509Certificate(p)) : [];
  const principal = principalOf(signingCert);
  const tlsPrincipal = principalOf(new crypto.X509Certificate(tlsCertPem));
  if (`${tlsPrincipal}` !== `${principal}`) {
    throw new CheckError('BAD_IDENTITY', `${dir}: tls.crt names ${tlsPrincipal}, signing.crt ${principal}`);
  }
  if (signingKey.asymmetricKeyType !== 'ed25519') throw new CheckError('BAD_IDENTITY', `${dir}/signing.key must be Ed25519`);
  return {
    dir,
    principal,
    caPem,
    // The TLS certificate followed by its chain: what the server needs to reach the root.
    tlsCertPem: Buffer.concat([tlsCertPem, ...(chainPem ? [chainPem] : [])]),
    tlsKeyPem: readFile(dir, 'tls.key'),
    signingKey,
    signingCertDer: signingCert.raw,
    chainDer: chain.map((c) => c.raw),
    trust: () => new TrustAnchor(caPem),
  };
}

module.exports = { CheckError, TrustAnchor, loadBundle, principalOf, tlsServerName, tlsRoleName };
