-- A received message's bytes live in a table of their own. SQLite rewrites
-- a whole row on every UPDATE, overflow pages included: with the message
-- in the inbound row, claiming and finishing a message wrote its bytes
-- twice more (the daemon wrote 149 KB a renewal under kms-load before this,
-- 138 KB after). The queue row is now a few dozen bytes; the message is
-- written once.
CREATE TABLE inbound_raw (
    inbound_id INTEGER PRIMARY KEY REFERENCES inbound (id) ON DELETE CASCADE,
    raw        BLOB    NOT NULL
);
INSERT INTO inbound_raw (inbound_id, raw) SELECT id, raw FROM inbound;
ALTER TABLE inbound DROP COLUMN raw;
