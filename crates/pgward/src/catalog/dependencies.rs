//! What a narrowed scope needs from outside itself to restore on its own.
//!
//! pg_dump with `--schema` or `--table` dumps the selected objects and
//! nothing they depend on: not the extensions whose types, functions or
//! operator classes they use, not the schemas those live in, not a domain
//! or function in another schema. Such a backup restores only into a
//! database that already has them, and a drill into a new database fails.
//! This module finds all of it from the catalog, before anything is
//! dumped:
//!
//! - the objects in scope: the selected tables (or every object in the
//!   selected schemas), and everything that belongs to them (columns'
//!   defaults, constraints, indexes, triggers, rules, policies, owned
//!   sequences: objects with an automatic or internal dependency on one
//!   in scope), never an extension's member nor an excluded table;
//! - every object these reference with a normal dependency that is not in
//!   scope and not built in. A member of an extension (a type, a function,
//!   an operator class) stands for its extension; an extension brings the
//!   extensions it requires. Schemas the scope's objects or extensions live
//!   in but the dump does not create are created by the restore first.
//!   Anything else (a domain, a function, a table, a sequence elsewhere) is
//!   an outside dependency that no restore of this backup can provide.

use crate::scope::{Scope, quote_ident};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The first object id that is not built in (FirstNormalObjectId): objects
/// below it come with every database of the same major version.
const FIRST_USER_OID: u32 = 16384;

/// An extension the scope needs; pg_dump includes it (`--extension`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NeededExtension {
    pub name: String,
    /// The schema its objects live in.
    pub schema: String,
    pub version: String,
    /// One object in scope that needs it, or the extension that requires it.
    pub needed_by: String,
}

/// Something outside the scope that an object in scope depends on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OutsideObject {
    /// As PostgreSQL names the kind: "type", "function", "table", ...
    pub kind: String,
    /// Its schema; None for objects outside any schema (a foreign server).
    pub schema: Option<String>,
    /// Its qualified name, as `pg_identify_object` gives it.
    pub identity: String,
    /// One object in scope that depends on it.
    pub needed_by: String,
}

impl OutsideObject {
    pub fn describe(&self) -> String {
        format!(
            "{} {} (needed by {})",
            self.kind, self.identity, self.needed_by
        )
    }

    /// The scope change that brings this object in.
    pub fn remedy(&self, scope: &Scope) -> String {
        let Some(schema) = &self.schema else {
            return format!(
                "{} {} is in no schema, so no scope can include it: create it in the target first and set [scope] standalone = false",
                self.kind, self.identity
            );
        };
        if self.kind == "index" {
            return "an index comes with its table: bring that table into the scope".to_string();
        }
        let relation = matches!(
            self.kind.as_str(),
            "table" | "view" | "materialized view" | "sequence" | "foreign table"
        );
        if scope.exclude_schemas.contains(schema) {
            return format!("stop excluding schema {schema} (scope.exclude-schemas)");
        }
        if !scope.tables.is_empty() {
            if relation {
                return format!("add {} to scope.tables", self.identity);
            }
            return format!(
                "pg_dump --table dumps only tables, not {} {}: back up schema {schema} (scope.schemas) instead of single tables, or create it in the target first and set [scope] standalone = false",
                self.kind, self.identity
            );
        }
        if relation
            && scope
                .excluded_tables()
                .iter()
                .any(|t| t.schema == *schema && self.identity == t.to_string())
        {
            return format!("stop excluding {} (scope.exclude-tables)", self.identity);
        }
        format!(
            "add schema {schema} to scope.schemas, or create the {} in the target first and set [scope] standalone = false",
            self.kind
        )
    }
}

/// What [`dependencies`] found for a scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ScopeDependencies {
    /// Extensions the dump includes, with the ones they require.
    pub extensions: Vec<NeededExtension>,
    /// Schemas the scope's objects and extensions live in that the dump
    /// does not create; a restore creates them first.
    pub schemas: Vec<String>,
    /// Everything else outside the scope that it depends on.
    pub outside: Vec<OutsideObject>,
}

impl ScopeDependencies {
    pub fn is_empty(&self) -> bool {
        self.extensions.is_empty() && self.schemas.is_empty() && self.outside.is_empty()
    }

    /// pg_dump's switches that include the needed extensions. Only a
    /// narrowed scope needs them: without `--schema`/`--table` pg_dump
    /// dumps every extension, and `--extension` would restrict that.
    pub fn pg_dump_args(&self, scope: &Scope) -> Vec<String> {
        if scope.schemas.is_empty() && scope.tables.is_empty() {
            return Vec::new();
        }
        self.extensions
            .iter()
            .map(|e| format!("--extension={}", quote_ident(&e.name)))
            .collect()
    }
}

/// Finds what `scope` (resolved: partitions added) depends on outside
/// itself. A whole-database scope depends on nothing outside.
pub(crate) fn dependencies(
    client: &mut postgres::Client,
    scope: &Scope,
) -> Result<ScopeDependencies, postgres::Error> {
    if scope.is_whole_database() {
        return Ok(ScopeDependencies::default());
    }
    let qualified = |names: Vec<crate::scope::TableName>| -> Vec<String> {
        names
            .iter()
            .map(crate::catalog::privileges::qualified)
            .collect()
    };
    let tables = qualified(scope.tables());
    let excluded = qualified(scope.excluded_tables());
    // Seeds: the named tables, or the schemas in scope.
    let rows = client.query(
        &format!(
            "WITH RECURSIVE
             excluded AS (
                 SELECT pg_catalog.to_regclass(t)::oid AS oid FROM pg_catalog.unnest($2::text[]) t),
             seeds(classid, objid) AS (
                 SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::oid, pg_catalog.to_regclass(t)::oid
                   FROM pg_catalog.unnest($1::text[]) t
                 UNION
                 SELECT 'pg_catalog.pg_namespace'::pg_catalog.regclass::oid, n.oid
                   FROM pg_catalog.pg_namespace n
                  WHERE pg_catalog.cardinality($1::text[]) = 0
                    AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
                    AND (n.nspname = ANY ($3::text[]) OR pg_catalog.cardinality($3::text[]) = 0)
                    AND n.nspname <> ALL ($4::text[])
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                     WHERE e.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                                       AND e.objid = n.oid AND e.deptype = 'e')),
             members(classid, objid) AS (
                 SELECT classid, objid FROM seeds WHERE objid IS NOT NULL
                 UNION
                 SELECT d.classid, d.objid
                   FROM members m
                   JOIN pg_catalog.pg_depend d ON d.refclassid = m.classid AND d.refobjid = m.objid
                  WHERE (d.deptype IN ('a', 'i')
                         OR (m.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND d.deptype = 'n'))
                    AND NOT (d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                             AND d.objid IN (SELECT oid FROM excluded WHERE oid IS NOT NULL))
                    -- A partition depends on its parent automatically, but
                    -- is dumped only if itself in scope.
                    AND NOT (d.deptype = 'a' AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                             AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                             AND EXISTS (SELECT 1 FROM pg_catalog.pg_class p
                                          WHERE p.oid = d.objid AND p.relispartition))
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                     WHERE e.classid = d.classid AND e.objid = d.objid AND e.deptype = 'e')),
             refs AS (
                 SELECT d.refclassid, d.refobjid,
                        pg_catalog.min(pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)) AS needed_by
                   FROM members m
                   JOIN pg_catalog.pg_depend d ON d.classid = m.classid AND d.objid = m.objid
                  WHERE d.refobjid >= {FIRST_USER_OID}
                    AND (d.deptype = 'n'
                         -- a partition needs its parent
                         OR (d.deptype = 'a' AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                             AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                             AND EXISTS (SELECT 1 FROM pg_catalog.pg_class p
                                          WHERE p.oid = d.objid AND p.relispartition)))
                    AND NOT EXISTS (SELECT 1 FROM members x
                                     WHERE x.classid = d.refclassid AND x.objid = d.refobjid)
                  GROUP BY 1, 2
                 UNION
                 -- A table named in scope that an extension owns (its
                 -- configuration table) needs that extension.
                 SELECT e.refclassid, e.refobjid, pg_catalog.pg_describe_object(s.classid, s.objid, 0)
                   FROM seeds s
                   JOIN pg_catalog.pg_depend e ON e.classid = s.classid AND e.objid = s.objid
                  WHERE e.deptype = 'e'),
             -- What each reference belongs to, up its automatic and internal
             -- dependencies: an extension's array type belongs to its type,
             -- an index on its table to a constraint of that table.
             owners(refclassid, refobjid, classid, objid, depth) AS (
                 SELECT refclassid, refobjid, refclassid, refobjid, 0 FROM refs
                 UNION ALL
                 SELECT o.refclassid, o.refobjid, d.refclassid, d.refobjid, o.depth + 1
                   FROM owners o
                   JOIN pg_catalog.pg_depend d ON d.classid = o.classid AND d.objid = o.objid
                  WHERE d.deptype IN ('a', 'i') AND o.depth < 4)
             SELECT r.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass,
                    CASE WHEN r.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass THEN r.refobjid
                         ELSE (SELECT e.refobjid FROM owners o
                                 JOIN pg_catalog.pg_depend e ON e.classid = o.classid AND e.objid = o.objid
                                WHERE o.refclassid = r.refclassid AND o.refobjid = r.refobjid
                                  AND e.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                                  AND e.deptype = 'e'
                                ORDER BY o.depth LIMIT 1) END,
                    i.type,
                    -- pg_identify_object quotes names; the schema as named.
                    CASE WHEN r.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                         THEN (SELECT n.nspname::text FROM pg_catalog.pg_namespace n WHERE n.oid = r.refobjid)
                         ELSE (SELECT n.nspname::text FROM pg_catalog.pg_namespace n
                                WHERE pg_catalog.quote_ident(n.nspname) = i.schema) END,
                    i.identity, r.needed_by
               FROM refs r, pg_catalog.pg_identify_object(r.refclassid, r.refobjid, 0) i
              ORDER BY i.identity"
        ),
        &[&tables, &excluded, &scope.schemas, &scope.exclude_schemas],
    )?;

    let mut extension_seeds: Vec<(u32, String)> = Vec::new();
    let mut schemas: BTreeSet<String> = BTreeSet::new();
    let mut outside = Vec::new();
    for row in rows {
        let is_schema: bool = row.get(0);
        let extension: Option<u32> = row.get(1);
        let kind: String = row.get(2);
        let schema: Option<String> = row.get(3);
        let identity: String = row.get(4);
        let needed_by: String = row.get(5);
        if let Some(oid) = extension {
            if !extension_seeds.iter().any(|(o, _)| *o == oid) {
                extension_seeds.push((oid, needed_by));
            }
        } else if is_schema {
            schemas.extend(schema);
        } else {
            outside.push(OutsideObject {
                kind,
                schema,
                identity,
                needed_by,
            });
        }
    }

    // The needed extensions and those they require, transitively.
    let seeds: Vec<u32> = extension_seeds.iter().map(|(oid, _)| *oid).collect();
    let rows = client.query(
        &format!(
            "WITH RECURSIVE needed(oid, required_by) AS (
                 SELECT s, NULL::pg_catalog.oid FROM pg_catalog.unnest($1::pg_catalog.oid[]) s
                 UNION
                 SELECT d.refobjid, n.oid
                   FROM needed n
                   JOIN pg_catalog.pg_depend d
                     ON d.classid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.objid = n.oid
                    AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'n')
             SELECT DISTINCT ON (e.extname) e.oid, e.extname::text, ns.nspname::text, e.extversion,
                    (SELECT r.extname::text FROM pg_catalog.pg_extension r WHERE r.oid = n.required_by)
               FROM needed n
               JOIN pg_catalog.pg_extension e ON e.oid = n.oid
               JOIN pg_catalog.pg_namespace ns ON ns.oid = e.extnamespace
              WHERE e.oid >= {FIRST_USER_OID}
              ORDER BY e.extname, n.required_by NULLS FIRST"
        ),
        &[&seeds],
    )?;
    let mut extensions = Vec::new();
    for row in rows {
        let oid: u32 = row.get(0);
        let required_by: Option<String> = row.get(4);
        let needed_by = match extension_seeds.iter().find(|(o, _)| *o == oid) {
            Some((_, by)) => by.clone(),
            None => format!("extension {}", required_by.unwrap_or_default()),
        };
        extensions.push(NeededExtension {
            name: row.get(1),
            schema: row.get(2),
            version: row.get(3),
            needed_by,
        });
    }

    // With only exclusions pg_dump dumps every extension, also one that
    // lives in an excluded schema (which it then does not create).
    if scope.schemas.is_empty() && scope.tables.is_empty() {
        for row in client.query(
            &format!(
                "SELECT n.nspname::text FROM pg_catalog.pg_extension e \
                   JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
                  WHERE e.oid >= {FIRST_USER_OID}"
            ),
            &[],
        )? {
            schemas.insert(row.get(0));
        }
    }
    // Schemas the dump creates need no preparing; system schemas exist.
    for extension in &extensions {
        schemas.insert(extension.schema.clone());
    }
    schemas.retain(|schema| {
        let dumped = if !scope.tables.is_empty() {
            false
        } else if !scope.schemas.is_empty() {
            scope.schemas.contains(schema)
        } else {
            !scope.exclude_schemas.contains(schema)
        };
        !dumped && !schema.starts_with("pg_") && schema != "information_schema"
    });
    Ok(ScopeDependencies {
        extensions,
        schemas: schemas.into_iter().collect(),
        outside,
    })
}
