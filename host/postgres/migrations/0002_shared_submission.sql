-- Submissions numbered by the database, so that every host sharing it
-- draws from one sequence; idempotency keys unique in the database, so
-- that racing submissions with one key create one task on any host.
CREATE SEQUENCE tasks_sequence AS bigint MINVALUE 0;
SELECT setval('tasks_sequence', COALESCE((SELECT max(sequence) + 1 FROM tasks), 1), false);

DROP INDEX tasks_by_idempotency_key;
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
