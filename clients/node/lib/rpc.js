'use strict';
// Mutual-TLS channels that pin the server's identity, and failures read as the Python client
// reads them: the gRPC status name, and the reason and fields of google.rpc.Status details.
const grpc = require('@grpc/grpc-js');
const { services, type } = require('./proto');
const { tlsServerName, tlsRoleName } = require('./pki');

const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

// A stub of `service` at `target` ("host:port") whose certificate must carry the TLS name of
// `expect`: {role, id} gives "<role>-<id>.xinyi", a role alone "<role>.xinyi".
function client(bundle, service, target, expect) {
  const name = expect.id ? tlsServerName(expect) : tlsRoleName(expect.role);
  const credentials = grpc.credentials.createSsl(bundle.caPem, bundle.tlsKeyPem, bundle.tlsCertPem);
  return new services[service](target, credentials, {
    'grpc.ssl_target_name_override': name,
    'grpc.default_authority': name,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  });
}

class RpcFailure extends Error {
  constructor(code, message, reason = '', fields = []) {
    super(`${code}: ${message}`);
    Object.assign(this, { code, detail: message, reason, fields });
  }

  static from(error) {
    let reason = '';
    let fields = [];
    const details = error.metadata && error.metadata.get('grpc-status-details-bin')[0];
    if (details) {
      try {
        for (const any of type('google.rpc.Status').decode(details).details) {
          if (any.type_url.endsWith('/google.rpc.ErrorInfo')) reason = type('google.rpc.ErrorInfo').decode(any.value).reason;
          if (any.type_url.endsWith('/google.rpc.BadRequest')) {
            fields = type('google.rpc.BadRequest').decode(any.value).fieldViolations.map((v) => [v.field, v.description]);
          }
        }
      } catch { /* a peer's malformed details are ignored, as the Python client does */ }
    }
    return new RpcFailure(CODE_NAMES[error.code] || 'UNKNOWN', error.details || '', reason, fields);
  }
}

// stub.method(request) as a promise, with a deadline in seconds.
function call(stub, method, request, timeoutS) {
  return new Promise((resolve, reject) => {
    stub[method](request, { deadline: Date.now() + timeoutS * 1000 }, (error, response) => {
      if (error) reject(RpcFailure.from(error));
      else resolve(response);
    });
  });
}

module.exports = { client, call, RpcFailure };
