'use strict';
// The contract, loaded from proto/ as it is (no generated code): protobufjs types for the
// signed bodies and audit records, @grpc/proto-loader service definitions for the calls.
const path = require('node:path');
const protobuf = require('protobufjs');
const protoLoader = require('@grpc/proto-loader');
const grpc = require('@grpc/grpc-js');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'proto');
const FILES = ['xinyi/v1/registry.proto', 'xinyi/v1/audit.proto', 'xinyi/v1/query.proto',
  'xinyi/v1/directory.proto', 'xinyi/v1/envelope.proto'];

// google.rpc.Status and the two details the servers attach (ErrorInfo, BadRequest), as in
// googleapis' google/rpc/status.proto and error_details.proto: what a refusal carries.
const GOOGLE_RPC = {
  nested: { google: { nested: { rpc: { nested: {
    Status: { fields: { code: { type: 'int32', id: 1 }, message: { type: 'string', id: 2 },
      details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 } } },
    ErrorInfo: { fields: { reason: { type: 'string', id: 1 }, domain: { type: 'string', id: 2 },
      metadata: { keyType: 'string', type: 'string', id: 3 } } },
    BadRequest: { fields: { fieldViolations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
      nested: { FieldViolation: { fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } } } } },
  } } } } },
};

const root = new protobuf.Root();
root.resolvePath = (origin, target) => path.join(PROTO_ROOT, target);
root.loadSync(FILES, { keepCase: true });
root.addJSON(protobuf.common['google/protobuf/any.proto'].nested);
root.addJSON(GOOGLE_RPC.nested);
root.resolveAll();

const type = (name) => root.lookupType(name);

// Services for grpc-js: int64 as strings (exact), bytes as Buffers, enums by name.
const definition = protoLoader.loadSync(FILES, {
  includeDirs: [PROTO_ROOT], keepCase: true, longs: String, enums: String, bytes: Buffer, defaults: true, oneofs: true,
});
const services = grpc.loadPackageDefinition(definition).xinyi.v1;

module.exports = { root, type, services, PROTO_ROOT };
