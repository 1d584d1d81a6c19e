-- The settings every host of a fleet must share (queue, its SQS prefix,
-- where large bodies go): the first host records them, and a host started
-- with other ones refuses to start instead of taking tasks it cannot run.
CREATE TABLE fleet_settings (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    settings jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
