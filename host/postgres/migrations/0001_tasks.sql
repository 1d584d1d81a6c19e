-- Task metadata: one row per task. `doc` holds the whole task as the JSON
-- text of a task file of the embedded store (text, not jsonb: jsonb cannot
-- hold a "\u0000" that a payload or result may carry); the other columns are
-- copies of the fields that queries filter and sort by.
CREATE TABLE tasks (
    id uuid PRIMARY KEY,
    sequence bigint NOT NULL,
    plugin text NOT NULL,
    priority smallint NOT NULL,
    status text NOT NULL,
    idempotency_key text,
    doc text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Listing in submission order, whole or by status or plugin.
CREATE INDEX tasks_by_sequence ON tasks (sequence, id);
CREATE INDEX tasks_by_status ON tasks (status, sequence, id);
CREATE INDEX tasks_by_plugin ON tasks (plugin, sequence, id);
CREATE INDEX tasks_by_idempotency_key ON tasks (idempotency_key, sequence, id) WHERE idempotency_key IS NOT NULL;
