//! pgward's own database session and the catalog queries it runs.
//!
//! Like pgBackRest's `db.c`, the session is hardened before any query: the
//! search path is `pg_catalog` only and every statement is schema-qualified,
//! so objects in user schemas can never shadow what pgward reads; the
//! session is read-only, because pgward's backup role never needs to write.

pub mod dependencies;
pub mod privileges;
pub mod restorability;

use crate::connection::ConnectionTarget;
use crate::error::{Error, ErrorKind, Result};
use crate::scope::{Scope, TableName};
use serde::{Deserialize, Serialize};

/// Facts about the server that go into every manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerInfo {
    /// e.g. "16.4 (Debian 16.4-1.pgdg120+1)".
    pub version: String,
    /// e.g. 160004.
    pub version_num: u32,
    /// The cluster's system identifier (pg_control_system()).
    pub system_identifier: String,
    /// The database actually connected to.
    pub database: String,
    pub user: String,
}

impl ServerInfo {
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }
}

/// The condition (on `pg_class c` joined to `pg_namespace n`) for a
/// relation pg_dump treats as user data: not temporary, outside the system
/// schemas, not a member of an extension.
pub(crate) const USER_RELATION: &str = "c.relpersistence <> 't' \
    AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' \
    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e \
                     WHERE e.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                       AND e.objid = c.oid AND e.deptype = 'e')";

pub struct CatalogSession {
    client: postgres::Client,
}

pub(crate) fn query_error(what: &str, e: postgres::Error) -> Error {
    let detail = e
        .as_db_error()
        .map(|db| db.message().to_string())
        .unwrap_or_else(|| e.to_string());
    Error::new(ErrorKind::Connection, format!("{what}: {detail}"))
}

impl CatalogSession {
    pub fn open(target: &ConnectionTarget) -> Result<CatalogSession> {
        let mut client = target.connect()?;
        client
            .batch_execute(
                "SET search_path = pg_catalog; \
                 SET default_transaction_read_only = on; \
                 SET statement_timeout = '60s';",
            )
            .map_err(|e| query_error("cannot prepare the catalog session", e))?;
        Ok(CatalogSession { client })
    }

    /// How this session is protected: `TLSv1.3 (TLS_AES_256_GCM_SHA384)`,
    /// or `not encrypted` (a Unix socket, or a server without TLS).
    pub fn transport(&mut self) -> String {
        let row = self.client.query_opt(
            "SELECT version, cipher FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid() AND ssl",
            &[],
        );
        match row {
            Ok(Some(row)) => format!(
                "{} ({})",
                row.get::<_, Option<String>>(0).unwrap_or_default(),
                row.get::<_, Option<String>>(1).unwrap_or_default()
            ),
            Ok(None) => "not encrypted".to_string(),
            Err(_) => "of unknown protection".to_string(),
        }
    }

    /// Starts a REPEATABLE READ transaction and exports its snapshot for
    /// pg_dump (`--snapshot`). Two things follow: what pgward resolved (the
    /// tables in scope) and what pg_dump dumps are the same state of the
    /// database, and PostgreSQL refuses the import unless pg_dump reached
    /// the same database on the same server, so a pg_dump that went
    /// elsewhere fails loudly instead of dumping the wrong cluster. The
    /// session must stay open until pg_dump has started.
    ///
    /// Returns None where snapshots cannot be exported (a standby before
    /// PostgreSQL 10); the caller then relies on its other identity checks.
    pub fn export_snapshot(&mut self) -> Result<Option<String>> {
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .map_err(|e| query_error("cannot start the snapshot transaction", e))?;
        match self
            .client
            .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
        {
            Ok(row) => Ok(Some(row.get(0))),
            Err(_) => {
                self.client
                    .batch_execute("ROLLBACK")
                    .map_err(|e| query_error("cannot end the snapshot transaction", e))?;
                Ok(None)
            }
        }
    }

    pub fn server_info(&mut self) -> Result<ServerInfo> {
        let row = self
            .client
            .query_one(
                "SELECT pg_catalog.current_setting('server_version'), \
                        pg_catalog.current_setting('server_version_num')::int4, \
                        (SELECT s.system_identifier::text FROM pg_catalog.pg_control_system() s), \
                        pg_catalog.current_database()::text, current_user::text",
                &[],
            )
            .map_err(|e| query_error("cannot read the server version", e))?;
        Ok(ServerInfo {
            version: row.get(0),
            version_num: row.get::<_, i32>(1) as u32,
            system_identifier: row.get(2),
            database: row.get(3),
            user: row.get(4),
        })
    }

    /// The tables whose data pg_dump will write for `scope`: ordinary tables
    /// and partitions, outside system schemas, not owned by an extension
    /// (unless it is the extension's configuration table and the scope
    /// names it), not temporary, and not unlogged on a standby (pg_dump
    /// skips their data there). Fails when a schema or table the scope names does not
    /// exist (pg_dump's --strict-names would, later and less clearly).
    /// `scope` should be the result of [`CatalogSession::resolve_scope`].
    pub fn tables_with_data(&mut self, scope: &Scope) -> Result<Vec<TableName>> {
        let rows = self
            .client
            .query(
                &format!("SELECT n.nspname::text, c.relname::text, \
                        c.relkind = 'r' AND NOT (c.relpersistence = 'u' AND pg_catalog.pg_is_in_recovery()), \
                        NOT ({USER_RELATION}) \
                   FROM pg_catalog.pg_class c \
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') \
                    AND ({USER_RELATION} \
                         OR EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE c.oid = ANY (e.extconfig))) \
                  ORDER BY 1, 2"),
                &[],
            )
            .map_err(|e| query_error("cannot list tables", e))?;
        // An extension's configuration table counts only where the scope
        // names it: pg_dump then dumps its rows the extension marked as the
        // user's (`pg_extension_config_dump`), with the extension.
        let relations: Vec<(TableName, bool)> = rows
            .iter()
            .map(|r| {
                let name = TableName {
                    schema: r.get(0),
                    table: r.get(1),
                };
                let of_extension: bool = r.get(3);
                let has_data =
                    r.get::<_, bool>(2) && (!of_extension || scope.tables().contains(&name));
                (name, has_data)
            })
            .collect();

        let schemas: Vec<String> = self
            .client
            .query("SELECT nspname::text FROM pg_catalog.pg_namespace", &[])
            .map_err(|e| query_error("cannot list schemas", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for schema in &scope.schemas {
            if !schemas.contains(schema) {
                return Err(
                    Error::config(format!("schema {schema:?} in scope does not exist"))
                        .with_hint("fix scope.schemas (names are exact and case-sensitive)"),
                );
            }
        }
        for table in scope.tables() {
            if !relations.iter().any(|(name, _)| *name == table) {
                return Err(
                    Error::config(format!("table {table} in scope does not exist"))
                        .with_hint("fix scope.tables (schema.table, exact and case-sensitive)"),
                );
            }
        }
        Ok(relations
            .into_iter()
            .filter(|(name, has_data)| *has_data && scope.includes(name))
            .map(|(name, _)| name)
            .collect())
    }

    /// What `scope` (resolved) needs from outside itself to restore on its
    /// own (see [`dependencies`]).
    pub fn dependencies(&mut self, scope: &Scope) -> Result<dependencies::ScopeDependencies> {
        dependencies::dependencies(&mut self.client, scope)
            .map_err(|e| query_error("cannot read what the scope depends on", e))
    }

    /// The column order of every table in `scope` (see [`restorability`]).
    pub fn column_orders(&mut self, scope: &Scope) -> Result<Vec<restorability::ColumnOrder>> {
        Ok(restorability::column_orders(&mut self.client)
            .map_err(|e| query_error("cannot read the tables' column order", e))?
            .into_iter()
            .filter(|c| scope.includes(&c.name()))
            .collect())
    }

    /// The restore-order hazards on tables in `scope` (see [`restorability`]).
    pub fn restore_hazards(
        &mut self,
        scope: &Scope,
        server: &ServerInfo,
    ) -> Result<Vec<restorability::RestoreHazard>> {
        Ok(
            restorability::restore_hazards(&mut self.client, server.version_num)
                .map_err(|e| query_error("cannot look for restore-order hazards", e))?
                .into_iter()
                .filter(|h| scope.includes(&h.table_name()))
                .collect(),
        )
    }

    /// The scope pg_dump should be given: every partitioned table named in
    /// `tables` or `exclude-tables` brings its partitions along. pg_dump
    /// (before 16's --table-and-children) would otherwise dump a parent
    /// without its partitions, or partitions whose parent was excluded,
    /// which restores only with errors.
    pub fn resolve_scope(&mut self, scope: &Scope) -> Result<Scope> {
        let mut resolved = scope.clone();
        let lists = [
            (scope.tables(), &mut resolved.tables),
            (scope.excluded_tables(), &mut resolved.exclude_tables),
        ];
        for (names, list) in lists {
            for name in names {
                let rows = self
                    .client
                    .query(
                        "SELECT n.nspname::text, c.relname::text \
                           FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass($1)) t \
                           JOIN pg_catalog.pg_class c ON c.oid = t.relid \
                           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                          WHERE t.level > 0 ORDER BY t.level, 1, 2",
                        &[&privileges::qualified(&name)],
                    )
                    .map_err(|e| query_error("cannot list partitions", e))?;
                for row in rows {
                    let child = format!(
                        "{}.{}",
                        crate::scope::quote_ident(&row.get::<_, String>(0)),
                        crate::scope::quote_ident(&row.get::<_, String>(1))
                    );
                    if !list.contains(&child) {
                        list.push(child);
                    }
                }
            }
        }
        Ok(resolved)
    }
}
