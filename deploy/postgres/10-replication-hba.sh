#!/bin/sh
# Runs once, when the data directory is initialised (docker-entrypoint-initdb.d).
# The image's pg_hba.conf admits replication connections from localhost only; the
# streaming transport (source.cdc_transport: replication) connects from other
# containers or the host, so admit them with a password.
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
