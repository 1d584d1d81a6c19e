-- Plugins uploaded through any host, for every host: the latest version of
-- each name with its bytes, or a tombstone (digest NULL) once removed.
-- `version` orders the changes across names, so a host asks only for what
-- changed since the last one it applied.
CREATE SEQUENCE plugin_changes AS bigint;

CREATE TABLE plugins (
    name text PRIMARY KEY,
    digest text,
    wasm bytea,
    version bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION taskflow_notify_plugins() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskflow_plugins', NEW.name);
    RETURN NULL;
END
$$;
CREATE TRIGGER plugins_changed AFTER INSERT OR UPDATE ON plugins
    FOR EACH ROW EXECUTE FUNCTION taskflow_notify_plugins();
