#!/bin/sh
# The read-only PostgreSQL login Grafana uses: member of the group role dxkpi_readers, which may
# SELECT the dxkpi_*_v views (the KPI history, migration 0003) and nothing else.
#
# docker-compose's postgres runs this once, on a fresh data volume, before `dxkpi migrate`
# creates the views; the migration then grants SELECT on them to dxkpi_readers. On a database
# that existed before, run it once by hand (it is safe to run again; it also grants SELECT on
# views that already exist and resets the password from .env):
#
#   docker-compose exec postgres sh /docker-entrypoint-initdb.d/10-dxkpi-readers.sh
#
# Reads GRAFANA_DB_PASSWORD (required), GRAFANA_DB_USER (default dxkpi_grafana), and the
# postgres image's POSTGRES_USER / POSTGRES_DB; libpq's PG* variables (PGHOST...) apply.
set -eu
: "${GRAFANA_DB_PASSWORD:?set GRAFANA_DB_PASSWORD in .env}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
  --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v reader="${GRAFANA_DB_USER:-dxkpi_grafana}" -v password="$GRAFANA_DB_PASSWORD" <<'SQL'
SET client_min_messages = warning;

-- Roles are shared by every database of the server: another one may have made it already.
DO $$ BEGIN
  CREATE ROLE dxkpi_readers NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

SELECT format('CREATE ROLE %I LOGIN', :'reader')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'reader') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L',
              :'reader', :'password') \gexec
-- Read-only even if a grant is ever too wide.
SELECT format('ALTER ROLE %I SET default_transaction_read_only = on', :'reader') \gexec
SELECT format('GRANT dxkpi_readers TO %I', :'reader') \gexec

-- The schema of the views (a recreated public schema grants PUBLIC nothing).
SELECT format('GRANT USAGE ON SCHEMA %I TO dxkpi_readers', current_schema()) \gexec

-- Views made before this role existed (an older database): grant them now.
SELECT format('GRANT SELECT ON %s TO dxkpi_readers', string_agg(format('%I', viewname), ', '))
FROM pg_views
WHERE schemaname = current_schema() AND viewname LIKE 'dxkpi\_%\_v'
HAVING count(*) > 0 \gexec
SQL
