//! What the catalog knows and a pg_dump archive cannot carry: each table's
//! column order, and the constraints that make a restore depend on the
//! order in which pg_restore happens to load tables.
//!
//! Both are read at backup time in the backup's own snapshot and recorded
//! in the manifest, because afterwards only the archive is left, and the
//! archive cannot say either:
//! - an inheritance child is written as `CREATE TABLE child (...) INHERITS
//!   (parent)`, and the server puts inherited columns first, so a child
//!   whose order differs from that (attached with `ALTER TABLE ... INHERIT`,
//!   or whose parent gained a column later) comes back in another order;
//! - PostgreSQL assumes CHECK and domain constraints are immutable, so
//!   pg_dump orders no table data for them; one whose expression calls a
//!   function that reads other tables restores or fails depending on which
//!   table pg_restore loads first.

use crate::scope::TableName;
use serde::{Deserialize, Serialize};

/// A table's columns in their catalog order (`attnum`), dropped ones left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ColumnOrder {
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    /// The tables it inherits from, in inheritance order (none for a
    /// partition): what explains a column order that cannot come back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherits: Vec<String>,
}

impl ColumnOrder {
    pub fn name(&self) -> TableName {
        TableName {
            schema: self.schema.clone(),
            table: self.table.clone(),
        }
    }
}

/// A CHECK or domain constraint on a table whose expression calls a
/// function that is not immutable (or that reads tables): its outcome on
/// restore depends on what is loaded before the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreHazard {
    pub schema: String,
    pub table: String,
    pub constraint: String,
    /// `schema.domain` when the constraint is a domain's, used by a column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// `schema.name(argument types)`.
    pub function: String,
    /// "volatile", "stable" or "immutable".
    pub volatility: String,
    /// The tables the function reads, where the catalog records them (a
    /// SQL-standard body, `BEGIN ATOMIC`); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<String>,
    /// The function's language, e.g. "plpgsql".
    pub language: String,
    /// Whether `reads` is known (a SQL-standard body).
    pub reads_known: bool,
}

impl RestoreHazard {
    pub fn table_name(&self) -> TableName {
        TableName {
            schema: self.schema.clone(),
            table: self.table.clone(),
        }
    }

    /// One line: table, constraint, function and why it matters.
    pub fn describe(&self) -> String {
        let constraint = match &self.domain {
            Some(domain) => format!("domain {domain}'s constraint {}", self.constraint),
            None => format!("CHECK constraint {}", self.constraint),
        };
        let reads = if !self.reads.is_empty() {
            format!(", which reads {}", self.reads.join(", "))
        } else if self.reads_known {
            String::new()
        } else {
            format!(
                "; what it reads is not recorded in the catalog (a {} body)",
                self.language
            )
        };
        format!(
            "table {}: {constraint} calls {} ({}){reads}; PostgreSQL assumes such constraints are immutable, so pg_dump orders no table data for them",
            self.table_name(),
            self.function,
            self.volatility
        )
    }
}

/// Every user table's column order (ordinary, partitioned and foreign
/// tables), for the caller to filter by scope.
pub fn column_orders(client: &mut postgres::Client) -> Result<Vec<ColumnOrder>, postgres::Error> {
    let rows = client.query(
        &format!(
            "SELECT n.nspname::text, c.relname::text, \
                    ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                           ORDER BY a.attnum), \
                    ARRAY(SELECT pg_catalog.quote_ident(pn.nspname) || '.' || pg_catalog.quote_ident(p.relname) \
                            FROM pg_catalog.pg_inherits i \
                            JOIN pg_catalog.pg_class p ON p.oid = i.inhparent \
                            JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace \
                           WHERE i.inhrelid = c.oid AND NOT c.relispartition ORDER BY i.inhseqno) \
               FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind IN ('r', 'p', 'f') AND {} \
              ORDER BY 1, 2",
            super::USER_RELATION
        ),
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| ColumnOrder {
            schema: r.get(0),
            table: r.get(1),
            columns: r.get(2),
            inherits: r.get(3),
        })
        .collect())
}

/// Every restore-order hazard on a user table, for the caller to filter
/// by scope. Functions in `pg_catalog` do not count: the built-in ones
/// that are not immutable (`now()`, say) read no user table. `server_version`
/// (e.g. 150004) decides whether SQL-standard bodies exist (PostgreSQL 14).
pub fn restore_hazards(
    client: &mut postgres::Client,
    server_version: u32,
) -> Result<Vec<RestoreHazard>, postgres::Error> {
    let (sql_body, range_of) = if server_version >= 140000 {
        (
            "p.prosqlbody IS NOT NULL",
            "r.rngtypid = t.oid OR r.rngmultitypid = t.oid",
        )
    } else {
        ("false", "r.rngtypid = t.oid")
    };
    // Every type a column's values are checked against while COPY loads
    // them: the column's type, a domain's base type, an array's element
    // type, a composite type's attributes and a range's subtype, to any
    // depth (UNION keeps the recursion finite).
    let rows = client.query(
        &format!(
            "WITH RECURSIVE column_types(relid, typid) AS ( \
                 SELECT a.attrelid, a.atttypid FROM pg_catalog.pg_attribute a \
                  WHERE a.attnum > 0 AND NOT a.attisdropped \
                 UNION \
                 SELECT ct.relid, next.typid \
                   FROM column_types ct \
                   JOIN pg_catalog.pg_type t ON t.oid = ct.typid \
                   CROSS JOIN LATERAL ( \
                       SELECT t.typbasetype WHERE t.typtype = 'd' \
                       UNION ALL SELECT t.typelem WHERE t.typelem <> 0 AND t.typlen = -1 \
                       UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a \
                                  WHERE t.typtype = 'c' AND a.attrelid = t.typrelid \
                                    AND a.attnum > 0 AND NOT a.attisdropped \
                       UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE {range_of} \
                   ) next(typid) \
             ), constraints(relid, conoid, domain) AS ( \
                 SELECT con.conrelid, con.oid, NULL::text FROM pg_catalog.pg_constraint con \
                  WHERE con.contype = 'c' AND con.conrelid <> 0 AND con.convalidated \
                 UNION \
                 SELECT ct.relid, con.oid, \
                        pg_catalog.quote_ident(dn.nspname) || '.' || pg_catalog.quote_ident(dt.typname) \
                   FROM column_types ct \
                   JOIN pg_catalog.pg_type dt ON dt.oid = ct.typid AND dt.typtype = 'd' \
                   JOIN pg_catalog.pg_namespace dn ON dn.oid = dt.typnamespace \
                   JOIN pg_catalog.pg_constraint con ON con.contypid = dt.oid AND con.contype = 'c' \
                        AND con.convalidated \
             ), called(conoid, procid) AS ( \
                 SELECT d.objid, d.refobjid FROM pg_catalog.pg_depend d \
                  WHERE d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass \
                    AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                 UNION \
                 SELECT d.objid, o.oprcode::oid FROM pg_catalog.pg_depend d \
                   JOIN pg_catalog.pg_operator o ON o.oid = d.refobjid \
                  WHERE d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass \
                    AND d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass \
             ) \
             SELECT DISTINCT n.nspname::text, c.relname::text, con.conname::text, x.domain, \
                    pg_catalog.quote_ident(pn.nspname) || '.' || pg_catalog.quote_ident(p.proname) \
                      || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')', \
                    CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END, \
                    ARRAY(SELECT DISTINCT pg_catalog.quote_ident(rn.nspname) || '.' || pg_catalog.quote_ident(rc.relname) \
                            FROM pg_catalog.pg_depend rd \
                            JOIN pg_catalog.pg_class rc ON rc.oid = rd.refobjid \
                            JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace \
                           WHERE rd.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                             AND rd.objid = p.oid \
                             AND rd.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                           ORDER BY 1), \
                    l.lanname::text, {sql_body} \
               FROM constraints x \
               JOIN pg_catalog.pg_class c ON c.oid = x.relid \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               JOIN pg_catalog.pg_constraint con ON con.oid = x.conoid \
               JOIN called f ON f.conoid = con.oid \
               JOIN pg_catalog.pg_proc p ON p.oid = f.procid \
               JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
               JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
              WHERE c.relkind IN ('r', 'p') AND {} \
                AND pn.nspname <> 'pg_catalog' \
              ORDER BY 1, 2, 3, 5",
            super::USER_RELATION
        ),
        &[],
    )?;
    let mut hazards = Vec::new();
    for r in &rows {
        hazards.push(RestoreHazard {
            schema: r.try_get(0)?,
            table: r.try_get(1)?,
            constraint: r.try_get(2)?,
            domain: r.try_get(3)?,
            // NULL when the function was dropped after the snapshot (the
            // name is read from the catalog cache): the query fails then.
            function: r.try_get(4)?,
            volatility: r.try_get(5)?,
            reads: r.try_get(6)?,
            language: r.try_get(7)?,
            reads_known: r.try_get(8)?,
        });
    }
    // An immutable function is a hazard only where the catalog shows it
    // reading a table anyway.
    hazards.retain(|h| h.volatility != "immutable" || !h.reads.is_empty());
    Ok(hazards)
}
