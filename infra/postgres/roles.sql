-- The roles of the status tables and their privileges (docs/security.md, "PostgreSQL").
-- Run as the bootstrap superuser, idempotent: by infra/postgres/postgres.sh on every `up`, and
-- by docker-compose's postgres on its first start (infra/postgres/initdb/10-shaping-roles.sh).
-- The caller sets the psql variables projector_password and reader_password first.
--
--   shaping_projector  the projector (and `shaping replay`): CONNECT, CREATE (replay's
--                      schemas) and TEMPORARY on the database, USAGE and CREATE on the schema
--                      public; it owns the tables it creates
--   shaping_reader     the operator's read commands and Grafana: CONNECT, USAGE on public,
--                      SELECT on every table the projector has made or will make
-- Neither is a superuser or may create roles or databases; PUBLIC gets nothing.
SET log_statement = 'none';
SELECT format('CREATE ROLE %I LOGIN', r)
    FROM unnest(ARRAY['shaping_projector', 'shaping_reader']) AS r
    WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec
ALTER ROLE shaping_projector WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS PASSWORD :'projector_password';
ALTER ROLE shaping_reader WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS PASSWORD :'reader_password';
SELECT 'CREATE DATABASE shaping'
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'shaping') \gexec
REVOKE ALL ON DATABASE shaping FROM PUBLIC;
GRANT CONNECT, CREATE, TEMPORARY ON DATABASE shaping TO shaping_projector;
GRANT CONNECT ON DATABASE shaping TO shaping_reader;
\connect shaping
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO shaping_projector;
GRANT USAGE ON SCHEMA public TO shaping_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO shaping_reader;
-- Tables the projector makes later (in any schema: replay builds them beside public, then
-- moves them in) are readable by the reader.
ALTER DEFAULT PRIVILEGES FOR ROLE shaping_projector GRANT SELECT ON TABLES TO shaping_reader;
