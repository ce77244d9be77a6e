"""The only package that talks to PostgreSQL through psycopg2."""
