//! The server a restore goes to, and the database it creates there.
//!
//! pgward only ever restores into a database it created, or one that is
//! empty; it refuses a database with anything in it, and the very database
//! the backup was taken from, unless the operator passed the flag that says
//! the existing database will be dropped.

use crate::catalog::query_error;
use crate::config::Config;
use crate::connection::{ConnectionTarget, Env};
use crate::error::{Error, ErrorKind, Result};
use crate::repository::manifest::Manifest;
use crate::scope::quote_ident;

/// A session on the restore server, in its maintenance database.
pub struct RestoreServer {
    target: ConnectionTarget,
    client: postgres::Client,
    /// The cluster's system identifier, when the role may read it.
    pub system_identifier: Option<String>,
}

/// What an empty target holds all the same.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Present {
    /// Its extensions (plpgsql aside).
    pub extensions: Vec<String>,
    /// Schemas, other than public, that hold only extensions' objects.
    pub schemas: Vec<String>,
}

/// What is at the target name now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    Absent,
    /// Holds no user objects; extensions do not count (one may create the
    /// extensions a backup needs before restoring it).
    Empty(Present),
    /// Exists and holds this many user objects.
    NotEmpty(i64),
}

impl RestoreServer {
    /// `restore-connection`, else `admin-connection`, else `connection`.
    pub fn connect(config: &Config, env: Env) -> Result<RestoreServer> {
        let settings = config
            .restore_connection
            .as_ref()
            .or(config.admin_connection.as_ref())
            .unwrap_or(&config.connection);
        // Another role's session to the backed-up server (or a spare one)
        // is verified at least as the backup's is.
        let base = if std::ptr::eq(settings, &config.connection) {
            None
        } else {
            ConnectionTarget::resolve(&config.connection, env).ok()
        };
        let target = ConnectionTarget::resolve_inheriting(settings, base.as_ref(), env)?;
        let mut client = target.connect()?;
        let system_identifier = client
            .query_one(
                "SELECT s.system_identifier::text FROM pg_catalog.pg_control_system() s",
                &[],
            )
            .ok()
            .map(|row| row.get(0));
        Ok(RestoreServer {
            target,
            client,
            system_identifier,
        })
    }

    /// The session's settings (another role's session to this server
    /// starts from them).
    pub fn target(&self) -> &ConnectionTarget {
        &self.target
    }

    /// `user@host:port`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}:{}",
            self.target.user, self.target.host, self.target.port
        )
    }

    /// The database this session is in: where pgward creates and drops
    /// databases from.
    pub fn maintenance_database(&self) -> &str {
        &self.target.dbname
    }

    /// The connection to database `dbname` on this server.
    pub fn target_for(&self, dbname: &str) -> ConnectionTarget {
        self.target.with_dbname(dbname)
    }

    /// Whether `dbname` here is the database `manifest` was taken from.
    /// Without the system identifier, the same host and port count as the
    /// same cluster: refusing too much is the safe side.
    pub fn is_source_of(&self, manifest: &Manifest, dbname: &str) -> bool {
        if dbname != manifest.database {
            return false;
        }
        match &self.system_identifier {
            Some(id) => *id == manifest.server.system_identifier,
            None => manifest
                .connection
                .contains(&format!("@{}:{}/", self.target.host, self.target.port)),
        }
    }

    pub fn state(&mut self, dbname: &str) -> Result<TargetState> {
        let exists = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
                &[&dbname],
            )
            .map_err(|e| query_error("cannot look up the target database", e))?
            .is_some();
        if !exists {
            return Ok(TargetState::Absent);
        }
        let mut client = self.target_for(dbname).connect()?;
        // Relations and functions that no extension owns, schemas that
        // hold anything else than extensions' objects, large objects.
        let row = client
            .query_one(
                "WITH member AS (SELECT classid, objid FROM pg_catalog.pg_depend WHERE deptype = 'e'), \
                      own_relation AS (SELECT c.relnamespace AS nsp FROM pg_catalog.pg_class c \
                          WHERE (c.oid, 'pg_catalog.pg_class'::pg_catalog.regclass) NOT IN \
                                (SELECT objid, classid FROM member) \
                            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                                JOIN member m ON m.classid = d.refclassid AND m.objid = d.refobjid \
                                WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                                  AND d.objid = c.oid AND d.deptype IN ('a', 'i')) \
                            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                                JOIN member m ON m.objid = i.indrelid \
                                 AND m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                                WHERE i.indexrelid = c.oid)), \
                      own_function AS (SELECT p.pronamespace AS nsp FROM pg_catalog.pg_proc p \
                          WHERE (p.oid, 'pg_catalog.pg_proc'::pg_catalog.regclass) NOT IN \
                                (SELECT objid, classid FROM member)), \
                      schemas AS (SELECT n.oid, n.nspname::text AS name, \
                          EXISTS (SELECT 1 FROM pg_catalog.pg_extension x WHERE x.extnamespace = n.oid) \
                          AND NOT EXISTS (SELECT 1 FROM own_relation r WHERE r.nsp = n.oid) \
                          AND NOT EXISTS (SELECT 1 FROM own_function f WHERE f.nsp = n.oid) AS of_extensions \
                          FROM pg_catalog.pg_namespace n \
                          WHERE n.nspname !~ '^pg_' AND n.nspname NOT IN ('information_schema', 'public')) \
                 SELECT (SELECT count(*) FROM own_relation r JOIN pg_catalog.pg_namespace n ON n.oid = r.nsp \
                          WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema') \
                      + (SELECT count(*) FROM schemas WHERE NOT of_extensions) \
                      + (SELECT count(*) FROM own_function f JOIN pg_catalog.pg_namespace n ON n.oid = f.nsp \
                          WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema') \
                      + (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata), \
                        ARRAY(SELECT name FROM schemas WHERE of_extensions ORDER BY name), \
                        ARRAY(SELECT extname::text FROM pg_catalog.pg_extension \
                               WHERE extname <> 'plpgsql' ORDER BY 1)",
                &[],
            )
            .map_err(|e| query_error("cannot inspect the target database", e))?;
        let objects: i64 = row.get(0);
        Ok(if objects == 0 {
            TargetState::Empty(Present {
                schemas: row.get(1),
                extensions: row.get(2),
            })
        } else {
            TargetState::NotEmpty(objects)
        })
    }

    /// Creates `dbname` from template0 (template1 may carry objects of its
    /// own) with the archive's encoding.
    pub fn create(&mut self, dbname: &str, encoding: Option<&str>) -> Result<()> {
        let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(dbname));
        if let Some(encoding) = encoding {
            sql.push_str(&format!(" ENCODING '{}'", encoding.replace('\'', "''")));
            // The server's default locale is most likely UTF-8, which other
            // encodings cannot use; the C locale goes with any.
            if encoding != "UTF8" {
                sql.push_str(" LC_COLLATE 'C' LC_CTYPE 'C'");
            }
        }
        self.client.batch_execute(&sql).map_err(|e| {
            let detail = e
                .as_db_error()
                .map(|db| db.message().to_string())
                .unwrap_or_else(|| e.to_string());
            Error::new(
                ErrorKind::Connection,
                format!(
                    "cannot create database {dbname:?} as {}: {detail}",
                    self.describe()
                ),
            )
            .with_hint("restore as a role with CREATEDB (set [restore-connection] in the config)")
        })
    }

    /// Takes over, in database `dbname`, the schemas in `adopted` (name,
    /// owner) that the archive creates and a new database already has
    /// (`public`, from template0), whose CREATE SCHEMA pg_restore skips:
    /// creates one that is missing, and gives each the archive's owner
    /// (unless the restore is `--no-owner`), and no comment but the
    /// archive's. Dropping and recreating would
    /// lose the grants template0 gives `public`, which pg_dump counts as
    /// the schema's initial privileges and does not write.
    pub fn adopt_schemas(
        &self,
        dbname: &str,
        adopted: &[(String, String)],
        no_owner: bool,
    ) -> Result<()> {
        if adopted.is_empty() {
            return Ok(());
        }
        let mut client = self.target_for(dbname).connect()?;
        for (schema, owner) in adopted {
            // template0's comment goes too: the archive's own comment, if
            // the schema has one, is an entry that restores after this.
            let mut sql = format!(
                "CREATE SCHEMA IF NOT EXISTS {0}; COMMENT ON SCHEMA {0} IS NULL;",
                quote_ident(schema)
            );
            if !no_owner && !owner.is_empty() {
                sql.push_str(&format!(
                    " ALTER SCHEMA {} OWNER TO {};",
                    quote_ident(schema),
                    quote_ident(owner)
                ));
            }
            client.batch_execute(&sql).map_err(|e| {
                Error::new(
                    ErrorKind::Restore,
                    format!(
                        "cannot give schema {schema:?} in database {dbname:?} the backup's owner {owner:?}: {}",
                        e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_string())
                    ),
                )
                .with_hint("create the role (restoring needs it as much as pg_restore would), or restore with --no-owner")
            })?;
        }
        Ok(())
    }

    /// Creates, in database `dbname`, the `schemas` a narrowed backup's
    /// objects and extensions live in but its archive does not create (a
    /// table scope's schema, an extension's own schema).
    pub fn create_schemas(&self, dbname: &str, schemas: &[String]) -> Result<()> {
        if schemas.is_empty() {
            return Ok(());
        }
        let sql: String = schemas
            .iter()
            .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(s)))
            .collect();
        let mut client = self.target_for(dbname).connect()?;
        client.batch_execute(&sql).map_err(|e| {
            Error::new(
                ErrorKind::Restore,
                format!(
                    "cannot create schema {} in database {dbname:?} before restoring: {}",
                    schemas.join(", "),
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |db| db.message().to_string())
                ),
            )
            .with_hint("restore as a role that may create schemas in the target (set [restore-connection])")
        })
    }

    /// Drops `dbname`. Refuses (with PostgreSQL's message) while sessions
    /// are connected to it: pgward never terminates other sessions.
    pub fn drop_database(&mut self, dbname: &str) -> Result<()> {
        self.client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(dbname)))
            .map_err(|e| {
                let detail = e
                    .as_db_error()
                    .map(|db| {
                        let mut text = db.message().to_string();
                        if let Some(more) = db.detail() {
                            text.push_str(": ");
                            text.push_str(more);
                        }
                        text
                    })
                    .unwrap_or_else(|| e.to_string());
                Error::new(
                    ErrorKind::Connection,
                    format!("cannot drop database {dbname:?}: {detail}"),
                )
                .with_hint("disconnect the other sessions from it, then run again")
            })
    }
}
