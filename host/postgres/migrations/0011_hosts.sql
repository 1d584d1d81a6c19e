-- The hosts of the fleet, for the dashboard: each host writes its heartbeat
-- (name, version, workers, tasks running, plugins loaded) every few
-- seconds; hosts silent for a day are deleted by the next heartbeat.
CREATE TABLE hosts (
    name text PRIMARY KEY,
    beat text NOT NULL,
    seen_at timestamptz NOT NULL
);
