-- The log lines of a running attempt so far, as its host's heartbeat
-- publishes them (JSON: {"lines": [...], "dropped": n}), for every host to
-- show while the attempt runs. Like `progress`, cleared by a new claim and
-- when the task stops running. Nullable: no table rewrite.
ALTER TABLE tasks ADD COLUMN live_logs text;
