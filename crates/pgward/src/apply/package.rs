//! The apply package: a small TOML file that pins what a reviewer
//! approved (the artifact's bytes, the target cluster and database, the
//! role, the preconditions and the exact catalog delta) so that what runs
//! is exactly what was signed off, or nothing runs.

use super::baseline::{Kind, ObjectName};
use crate::config::ConnectionConfig;
use crate::error::{Error, Result};
use crate::scope::Scope;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Package {
    /// The SQL artifact, relative to the package file.
    pub artifact: PathBuf,
    /// The approved sha256 of the artifact's bytes (hex).
    pub artifact_sha256: String,
    /// The database the change is for (the connection's dbname is set to it).
    pub database: String,
    /// The cluster the change is for (`pg_control_system()`).
    pub system_identifier: String,
    /// The role the statements must run as (`current_user`).
    pub role: String,
    /// How long one statement may wait for a lock when applying.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: String,
    /// How long one statement may wait for a lock in the rehearsal, which
    /// runs on production: short, so that it never queues others for long.
    #[serde(default = "default_rehearsal_lock_timeout")]
    pub rehearsal_lock_timeout: String,
    /// How long one statement may run.
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout: String,
    /// The session the change runs in; unset keys: see `resolve` in mod.rs.
    #[serde(default)]
    pub apply_connection: ConnectionConfig,
    #[serde(default)]
    pub preconditions: Conditions,
    #[serde(default)]
    pub postconditions: Conditions,
    /// schema → object kind (plural, e.g. `tables`) → net change in count.
    /// Every schema and kind not named must not change.
    #[serde(default)]
    pub expected_delta: BTreeMap<String, BTreeMap<String, i64>>,
    /// Existing objects the change may alter (`table public.orders`).
    #[serde(default)]
    pub expected_altered: Vec<String>,
    /// Objects the change drops (what they hold goes with them).
    #[serde(default)]
    pub expected_dropped: Vec<String>,
    /// What the fresh backup before the change covers (`[scope]`'s keys);
    /// unset: the configuration's `[scope]`.
    pub backup_scope: Option<Scope>,
    /// Where the package was read from (not a key).
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Conditions {
    /// Objects that must not exist (`table cutter_governance.a`).
    #[serde(default)]
    pub absent: Vec<String>,
    /// Objects that must exist (`schema cutter_governance`).
    #[serde(default)]
    pub present: Vec<String>,
    /// SQL that must return one row with one boolean column, true.
    #[serde(default)]
    pub checks: Vec<String>,
}

fn default_lock_timeout() -> String {
    "5s".into()
}
fn default_rehearsal_lock_timeout() -> String {
    "2s".into()
}
fn default_statement_timeout() -> String {
    "15m".into()
}

/// The artifact as read once: these bytes are hashed and these bytes run.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub path: PathBuf,
    pub sql: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The timeouts, checked and in milliseconds (PostgreSQL's unit).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub lock_ms: u64,
    pub rehearsal_lock_ms: u64,
    pub statement_ms: u64,
}

impl Package {
    pub fn load(path: &Path) -> Result<Package> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read apply package {}: {e}", path.display()))
        })?;
        let mut package: Package = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1)
                .map(|line| format!("line {line}: "))
                .unwrap_or_default();
            Error::config(format!(
                "apply package {}: {line}{}",
                path.display(),
                e.message().trim().replace('\n', " ")
            ))
            .with_hint("see `pgward apply` in README.md for the package's keys")
        })?;
        // The report names files absolutely: a reviewer reads it elsewhere.
        package.source = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        package
            .validate()
            .map_err(|e| e.context(format!("apply package {}", path.display())))?;
        Ok(package)
    }

    fn validate(&self) -> Result<()> {
        let hex = self.artifact_sha256.to_ascii_lowercase();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::config(format!(
                "artifact-sha256 {:?} is not a sha256 (64 hex digits)",
                self.artifact_sha256
            ))
            .with_hint("pin the approved artifact with `sha256sum ARTIFACT`"));
        }
        if self.system_identifier.is_empty()
            || !self.system_identifier.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Error::config(format!(
                "system-identifier {:?} is not a cluster's system identifier",
                self.system_identifier
            ))
            .with_hint(
                "read it with `SELECT system_identifier FROM pg_control_system()` (or from `pgward check`)",
            ));
        }
        for (key, value) in [("database", &self.database), ("role", &self.role)] {
            if value.is_empty() {
                return Err(Error::config(format!("{key} is empty")));
            }
        }
        self.timeouts()?;
        for (schema, kinds) in &self.expected_delta {
            for kind in kinds.keys() {
                if Kind::from_plural(kind).is_none() {
                    return Err(Error::config(format!(
                        "expected-delta.{schema}: unknown object kind {kind:?}"
                    ))
                    .with_hint(format!("use one of: {}", Kind::plurals().join(", "))));
                }
            }
        }
        for name in self
            .preconditions
            .absent
            .iter()
            .chain(&self.preconditions.present)
            .chain(&self.postconditions.absent)
            .chain(&self.postconditions.present)
            .chain(&self.expected_altered)
            .chain(&self.expected_dropped)
        {
            ObjectName::parse(name)?;
        }
        Ok(())
    }

    pub fn timeouts(&self) -> Result<Timeouts> {
        let ms = |key: &str, text: &str| -> Result<u64> {
            let duration = crate::config::parse_duration(text)
                .map_err(|e| Error::config(format!("{key}: {e}")))?;
            let ms = duration.as_millis();
            if ms <= 0 {
                return Err(Error::config(format!("{key} must be positive")));
            }
            Ok(ms as u64)
        };
        Ok(Timeouts {
            lock_ms: ms("lock-timeout", &self.lock_timeout)?,
            rehearsal_lock_ms: ms("rehearsal-lock-timeout", &self.rehearsal_lock_timeout)?,
            statement_ms: ms("statement-timeout", &self.statement_timeout)?,
        })
    }

    pub fn artifact_path(&self) -> PathBuf {
        match self.source.parent() {
            Some(dir) if self.artifact.is_relative() => dir.join(&self.artifact),
            _ => self.artifact.clone(),
        }
    }

    /// Reads the artifact once and hashes exactly the bytes that will run.
    pub fn read_artifact(&self) -> Result<Artifact> {
        let path = self.artifact_path();
        let bytes = std::fs::read(&path).map_err(|e| {
            Error::config(format!("cannot read the artifact {}: {e}", path.display()))
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        let sql = String::from_utf8(bytes).map_err(|e| {
            Error::config(format!(
                "the artifact {} is not UTF-8 (byte {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        Ok(Artifact {
            path,
            sql,
            sha256,
            bytes: size,
        })
    }

    pub fn pinned_sha256(&self) -> String {
        self.artifact_sha256.to_ascii_lowercase()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's example package uses only keys a package has.
    #[test]
    fn the_readme_example_package_parses() {
        let readme = include_str!("../../../../README.md");
        let start = readme
            .find("# change-4711.toml\n")
            .expect("README shows an apply package");
        let block = &readme[start..];
        let block = &block[..block.find("```").expect("the block ends")];
        let package: Package = toml::from_str(block).expect("README's package parses");
        assert_eq!(
            package.expected_delta["cutter_governance"]["foreign-keys"],
            19
        );
        assert_eq!(
            package.apply_connection.user.as_deref(),
            Some("workflow_admin")
        );
        assert_eq!(package.backup_scope.unwrap().schemas.len(), 2);
        assert_eq!(package.postconditions.checks.len(), 1);
    }

    #[test]
    fn a_package_names_its_problems() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| {
            let path = dir.path().join("p.toml");
            std::fs::write(&path, text).unwrap();
            Package::load(&path).map(|_| ()).unwrap_err().to_string()
        };
        let base = "artifact = \"a.sql\"\nartifact-sha256 = \"{sha}\"\ndatabase = \"d\"\nsystem-identifier = \"{sid}\"\nrole = \"r\"\n";
        let good_sha = "0".repeat(64);
        let with = |sha: &str, sid: &str, extra: &str| {
            format!(
                "{}{extra}",
                base.replace("{sha}", sha).replace("{sid}", sid)
            )
        };
        assert!(write(&with("abc", "1", "")).contains("is not a sha256"));
        assert!(write(&with(&good_sha, "x1", "")).contains("is not a cluster's system identifier"));
        assert!(
            write(&with(&good_sha, "1", "[expected-delta.app]\ntabels = 1\n"))
                .contains("unknown object kind \"tabels\"")
        );
        assert!(
            write(&with(
                &good_sha,
                "1",
                "[preconditions]\nabsent = [\"tabel app.a\"]\n"
            ))
            .contains("does not start with an object kind")
        );
        assert!(
            write(&with(&good_sha, "1", "lock-timeout = \"0s\"\n")).contains("must be positive")
        );
        assert!(
            write(&with(&good_sha, "1", "colour = 1\n")).contains("line 6: unknown field `colour`")
        );
    }
}
