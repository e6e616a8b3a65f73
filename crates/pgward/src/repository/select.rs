//! Which backup a command means: an id, or `latest` among the backups of
//! one database (and, when the configuration narrows it, one scope).
//!
//! A repository may hold the backups of several databases; `latest` run
//! with `appdb`'s configuration must never pick another database's newest
//! backup. The database comes from `--database`, else from the connection
//! settings when they name one; when neither does and the repository
//! holds the backups of several databases, `latest` is ambiguous and
//! refused.

use super::Repository;
use crate::config::Config;
use crate::connection::{ConnectionTarget, Env};
use crate::error::{Error, ErrorKind, Result};
use crate::repository::manifest::Manifest;
use crate::scope::Scope;

/// A backup as a command names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// An id, or `latest`.
    pub backup: String,
    /// Only backups of this database.
    pub database: Option<String>,
    /// Whether `database` was named on the command line (`--database`):
    /// then an id of another database is refused too.
    pub database_given: bool,
    /// Only backups of this scope (for `latest`).
    pub scope: Option<Scope>,
}

impl Selector {
    /// `backup` among all backups (the library's plain form).
    pub fn any(backup: &str) -> Selector {
        Selector {
            backup: backup.to_string(),
            database: None,
            database_given: false,
            scope: None,
        }
    }

    /// `backup` among the backups of `database` if given, else of the
    /// database the connection settings name (conninfo, config, service
    /// file or PGDATABASE), and of the configured scope (the whole
    /// database unless `[scope]` narrows it). Connection settings that
    /// cannot be read are an error, never "no database named".
    pub fn configured(
        backup: &str,
        config: &Config,
        database: Option<&str>,
        env: Env,
    ) -> Result<Selector> {
        let (database, database_given) = match database {
            Some(database) => (Some(database.to_string()), true),
            None => {
                let target = ConnectionTarget::resolve(&config.connection, env).map_err(|e| {
                    e.context("cannot tell which database's backups are meant")
                        .with_hint("fix the connection settings, or pass --database NAME")
                })?;
                (target.named_database().map(String::from), false)
            }
        };
        Ok(Selector {
            backup: backup.to_string(),
            database,
            database_given,
            scope: Some(config.scope.clone()),
        })
    }

    fn admits(&self, manifest: &Manifest) -> bool {
        self.database
            .as_deref()
            .is_none_or(|d| manifest.database == d)
            && self.scope.as_ref().is_none_or(|s| &manifest.scope == s)
    }

    fn describe(&self) -> String {
        let scope = match &self.scope {
            Some(scope) if *scope == Scope::default() => " (whole database)".to_string(),
            Some(_) => " with the configured scope".to_string(),
            None => String::new(),
        };
        match &self.database {
            Some(database) => format!("database {database}{scope}"),
            None if self.scope.is_some() => format!("the configured scope{scope}"),
            None => "this repository".to_string(),
        }
    }
}

impl Repository {
    /// The backup `selector` names. `latest` is the newest intact backup
    /// it admits; a damaged one named by its id is an integrity error
    /// that says why; an id of another database than the one asked for
    /// is refused.
    pub fn find(&self, selector: &Selector) -> Result<Manifest> {
        let wanted = selector.backup.as_str();
        let catalog = self.catalog()?;
        if let Some(damaged) = catalog
            .damaged
            .iter()
            .find(|d| d.id.as_deref() == Some(wanted))
        {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "backup {wanted} is damaged: {} is {}",
                    damaged.file, damaged.cause
                ),
            )
            .with_hint("do not rely on it; restore from another backup (`pgward list` shows them) and inspect the file"));
        }
        if wanted != "latest" {
            let found = catalog.backups.into_iter().find(|m| m.id == wanted);
            return match found {
                Some(manifest) => match &selector.database {
                    Some(database)
                        if selector.database_given && &manifest.database != database =>
                    {
                        Err(Error::config(format!(
                            "backup {wanted} is a backup of database {}, not of {database}",
                            manifest.database
                        ))
                        .with_hint("name a backup of this database, or pass --database with the database it is of"))
                    }
                    _ => Ok(manifest),
                },
                None => Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no backup {wanted:?} in {}", self.root().display()),
                )
                .with_hint("run `pgward list` to see the backups in this repository")),
            };
        }
        if selector.database.is_none() {
            let mut databases: Vec<&str> = catalog
                .backups
                .iter()
                .filter(|m| selector.admits(m))
                .map(|m| m.database.as_str())
                .collect();
            databases.sort();
            databases.dedup();
            if databases.len() > 1 {
                return Err(Error::config(format!(
                    "`latest` is ambiguous: {} holds backups of {}",
                    self.root().display(),
                    databases.join(", ")
                ))
                .with_hint("pass --database NAME (or name the database in the connection settings), or a backup id"));
            }
        }
        if let Some(newer) = catalog.damaged.iter().find(|d| {
            d.is_newer_format()
                && selector
                    .database
                    .as_deref()
                    .is_none_or(|database| d.is_of_database(database))
        }) {
            return Err(Error::config(format!(
                "{} is {}: `latest` may not be the newest backup",
                newer.file, newer.cause
            ))
            .with_hint("use the pgward version that wrote it, or name a backup by its id"));
        }
        if let Some(found) = catalog.backups.iter().find(|m| selector.admits(m)) {
            return Ok(found.clone());
        }
        // Backups of the database with another scope (a one-off `backup
        // --table x`, say) are never `latest` of the configured scope.
        let other_scopes = catalog
            .backups
            .iter()
            .filter(|m| selector.database.as_deref().is_none_or(|d| m.database == d))
            .count();
        let hint = if other_scopes > 0 {
            format!(
                "{other_scopes} backup(s) of other scopes are here: name one by its id (`pgward list`), or set [scope] to theirs"
            )
        } else {
            "run `pgward list` to see the backups in this repository".to_string()
        };
        Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no backup of {} in {}",
                selector.describe(),
                self.root().display()
            ),
        )
        .with_hint(hint))
    }
}
