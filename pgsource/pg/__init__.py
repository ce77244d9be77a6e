"""The only package that talks to libpq (psycopg2): connections, catalog look-ups, SQL."""
