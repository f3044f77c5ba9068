-- The registry's schema as the first release (0.1.0, commit 1bc5972) created it on postgresql: the
-- statements its create_schema (metadata.create_all) sent, captured. Frozen: never edit.

CREATE TABLE audit_log (
	idx BIGINT NOT NULL, 
	leaf_input BYTEA NOT NULL, 
	leaf_hash BYTEA NOT NULL, 
	at_ms BIGINT NOT NULL, 
	caller_id VARCHAR(64) NOT NULL, 
	action VARCHAR(32) NOT NULL, 
	uscc VARCHAR(18) NOT NULL, 
	decision VARCHAR(8) NOT NULL, 
	request_hash VARCHAR(64) NOT NULL, 
	PRIMARY KEY (idx)
);

CREATE INDEX ix_audit_log_leaf_hash ON audit_log (leaf_hash);

CREATE INDEX ix_audit_log_uscc_idx ON audit_log (uscc, idx);

CREATE INDEX ix_audit_log_request_hash ON audit_log (request_hash);

CREATE TABLE audit_checkpoints (
	size BIGINT NOT NULL, 
	root BYTEA NOT NULL, 
	note TEXT NOT NULL, 
	at_ms BIGINT NOT NULL, 
	PRIMARY KEY (size)
);

CREATE TABLE consents (
	consent_id VARCHAR(64) NOT NULL, 
	uscc VARCHAR(18) NOT NULL, 
	grantee VARCHAR(18) NOT NULL, 
	purpose VARCHAR(64) NOT NULL, 
	categories TEXT NOT NULL, 
	valid_from_ms BIGINT NOT NULL, 
	valid_until_ms BIGINT NOT NULL, 
	envelope BYTEA NOT NULL, 
	detail_level VARCHAR(8) NOT NULL, 
	history_months INTEGER NOT NULL, 
	fetch_type VARCHAR(8) NOT NULL, 
	max_fetches INTEGER NOT NULL, 
	fetch_period VARCHAR(8) NOT NULL, 
	signed_by VARCHAR(96) NOT NULL, 
	co_grantee VARCHAR(18) NOT NULL, 
	delegation BYTEA, 
	state VARCHAR(8) NOT NULL, 
	state_at_ms BIGINT NOT NULL, 
	received_at_ms BIGINT NOT NULL, 
	PRIMARY KEY (consent_id)
);

CREATE INDEX ix_consents_uscc ON consents (uscc);

CREATE TABLE consent_changes (
	consent_id VARCHAR(64) NOT NULL, 
	at_ms BIGINT NOT NULL, 
	envelope BYTEA NOT NULL, 
	PRIMARY KEY (consent_id, at_ms)
);

CREATE TABLE consent_uses (
	consent_id VARCHAR(64) NOT NULL, 
	request_hash VARCHAR(64) NOT NULL, 
	asker VARCHAR(64) NOT NULL, 
	at_ms BIGINT NOT NULL, 
	PRIMARY KEY (consent_id, request_hash)
);

CREATE TABLE seen_nonces (
	signer VARCHAR(64) NOT NULL, 
	nonce BYTEA NOT NULL, 
	expires_at_ms BIGINT NOT NULL, 
	PRIMARY KEY (signer, nonce)
);

CREATE INDEX ix_seen_nonces_expires_at_ms ON seen_nonces (expires_at_ms);

CREATE TABLE nodes (
	node_id VARCHAR(6) NOT NULL, 
	endpoint VARCHAR(255) NOT NULL, 
	signing_cert BYTEA NOT NULL, 
	registered_at_ms BIGINT NOT NULL, 
	PRIMARY KEY (node_id)
);

CREATE TABLE holding_claims (
	node_id VARCHAR(6) NOT NULL, 
	uscc VARCHAR(18) NOT NULL, 
	state VARCHAR(8) NOT NULL, 
	claimed_at_ms BIGINT NOT NULL, 
	decided_at_ms BIGINT NOT NULL, 
	PRIMARY KEY (node_id, uscc)
);

CREATE TABLE institutions (
	institution_id VARCHAR(18) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	licence VARCHAR(64) NOT NULL, 
	registered_at_ms BIGINT NOT NULL, 
	PRIMARY KEY (institution_id, role)
);

CREATE TABLE key_history (
	principal VARCHAR(64) NOT NULL, 
	valid_from_ms BIGINT NOT NULL, 
	signing_cert BYTEA NOT NULL, 
	valid_until_ms BIGINT NOT NULL, 
	PRIMARY KEY (principal, valid_from_ms)
);

CREATE TABLE witnessed_logs (
	origin VARCHAR(64) NOT NULL, 
	size BIGINT NOT NULL, 
	root BYTEA NOT NULL, 
	note TEXT NOT NULL, 
	at_ms BIGINT NOT NULL, 
	PRIMARY KEY (origin)
);

CREATE TABLE consent_events (
	seq BIGSERIAL NOT NULL, 
	consent_id VARCHAR(64) NOT NULL, 
	PRIMARY KEY (seq)
);

CREATE TABLE consent_heads (
	consent_id VARCHAR(64) NOT NULL, 
	seq BIGINT NOT NULL, 
	PRIMARY KEY (consent_id), 
	UNIQUE (seq)
);

CREATE TABLE consent_node_results (
	consent_id VARCHAR(64) NOT NULL, 
	request_hash VARCHAR(64) NOT NULL, 
	node_id VARCHAR(6) NOT NULL, 
	outcome INTEGER NOT NULL, 
	at_ms BIGINT NOT NULL, 
	PRIMARY KEY (consent_id, request_hash, node_id)
);

CREATE TABLE consent_deliveries (
	consent_id VARCHAR(64) NOT NULL, 
	node_id VARCHAR(6) NOT NULL, 
	version INTEGER NOT NULL, 
	ack_seq BIGINT NOT NULL, 
	delivered BOOLEAN NOT NULL, 
	PRIMARY KEY (consent_id, node_id)
);

CREATE INDEX ix_consent_deliveries_waiting ON consent_deliveries (node_id, delivered);

CREATE TABLE delegations (
	uscc VARCHAR(18) NOT NULL, 
	representative VARCHAR(64) NOT NULL, 
	valid_until_ms BIGINT NOT NULL, 
	revoked BOOLEAN NOT NULL, 
	issued_at_ms BIGINT NOT NULL, 
	envelope BYTEA NOT NULL, 
	PRIMARY KEY (uscc, representative)
);

CREATE TABLE models (
	sha256 BYTEA NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	submitted_by VARCHAR(64) NOT NULL, 
	envelope BYTEA NOT NULL, 
	onnx BYTEA NOT NULL, 
	approval BYTEA, 
	submitted_at_ms BIGINT NOT NULL, 
	PRIMARY KEY (sha256)
);

CREATE TABLE authorities (
	subject_sha256 BYTEA NOT NULL, 
	certificate BYTEA NOT NULL, 
	published_at_ms BIGINT NOT NULL, 
	PRIMARY KEY (subject_sha256)
);

CREATE TABLE revocation_lists (
	issuer_sha256 BYTEA NOT NULL, 
	crl_number BIGINT NOT NULL, 
	crl BYTEA NOT NULL, 
	published_at_ms BIGINT NOT NULL, 
	PRIMARY KEY (issuer_sha256)
);

CREATE TABLE registry_meta (
	key VARCHAR(32) NOT NULL, 
	value BIGINT NOT NULL, 
	PRIMARY KEY (key)
);
