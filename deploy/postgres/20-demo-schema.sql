-- A table for the `--profile app` demo (deploy/pgsource.yaml polls and captures it).
CREATE TABLE IF NOT EXISTS events (
    id         bigserial PRIMARY KEY,
    kind       text        NOT NULL,
    payload    jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
