-- The SQS queue's outbox: a pending task whose message was never sent (the
-- host stopped, or SQS refused, between the commit and the send) is found
-- by the sweeper and sent then. Other queues leave it false.
ALTER TABLE tasks ADD COLUMN enqueued boolean NOT NULL DEFAULT false;
CREATE INDEX tasks_unsent ON tasks (updated_at) WHERE status = 'pending' AND NOT enqueued;
