-- Blobs by key, for a fleet without S3: the bytes of its plugins
-- (`plugins/<sha-256>.wasm`). The plugin catalog keeps only the digest now.
CREATE TABLE blobs (
    key text PRIMARY KEY,
    bytes bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO blobs (key, bytes)
    SELECT 'plugins/' || digest || '.wasm', wasm FROM plugins WHERE wasm IS NOT NULL
    ON CONFLICT (key) DO NOTHING;

ALTER TABLE plugins DROP COLUMN wasm;
