-- Retention: finished tasks are deleted by age. A finished task's
-- `updated_at` is when it finished (its last write; a restored one keeps its
-- `finished_at`), so the retention job finds what is due, oldest first, here.
CREATE INDEX tasks_finished ON tasks (status, updated_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- Counts by status without a scan of a table that grows by every task.
-- Every statement that inserts, changes or deletes tasks appends its net
-- change per status to `task_count_changes`: appends only, so writers never
-- wait for one another on a counter row. The host running the retention job
-- folds them into `task_counts` every few seconds; a count is the sum of both.
-- (TRUNCATE is not counted: delete rows instead.)
LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE task_counts (
    status text PRIMARY KEY,
    n bigint NOT NULL
);
CREATE TABLE task_count_changes (
    status text NOT NULL,
    n bigint NOT NULL
);
INSERT INTO task_counts (status, n) SELECT status, count(*) FROM tasks GROUP BY status;

CREATE FUNCTION taskflow_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_changes (status, n)
        SELECT status, count(*) FROM inserted GROUP BY status;
    RETURN NULL;
END
$$;
CREATE FUNCTION taskflow_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_changes (status, n)
        SELECT status, sum(n) FROM (
            SELECT status, 1 AS n FROM changed_to
            UNION ALL
            SELECT status, -1 FROM changed_from
        ) changes GROUP BY status HAVING sum(n) <> 0;
    RETURN NULL;
END
$$;
CREATE FUNCTION taskflow_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_changes (status, n)
        SELECT status, -count(*) FROM deleted GROUP BY status;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_count_inserted AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_count_inserted();
CREATE TRIGGER tasks_count_updated AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS changed_from NEW TABLE AS changed_to
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_count_updated();
CREATE TRIGGER tasks_count_deleted AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_count_deleted();

-- Jobs one host of the fleet runs at a time (retention): held by `owner`
-- until `held_until`, renewed by it while it runs them, taken over after.
CREATE TABLE fleet_jobs (
    name text PRIMARY KEY,
    owner text NOT NULL,
    held_until timestamptz NOT NULL
);
