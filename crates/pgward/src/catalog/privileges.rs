//! What pg_dump will touch for a scope, and which of it the connecting
//! role cannot read.
//!
//! Measured against pg_dump (see the tests): it needs USAGE on every schema
//! that holds a table or sequence it dumps, SELECT on every table and
//! partitioned table (it takes `LOCK TABLE ... IN ACCESS SHARE MODE` on each,
//! and `COPY`s the data), SELECT on every sequence (it reads `last_value`),
//! SELECT on every large object when they are in scope, and a way past
//! row-level security on every table that has it (pg_dump runs with
//! `row_security = off`, so a policy that would hide rows is an error). It
//! does not need SELECT on views or materialized views, nor USAGE on a
//! schema that holds only those: granting them would not be narrowest.
//!
//! Privileges are effective ones (`has_*_privilege`, so role membership
//! counts), evaluated for `current_user`.

use super::{CatalogSession, USER_RELATION, query_error};
use crate::error::Result;
use crate::scope::{Scope, TableName, quote_ident};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;

/// Something pg_dump needs a privilege on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Object {
    Schema { name: String },
    Table { name: TableName },
    Sequence { name: TableName },
    LargeObject { oid: u32 },
}

impl Object {
    /// The object as SQL writes it after `GRANT ... ON`.
    pub fn sql(&self) -> String {
        match self {
            Object::Schema { name } => format!("SCHEMA {}", quote_ident(name)),
            Object::Table { name } => format!("TABLE {}", qualified(name)),
            Object::Sequence { name } => format!("SEQUENCE {}", qualified(name)),
            Object::LargeObject { oid } => format!("LARGE OBJECT {oid}"),
        }
    }

    pub fn privilege(&self) -> &'static str {
        match self {
            Object::Schema { .. } => "USAGE",
            _ => "SELECT",
        }
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Schema { name } => write!(f, "schema {name}"),
            Object::Table { name } => write!(f, "table {name}"),
            Object::Sequence { name } => write!(f, "sequence {name}"),
            Object::LargeObject { oid } => write!(f, "large object {oid}"),
        }
    }
}

/// Always-quoted `schema.name`, for generated SQL.
pub fn qualified(name: &TableName) -> String {
    format!("{}.{}", quote_ident(&name.schema), quote_ident(&name.table))
}

/// A privilege the role lacks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Gap {
    pub object: Object,
    pub privilege: String,
    /// The object's owner (who, besides a superuser, can grant).
    pub owner: String,
    /// The object's effective ACL before any grant (aclitem text), the
    /// baseline a rollback returns to.
    pub acl: Vec<String>,
}

/// A table whose row-level security would stop pg_dump; no GRANT fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RowSecurityBlock {
    pub table: TableName,
    pub forced: bool,
}

/// The result of checking the role against everything in scope.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PrivilegeReport {
    pub role: String,
    pub schemas_checked: usize,
    pub tables_checked: usize,
    pub sequences_checked: usize,
    pub large_objects_checked: usize,
    /// Sorted: schemas first, then tables, sequences, large objects.
    pub gaps: Vec<Gap>,
    /// (schema, role) for every role that owns tables or sequences in
    /// scope (the database's owner for pg_database_owner): the roles whose
    /// future tables default privileges can cover.
    #[serde(skip)]
    pub relation_owners: BTreeSet<(String, String)>,
    pub row_security: Vec<RowSecurityBlock>,
}

struct Relation {
    name: TableName,
    kind: char,
    /// For a sequence: the table that owns it (serial/identity columns).
    owned_by: Option<TableName>,
    owner: String,
    readable: bool,
    acl: Vec<String>,
    schema_usage: bool,
    schema_owner: String,
    schema_acl: Vec<String>,
    row_security_blocks: bool,
    forced: bool,
    /// The extension whose configuration table this is.
    configuration_of: Option<String>,
}

/// pg_dump dumps large objects unless the scope names schemas or tables.
fn large_objects_in_scope(scope: &Scope) -> bool {
    scope.schemas.is_empty() && scope.tables.is_empty()
}

impl CatalogSession {
    pub fn privileges(&mut self, scope: &Scope) -> Result<PrivilegeReport> {
        let rows = self
            .client
            .query(
                &format!("SELECT n.nspname::text, c.relname::text, c.relkind::text, \
                        own_n.nspname::text, own_c.relname::text, \
                        pg_catalog.pg_get_userbyid(c.relowner)::text, \
                        CASE WHEN c.relkind = 'S' THEN pg_catalog.has_sequence_privilege(c.oid, 'SELECT') \
                             ELSE pg_catalog.has_table_privilege(c.oid, 'SELECT') END, \
                        COALESCE(c.relacl, pg_catalog.acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))::text[], \
                        pg_catalog.has_schema_privilege(n.oid, 'USAGE'), \
                        pg_catalog.pg_get_userbyid(n.nspowner)::text, \
                        COALESCE(n.nspacl, pg_catalog.acldefault('n', n.nspowner))::text[], \
                        c.relrowsecurity AND NOT r.rolsuper AND NOT r.rolbypassrls \
                          AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')), \
                        c.relforcerowsecurity, \
                        (SELECT e.extname::text FROM pg_catalog.pg_extension e \
                          WHERE c.oid = ANY (e.extconfig) LIMIT 1) \
                   FROM pg_catalog.pg_class c \
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                   JOIN pg_catalog.pg_roles r ON r.rolname = current_user \
                   LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                        AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                        AND d.deptype IN ('a', 'i') AND c.relkind = 'S' \
                   LEFT JOIN pg_catalog.pg_class own_c ON own_c.oid = d.refobjid \
                   LEFT JOIN pg_catalog.pg_namespace own_n ON own_n.oid = own_c.relnamespace \
                  WHERE c.relkind IN ('r', 'p', 'S') \
                    AND ({USER_RELATION} \
                         OR EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE c.oid = ANY (e.extconfig))) \
                  ORDER BY 1, 2"),
                &[],
            )
            .map_err(|e| query_error("cannot read privileges", e))?;
        let relations: Vec<Relation> = rows
            .iter()
            .map(|r| Relation {
                name: TableName {
                    schema: r.get(0),
                    table: r.get(1),
                },
                kind: r.get::<_, String>(2).chars().next().unwrap_or('r'),
                owned_by: match (r.get::<_, Option<String>>(3), r.get::<_, Option<String>>(4)) {
                    (Some(schema), Some(table)) => Some(TableName { schema, table }),
                    _ => None,
                },
                owner: r.get(5),
                readable: r.get(6),
                acl: r.get(7),
                schema_usage: r.get(8),
                schema_owner: r.get(9),
                schema_acl: r.get(10),
                row_security_blocks: r.get(11),
                forced: r.get(12),
                configuration_of: r.get(13),
            })
            .collect();

        // A narrowed scope's dump includes the extensions it needs, and
        // with them the user's rows of their configuration tables.
        let narrowed = !scope.schemas.is_empty() || !scope.tables.is_empty();
        let included: Vec<String> = if narrowed {
            self.dependencies(scope)?
                .extensions
                .into_iter()
                .map(|e| e.name)
                .collect()
        } else {
            Vec::new()
        };
        let in_scope = |rel: &Relation| -> bool {
            // An extension's configuration table: pg_dump reads its user
            // rows in a whole-database dump (unless its schema or itself is
            // excluded), with an extension a narrowed dump includes, and
            // where the scope names it.
            if let Some(extension) = &rel.configuration_of {
                return if narrowed {
                    scope.tables().contains(&rel.name) || included.contains(extension)
                } else {
                    scope.includes(&rel.name)
                };
            }
            if rel.kind == 'S' && !scope.tables.is_empty() {
                // With named tables pg_dump takes the sequences they own.
                return scope.includes(&rel.name)
                    || rel
                        .owned_by
                        .as_ref()
                        .is_some_and(|owner| scope.includes(owner));
            }
            scope.includes(&rel.name)
        };
        let selected: Vec<&Relation> = relations.iter().filter(|r| in_scope(r)).collect();

        let mut gaps = BTreeSet::new();
        let mut schemas = BTreeSet::new();
        let mut row_security = Vec::new();
        for rel in &selected {
            if schemas.insert(rel.name.schema.clone()) && !rel.schema_usage {
                gaps.insert(Gap {
                    object: Object::Schema {
                        name: rel.name.schema.clone(),
                    },
                    privilege: "USAGE".into(),
                    owner: rel.schema_owner.clone(),
                    acl: rel.schema_acl.clone(),
                });
            }
            if !rel.readable {
                let object = if rel.kind == 'S' {
                    Object::Sequence {
                        name: rel.name.clone(),
                    }
                } else {
                    Object::Table {
                        name: rel.name.clone(),
                    }
                };
                gaps.insert(Gap {
                    object,
                    privilege: "SELECT".into(),
                    owner: rel.owner.clone(),
                    acl: rel.acl.clone(),
                });
            }
            if rel.row_security_blocks {
                row_security.push(RowSecurityBlock {
                    table: rel.name.clone(),
                    forced: rel.forced,
                });
            }
        }

        let mut large_objects_checked = 0;
        if large_objects_in_scope(scope) {
            let rows = self
                .client
                .query(
                    "SELECT m.oid::int8, pg_catalog.pg_get_userbyid(m.lomowner)::text, \
                            COALESCE(m.lomacl, pg_catalog.acldefault('L', m.lomowner))::text[], \
                            r.rolsuper OR pg_catalog.current_setting('lo_compat_privileges')::bool \
                              OR pg_catalog.pg_has_role(m.lomowner, 'USAGE') \
                              OR EXISTS (SELECT 1 FROM pg_catalog.aclexplode(m.lomacl) a \
                                          WHERE a.privilege_type = 'SELECT' \
                                            AND (a.grantee = 0 OR pg_catalog.pg_has_role(a.grantee, 'USAGE'))) \
                       FROM pg_catalog.pg_largeobject_metadata m \
                       JOIN pg_catalog.pg_roles r ON r.rolname = current_user \
                      ORDER BY 1",
                    &[],
                )
                .map_err(|e| query_error("cannot read large object privileges", e))?;
            large_objects_checked = rows.len();
            for row in rows.iter().filter(|r| !r.get::<_, bool>(3)) {
                gaps.insert(Gap {
                    object: Object::LargeObject {
                        oid: row.get::<_, i64>(0) as u32,
                    },
                    privilege: "SELECT".into(),
                    owner: row.get(1),
                    acl: row.get(2),
                });
            }
        }

        let row = self
            .client
            .query_one(
                "SELECT current_user::text, pg_catalog.pg_get_userbyid(d.datdba)::text \
                   FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()",
                &[],
            )
            .map_err(|e| query_error("cannot read the current role", e))?;
        let (role, database_owner): (String, String) = (row.get(0), row.get(1));
        Ok(PrivilegeReport {
            role,
            schemas_checked: schemas.len(),
            tables_checked: selected.iter().filter(|r| r.kind != 'S').count(),
            sequences_checked: selected.iter().filter(|r| r.kind == 'S').count(),
            large_objects_checked,
            gaps: gaps.into_iter().collect(),
            relation_owners: selected
                .iter()
                .map(|r| {
                    // Nobody creates tables as pg_database_owner: its
                    // member, the database's owner, does.
                    let owner = if r.owner == "pg_database_owner" {
                        database_owner.clone()
                    } else {
                        r.owner.clone()
                    };
                    (r.name.schema.clone(), owner)
                })
                .collect(),
            row_security,
        })
    }

    /// The database's size, for space estimates when there is no previous backup.
    pub fn database_size(&mut self) -> Result<u64> {
        let row = self
            .client
            .query_one(
                "SELECT pg_catalog.pg_database_size(pg_catalog.current_database())",
                &[],
            )
            .map_err(|e| query_error("cannot read the database size", e))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    /// Current effective ACL of each object (aclitem text), to prove a
    /// rollback returned to the baseline.
    pub fn acl_of(&mut self, object: &Object) -> Result<Vec<String>> {
        let (sql, param): (&str, String) = match object {
            Object::Schema { name } => (
                "SELECT COALESCE(nspacl, pg_catalog.acldefault('n', nspowner))::text[] \
                   FROM pg_catalog.pg_namespace WHERE nspname = $1",
                name.clone(),
            ),
            Object::Table { name } | Object::Sequence { name } => (
                "SELECT COALESCE(relacl, pg_catalog.acldefault(CASE WHEN relkind = 'S' THEN 's' ELSE 'r' END::\"char\", relowner))::text[] \
                   FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1)",
                qualified(name),
            ),
            Object::LargeObject { oid } => (
                "SELECT COALESCE(lomacl, pg_catalog.acldefault('L', lomowner))::text[] \
                   FROM pg_catalog.pg_largeobject_metadata WHERE oid = $1::text::oid",
                oid.to_string(),
            ),
        };
        let row = self
            .client
            .query_opt(sql, &[&param])
            .map_err(|e| query_error("cannot read an ACL", e))?;
        Ok(row.map(|r| r.get(0)).unwrap_or_default())
    }
}
