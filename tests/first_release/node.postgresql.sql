-- The node's schema as the first release (0.1.0, commit 1bc5972) created it on postgresql: the
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

CREATE INDEX ix_audit_log_request_hash ON audit_log (request_hash);

CREATE INDEX ix_audit_log_uscc_idx ON audit_log (uscc, idx);

CREATE INDEX ix_audit_log_leaf_hash ON audit_log (leaf_hash);

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

CREATE TABLE records (
	id BIGSERIAL NOT NULL, 
	record_key VARCHAR(64) NOT NULL, 
	uscc VARCHAR(18) NOT NULL, 
	category VARCHAR(32) NOT NULL, 
	as_of VARCHAR(10) NOT NULL, 
	source VARCHAR(128) NOT NULL, 
	fields_json TEXT NOT NULL, 
	ingested_at_ms BIGINT NOT NULL, 
	superseded_by VARCHAR(64), 
	PRIMARY KEY (id), 
	UNIQUE (record_key)
);

CREATE INDEX ix_records_uscc_category ON records (uscc, category);

CREATE TABLE disputes (
	dispute_id VARCHAR(32) NOT NULL, 
	record_key VARCHAR(64) NOT NULL, 
	uscc VARCHAR(18) NOT NULL, 
	reason TEXT NOT NULL, 
	filed_by VARCHAR(96) NOT NULL, 
	filed_at_ms BIGINT NOT NULL, 
	due_ms BIGINT NOT NULL, 
	envelope BYTEA NOT NULL, 
	status VARCHAR(10) NOT NULL, 
	resolution TEXT NOT NULL, 
	resolved_at_ms BIGINT, 
	corrected_key VARCHAR(64), 
	PRIMARY KEY (dispute_id)
);

CREATE INDEX ix_disputes_record_key ON disputes (record_key);

CREATE INDEX ix_disputes_uscc ON disputes (uscc);

CREATE TABLE node_state (
	key VARCHAR(32) NOT NULL, 
	value BIGINT NOT NULL, 
	PRIMARY KEY (key)
);

CREATE TABLE alert_subscriptions (
	bank VARCHAR(18) NOT NULL, 
	uscc VARCHAR(18) NOT NULL, 
	consent_id VARCHAR(32) NOT NULL, 
	since_ms BIGINT NOT NULL, 
	PRIMARY KEY (bank, uscc, consent_id)
);

CREATE INDEX ix_alert_subscriptions_uscc ON alert_subscriptions (uscc);

CREATE TABLE alerts (
	seq BIGSERIAL NOT NULL, 
	uscc VARCHAR(18) NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	summary VARCHAR(200) NOT NULL, 
	record_key VARCHAR(64) NOT NULL, 
	detected_at_ms BIGINT NOT NULL, 
	PRIMARY KEY (seq), 
	CONSTRAINT uq_alerts_record_kind UNIQUE (record_key, kind)
);

CREATE INDEX ix_alerts_detected_at_ms ON alerts (detected_at_ms);

CREATE INDEX ix_alerts_uscc_seq ON alerts (uscc, seq);

CREATE TABLE privacy_budget (
	requester VARCHAR(128) NOT NULL, 
	year INTEGER NOT NULL, 
	spent DOUBLE PRECISION NOT NULL, 
	updated_at_ms BIGINT NOT NULL, 
	PRIMARY KEY (requester, year)
);
