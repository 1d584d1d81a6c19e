-- The outbox's sweepers claim what they send: a pending task never sent is
-- taken by one host's sweeper until `sweep_after` (another host's skips it
-- meanwhile, and takes it after, should the first stop before sending).
ALTER TABLE tasks ADD COLUMN sweep_after timestamptz;
