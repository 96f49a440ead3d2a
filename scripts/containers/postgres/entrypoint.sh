#!/bin/sh
# Initialises a throwaway cluster (trust auth, database `test`) and runs Postgres in
# the foreground. It logs "database system is ready to accept connections" once.
set -eu
bin=/usr/lib/postgresql/15/bin
data=/var/lib/postgresql/data
if [ ! -s "$data/PG_VERSION" ]; then
  "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  echo "host all all all trust" >>"$data/pg_hba.conf"
  echo "CREATE DATABASE test" | "$bin/postgres" --single -D "$data" postgres >/dev/null
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -c fsync=off \
  -c synchronous_commit=off -c full_page_writes=off -c max_connections=300
