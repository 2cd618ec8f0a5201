-- A received message's bytes live in a table of their own, as on SQLite
-- (where every UPDATE of the queue row rewrote the message): the queue row
-- that claiming and finishing update stays small.
CREATE TABLE inbound_raw (
    inbound_id BIGINT PRIMARY KEY REFERENCES inbound (id) ON DELETE CASCADE,
    raw        BYTEA  NOT NULL
);
INSERT INTO inbound_raw (inbound_id, raw) SELECT id, raw FROM inbound;
ALTER TABLE inbound DROP COLUMN raw;
