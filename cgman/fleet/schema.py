"""The central ledger's schema in PostgreSQL: created and migrated forward by cgman.

Everything lives in the schema ``cgman``. ``cgman.schema_version`` holds one row per
migration applied; ``MIGRATIONS[n]`` takes a database from version n to n + 1. `cgman
fleet init` applies the missing ones in one transaction under an advisory lock (two
admins at once wait, not race), and (re)grants the two roles:

- ``cgman_agent``: what a node's agent needs and nothing more: read the version, the
  ledger's id and the node registry; INSERT nodes and ledger rows. No UPDATE, DELETE or
  SELECT on the ledger: a stolen agent password cannot read other tenants' bills or
  rewrite history.
- ``cgman_billing``: SELECT on everything, for `cgman usage --ledger-url` and finance tools.

Both are NOLOGIN group roles; operators make login roles members of them (docs/fleet.md).
Columns mirror the SQLite ledger's (accounting/ledger.py) plus ``node`` and ``shipped``;
the key is (node, id), so a row sent twice is stored once. Agents insert with a bare
``ON CONFLICT DO NOTHING`` (naming the key would need SELECT on it), so the primary key
must stay the ledger's only unique constraint: do not add others.
"""

from __future__ import annotations

SCHEMA = "cgman"
AGENT_ROLE = "cgman_agent"
BILLING_ROLE = "cgman_billing"

_V1 = """
CREATE TABLE cgman.meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO cgman.meta VALUES ('ledger_id', gen_random_uuid()::text);
CREATE TABLE cgman.nodes (
    node text PRIMARY KEY CHECK (node ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$'),
    instance text NOT NULL,
    hostname text NOT NULL,
    registered timestamptz NOT NULL DEFAULT now(),
    registered_by name NOT NULL DEFAULT current_user
);
CREATE TABLE cgman.ledger (
    node text NOT NULL REFERENCES cgman.nodes (node),
    id text NOT NULL,
    name text NOT NULL,
    tenant text NOT NULL,
    grp text NOT NULL,
    cgroup_root text NOT NULL,
    started double precision NOT NULL CHECK (started >= 0),
    ended double precision NOT NULL CHECK (ended >= 0),
    exit_code bigint,
    exit_reason text,
    cpu_usage_usec bigint NOT NULL CHECK (cpu_usage_usec >= 0),
    cpu_user_usec bigint CHECK (cpu_user_usec >= 0),
    cpu_system_usec bigint CHECK (cpu_system_usec >= 0),
    memory_byte_seconds double precision NOT NULL CHECK (memory_byte_seconds >= 0),
    memory_peak_bytes bigint CHECK (memory_peak_bytes >= 0),
    io_read_bytes bigint NOT NULL CHECK (io_read_bytes >= 0),
    io_write_bytes bigint NOT NULL CHECK (io_write_bytes >= 0),
    cpu_limit_cpus double precision CHECK (cpu_limit_cpus >= 0),
    memory_limit_bytes bigint CHECK (memory_limit_bytes >= 0),
    host_cpus double precision NOT NULL CHECK (host_cpus >= 0),
    host_memory_bytes bigint NOT NULL CHECK (host_memory_bytes >= 0),
    recorded double precision NOT NULL,
    shipped timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, id)
);
-- The period rule (billing.py) selects by end time: since <= ended < until.
CREATE INDEX ledger_ended ON cgman.ledger (ended);
"""

# MIGRATIONS[n]: from version n to n + 1. Append; never edit a released step.
MIGRATIONS: tuple[str, ...] = (_V1,)
VERSION = len(MIGRATIONS)

CREATE_VERSION_TABLE = """
CREATE SCHEMA IF NOT EXISTS cgman;
CREATE TABLE IF NOT EXISTS cgman.schema_version (
    version integer PRIMARY KEY,
    applied timestamptz NOT NULL DEFAULT now(),
    applied_by name NOT NULL DEFAULT current_user,
    cgman text NOT NULL
);
"""

_ROLE = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} NOLOGIN; END IF;
END $$;
"""

GRANTS = f"""
GRANT USAGE ON SCHEMA cgman TO {AGENT_ROLE}, {BILLING_ROLE};
REVOKE ALL ON ALL TABLES IN SCHEMA cgman FROM {AGENT_ROLE};
GRANT SELECT ON cgman.schema_version, cgman.meta, cgman.nodes TO {AGENT_ROLE};
GRANT INSERT ON cgman.nodes, cgman.ledger TO {AGENT_ROLE};
GRANT SELECT ON ALL TABLES IN SCHEMA cgman TO {BILLING_ROLE};
"""


def role_sql() -> str:
    """Create the two group roles where missing (needs CREATEROLE)."""
    return "".join(_ROLE.format(role=r) for r in (AGENT_ROLE, BILLING_ROLE))
