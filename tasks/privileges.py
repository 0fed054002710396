"""What devmesh's database role needs, checked as that role: each missing privilege with the GRANT that gives it.

On a managed PostgreSQL (RDS, Cloud SQL, Azure) the application role is neither a superuser nor the database's
owner. devmesh then needs: the `vector` extension created by an admin role; USAGE on its schema, and CREATE there to
apply migrations (or an admin applies them — see docs/deploy.md); SELECT/INSERT/UPDATE/DELETE on its tables
(SELECT/INSERT on the append-only audit_log); USAGE on their sequences; and ownership of `chunks` and `embeddings`,
whose search indexes it creates, drops and rebuilds and which it ANALYZEs after a bulk load (without ownership only
those steps fail). The tables are those the migrations in tasks/sql/ create, plus schema_migrations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg import Connection, sql

from tasks.migrate import migrations

__all__ = ["Missing", "devmesh_tables", "missing_privileges"]

_CREATE_TABLE = re.compile(r"CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([a-z_][a-z0-9_]*)", re.I)
APPEND_ONLY = {"audit_log": ("SELECT", "INSERT")}
DML = ("SELECT", "INSERT", "UPDATE", "DELETE")
OWNED = {
    "chunks": "a bulk load drops and rebuilds its full-text index, then ANALYZEs it",
    "embeddings": "each embedding model gets an HNSW index on it (created, and rebuilt by a bulk load)",
}


@dataclass(frozen=True)
class Missing:
    """A privilege the role lacks: what it is, what needs it, the statement an admin runs to grant it, and whether
    devmesh cannot work without it (`required`) or only some operations fail."""

    privilege: str
    needed_for: str
    grant: str
    required: bool = True


def devmesh_tables() -> list[str]:
    """Every table the migrations create, in order, then schema_migrations."""
    names: list[str] = []
    for _, _, text in migrations():
        for name in _CREATE_TABLE.findall(text):
            if name.lower() not in names:
                names.append(name.lower())
    return names + ["schema_migrations"]


def missing_privileges(conn: Connection) -> list[Missing]:
    """The privileges the connected role lacks (empty: it has all devmesh needs). Read-only; as the role itself."""
    role, schema, pending = conn.execute(
        "SELECT current_user, current_schema(), to_regclass('schema_migrations') IS NULL").fetchone()
    if schema is None:
        return [Missing("a schema on the search_path", "every table", "ALTER ROLE ... SET search_path = public")]

    def stmt(template: str, *identifiers: str) -> str:
        return sql.SQL(template).format(*(sql.Identifier(i) for i in identifiers), role=sql.Identifier(role)
                                        ).as_string(conn)

    out: list[Missing] = []
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None and not \
            conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()[0]:
        out.append(Missing("the vector extension", "vector columns and indexes",
                           "CREATE EXTENSION vector;  -- as an admin role (rds_superuser, cloudsqlsuperuser, "
                           "azure_pg_admin)"))
    usage, create = conn.execute("SELECT has_schema_privilege(%s, 'USAGE'), has_schema_privilege(%s, 'CREATE')",
                                 [schema, schema]).fetchone()
    if not usage:
        out.append(Missing(f"USAGE on schema {schema}", "every table", stmt("GRANT USAGE ON SCHEMA {} TO {role}",
                                                                             schema)))
    if not create:
        out.append(Missing(f"CREATE on schema {schema}", "applying migrations (new tables, functions, indexes)",
                           stmt("GRANT CREATE ON SCHEMA {} TO {role}", schema),
                           required=pending or _migrations_pending(conn)))
    if not usage:
        return out  # nothing in the schema can be checked further
    rows = conn.execute(
        "SELECT c.relname, pg_get_userbyid(c.relowner), pg_has_role(c.relowner, 'USAGE'),"
        " has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'INSERT'),"
        " has_table_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'DELETE')"
        " FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p')"
        " AND c.relname = ANY(%s)", [schema, devmesh_tables()]).fetchall()
    for name, owner, owns, *granted in rows:
        lacking = [p for p, ok in zip(DML, granted) if not ok and p in APPEND_ONLY.get(name, DML)]
        if lacking:
            out.append(Missing(f"{', '.join(lacking)} on table {name}", f"reading and writing {name}",
                               stmt(f"GRANT {', '.join(lacking)} ON TABLE {{}} TO {{role}}", name)))
        if name in OWNED and not owns:
            out.append(Missing(f"ownership of table {name} (owned by {owner})", OWNED[name],
                               stmt("ALTER TABLE {} OWNER TO {role}", name), required=False))
    for name, in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_depend d ON d.objid = c.oid AND d.deptype IN ('a', 'i')"
            " JOIN pg_class t ON t.oid = d.refobjid WHERE c.relkind = 'S' AND t.relname = ANY(%s)"
            " AND t.relnamespace = %s::regnamespace AND CASE WHEN c.relkind = 'S'"
            " THEN NOT has_sequence_privilege(c.oid, 'USAGE') ELSE false END",
            [devmesh_tables(), schema]).fetchall():
        out.append(Missing(f"USAGE on sequence {name}", "inserting rows",
                           stmt("GRANT USAGE ON SEQUENCE {} TO {role}", name)))
    return out


def _migrations_pending(conn: Connection) -> bool:
    applied = {v for v, in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    return any(v not in applied for v, _, _ in migrations())
