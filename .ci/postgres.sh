#!/usr/bin/env bash
# Installs (from Debian packages) and starts PostgreSQL for the contract tests, then prints
# the database URL. Idempotent: a machine that already has a running cluster is reused.
set -euo pipefail
if [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main" || pg_createcluster "$version" main >&2
pg_ctlcluster "$version" main start >&2 2>/dev/null || pg_ctlcluster "$version" main status >&2
port=$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $3}')
psql_admin() { su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -qtA -c \"$1\""; }
for _ in $(seq 30); do psql_admin "select 1" >/dev/null 2>&1 && break; sleep 1; done
[ "$(psql_admin "select 1 from pg_roles where rolname='tessera'")" = 1 ] ||
  psql_admin "create role tessera login password 'tessera' createdb" >&2
[ "$(psql_admin "select 1 from pg_database where datname='tessera_test'")" = 1 ] ||
  psql_admin "create database tessera_test owner tessera" >&2
echo "postgresql+psycopg://tessera:tessera@127.0.0.1:$port/tessera_test"
