-- kms schema, version 1 (SQLite).
-- Times are Unix milliseconds (BIGINT) in both dialects, so that the same
-- queries and indexes work on SQLite and PostgreSQL and sub-second policies
-- (a 60-second lifetime in tests) keep their order.

CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    email       TEXT    NOT NULL UNIQUE,      -- lower case, the address on record
    name        TEXT    NOT NULL DEFAULT '',
    state       TEXT    NOT NULL CHECK (state IN ('invited', 'active', 'lapsed', 'disabled')),
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

CREATE TABLE certificates (
    serial            TEXT    PRIMARY KEY,    -- lower-case hex, no leading zeros
    user_id           BIGINT  NOT NULL REFERENCES users (id),
    state             TEXT    NOT NULL CHECK (state IN ('current', 'superseded', 'expired', 'revoked')),
    not_before        BIGINT  NOT NULL,
    not_after         BIGINT  NOT NULL,
    issued_at         BIGINT  NOT NULL,
    key_hash          BLOB    NOT NULL,       -- SHA-256 of the SubjectPublicKeyInfo
    key_since         BIGINT  NOT NULL,       -- when kms first certified this key (rekey policy)
    imported          INTEGER NOT NULL DEFAULT 0,
    der               BLOB    NOT NULL,
    superseded_by     TEXT,
    revoked_at        BIGINT,
    revocation_reason INTEGER,
    next_reminder_at  BIGINT,                 -- NULL: no reminder pending
    last_reminder_at  BIGINT,
    reminders_sent    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX certificates_by_user ON certificates (user_id, state);
CREATE INDEX certificates_by_expiry ON certificates (state, not_after);
CREATE INDEX certificates_reminder_due ON certificates (next_reminder_at) WHERE next_reminder_at IS NOT NULL;
CREATE INDEX certificates_revoked ON certificates (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE enrollment_codes (
    id          INTEGER PRIMARY KEY,
    user_id     BIGINT  NOT NULL REFERENCES users (id),
    code_hash   BLOB    NOT NULL UNIQUE,
    state       TEXT    NOT NULL CHECK (state IN ('outstanding', 'used', 'cancelled')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    used_at     BIGINT
);
CREATE INDEX enrollment_codes_by_user ON enrollment_codes (user_id, state);

-- Mail to send. A row is written in the same transaction as the state change
-- that causes it; the outbox worker renders, signs and delivers it.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL,
    recipient       TEXT    NOT NULL,
    message_id      TEXT    NOT NULL UNIQUE,
    in_reply_to     TEXT    NOT NULL DEFAULT '',
    payload         TEXT    NOT NULL,         -- JSON, by kind
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      BIGINT  NOT NULL,
    next_attempt_at BIGINT  NOT NULL,
    claimed_until   BIGINT  NOT NULL DEFAULT 0,
    sent_at         BIGINT,
    last_error      TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_by_recipient ON outbox (recipient, created_at);

-- Mail received. A message is committed here before the SMTP 250 reply.
CREATE TABLE inbound (
    id              INTEGER PRIMARY KEY,
    digest          BLOB    NOT NULL UNIQUE,  -- SHA-256 of the raw message
    mail_from       TEXT    NOT NULL,
    remote_addr     TEXT    NOT NULL DEFAULT '',
    raw             BLOB    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'done', 'refused', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    received_at     BIGINT  NOT NULL,
    next_attempt_at BIGINT  NOT NULL,
    claimed_until   BIGINT  NOT NULL DEFAULT 0,
    processed_at    BIGINT,
    outcome         TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX inbound_pending ON inbound (next_attempt_at) WHERE state = 'pending';

-- Signatures already honoured, so the same signed request is never honoured twice.
CREATE TABLE seen_signatures (
    digest      BLOB    PRIMARY KEY,
    serial      TEXT    NOT NULL,
    seen_at     BIGINT  NOT NULL
);


-- Append-only record of every enrollment, issuance, revocation and refusal.
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    at          BIGINT  NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    email       TEXT    NOT NULL DEFAULT '',
    serial      TEXT    NOT NULL DEFAULT '',
    detail      TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_email ON audit (email, at);

-- Monotonic counters (CRL number).
CREATE TABLE counters (
    name        TEXT    PRIMARY KEY,
    value       BIGINT  NOT NULL
);

CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
