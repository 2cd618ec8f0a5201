-- The inbound and outbox queues are claimed in (next_attempt_at, id)
-- order. With id in the index the claim reads the first rows of the index
-- and stops; ordering by id alone sorted every pending row on each claim,
-- which made a backlog of thousands of received messages (a burst of
-- renewals) cost more to claim the longer it grew. (SQLite keeps the rowid
-- in every index anyway; PostgreSQL needs it spelled out.)
DROP INDEX inbound_pending;
CREATE INDEX inbound_pending ON inbound (next_attempt_at, id) WHERE state = 'pending';
DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (next_attempt_at, id) WHERE state = 'pending';
