-- The task list's filters (GET /tasks, the dashboard): the host of a
-- task's latest attempt, how that attempt failed and when the task was
-- submitted, as columns PostgreSQL derives from the task document on every
-- write, so that no write path (nor a host of the previous version during a
-- rolling deploy) has to set them. Adding them rewrites the table once,
-- holding its lock meanwhile: on a large table, migrate in a quiet hour.
--
-- The document is text, not jsonb, because jsonb refuses the escape \u0000
-- that a payload may hold; here it is read as jsonb with each such escape
-- turned into U+FFFD, which changes only string contents these columns
-- never read (and leaves the JSON valid: in `\\u0000` it still follows an
-- escaped backslash). A cast from text to timestamptz is only STABLE, as it
-- reads the session's DateStyle and TimeZone; the documents hold RFC 3339
-- times with their offset, which both settings leave alone, so these
-- functions are immutable here.
CREATE FUNCTION taskflow_doc(text) RETURNS jsonb
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT replace($1, E'\\u0000', E'\\ufffd')::jsonb $$;
CREATE FUNCTION taskflow_rfc3339(text) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT $1::timestamptz $$;

ALTER TABLE tasks
    ADD COLUMN host text GENERATED ALWAYS AS (taskflow_doc(doc) ->> 'host') STORED,
    ADD COLUMN error_kind text GENERATED ALWAYS AS (taskflow_doc(doc) -> 'last_error' ->> 'kind') STORED,
    ADD COLUMN submitted_at timestamptz
        GENERATED ALWAYS AS (taskflow_rfc3339(taskflow_doc(doc) ->> 'created_at')) STORED;

-- Failed attempts are few: their kinds get an index. A host or a priority
-- matches a good share of the tasks, which the submission order index
-- finds soon enough; a time range starts where its first task is.
CREATE INDEX tasks_by_error_kind ON tasks (error_kind, sequence, id) WHERE error_kind IS NOT NULL;
CREATE INDEX tasks_by_submission ON tasks (submitted_at);
