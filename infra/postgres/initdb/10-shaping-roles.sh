#!/bin/sh
# docker-compose's postgres runs this once, on its first start (an empty pg-data volume), as the
# bootstrap superuser: the roles of infra/postgres/roles.sql, with the passwords of the
# untracked .env file (docker-compose.yml, docs/security.md "PostgreSQL").
set -eu
for value in "${SHAPING_PG_PROJECTOR_PASSWORD:?}" "${SHAPING_PG_READER_PASSWORD:?}"; do
    if [ "${#value}" -lt 16 ] || [ -n "$(printf '%s' "$value" | tr -d 'A-Za-z0-9')" ]; then
        echo "10-shaping-roles.sh: the passwords must be 16 or more letters and digits" >&2
        exit 1
    fi
done
psql -X -q -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
\set projector_password '$SHAPING_PG_PROJECTOR_PASSWORD'
\set reader_password '$SHAPING_PG_READER_PASSWORD'
\i /etc/shaping/roles.sql
SQL
