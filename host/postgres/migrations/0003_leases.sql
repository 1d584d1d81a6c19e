-- Ownership by lease: a running task belongs to the host named in `owner`
-- until `lease_expires_at`; `lease_token` grows with every claim and fences
-- the holder's writes. `cancel_requested` and `progress` carry a cancel
-- request to the holder and its progress to every host.
ALTER TABLE tasks
    ADD COLUMN owner text,
    ADD COLUMN lease_token bigint NOT NULL DEFAULT 0,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false,
    ADD COLUMN progress smallint,
    -- The tasks table as a queue (TASKFLOW_QUEUE=postgres): a pending task
    -- is claimable from `visible_at` on (NULL: at once).
    ADD COLUMN visible_at timestamptz;

-- Claiming in priority order, then submission order.
CREATE INDEX tasks_ready ON tasks (priority, sequence) WHERE status = 'pending';
-- The reaper's scan.
CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE status = 'running';

-- Wakes waiting hosts when a task becomes pending (best effort: they poll too).
CREATE FUNCTION taskflow_notify_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskflow_pending', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_pending AFTER INSERT OR UPDATE OF status ON tasks
    FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION taskflow_notify_pending();
