//! Building and probing the PostgreSQL client tools (pg_dump, pg_restore)
//! that pgward runs as child processes.
//!
//! pg_dump is run directly (no shell), optionally behind a command prefix
//! such as `docker exec -i CONTAINER` for PostgreSQL in a container. It
//! always writes the custom format, uncompressed, to stdout (see
//! `pipeline::archive::custom` for why), never prompts for a password
//! (`--no-password`: a prompt would hang an unattended run), and gets the
//! password only through its environment.

use crate::catalog::dependencies::ScopeDependencies;
use crate::config::ToolConfig;
use crate::connection::ConnectionTarget;
use crate::error::{Error, ErrorKind, Result};
use crate::fingerprint::TextSettings;
use crate::pipeline::child::run_to_string;
use crate::scope::Scope;
use std::path::PathBuf;
use std::process::Command;

/// How to start a client tool.
#[derive(Debug, Clone)]
pub struct Tool {
    name: &'static str,
    program: PathBuf,
    prefix: Vec<String>,
}

/// pg_dump is the tool pgward runs most; the name documents intent.
pub type PgDump = Tool;

/// A `--version` probe that takes longer than this is a broken tool (or a
/// container that does not start).
const VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// libpq environment variables that choose where a client connects.
const REDIRECTING_VARIABLES: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGTARGETSESSIONATTRS",
    "PGOPTIONS",
    "PGPASSFILE",
    // Not a redirection, but it would change the text of timestamptz
    // values behind the session settings pgward pins and records.
    "PGTZ",
];

/// A tool's version as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolVersion {
    /// e.g. "15.18".
    pub version: String,
    pub major: u32,
}

impl Tool {
    pub fn pg_dump(config: &ToolConfig) -> Tool {
        Tool::new("pg_dump", config)
    }

    pub fn pg_restore(config: &ToolConfig) -> Tool {
        Tool::new("pg_restore", config)
    }

    fn new(name: &'static str, config: &ToolConfig) -> Tool {
        Tool {
            name,
            program: config.path.clone().unwrap_or_else(|| PathBuf::from(name)),
            prefix: config.command_prefix.clone(),
        }
    }

    /// Where the program is: its path, resolved on PATH when it is a bare
    /// name and runs on this host (behind a prefix it runs elsewhere).
    pub fn location(&self) -> String {
        if self.prefix.is_empty() && self.program.components().count() == 1 {
            let found = std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(&self.program))
                    .find(|candidate| candidate.is_file())
            });
            if let Some(path) = found {
                return path.display().to_string();
            }
        }
        self.display_program()
    }

    /// The command line as it will be shown in manifests and messages.
    pub fn display_program(&self) -> String {
        let mut words = self.prefix.clone();
        words.push(self.program.display().to_string());
        words.join(" ")
    }

    fn command(&self) -> Command {
        let mut command = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        crate::storage::s3::withhold_credentials(&mut command);
        command
    }

    /// Runs `pg_dump --version`.
    pub fn version(&self) -> Result<ToolVersion> {
        let mut command = self.command();
        command.arg("--version");
        let output = run_to_string(command, VERSION_TIMEOUT).map_err(|e| {
            Error::new(
                ErrorKind::Dump,
                format!("cannot run {} --version: {e}", self.display_program()),
            )
            .with_hint(format!(
                "install {} (Debian: postgresql-client) or set {}.path in the config",
                self.name,
                self.name.replace('_', "-")
            ))
        })?;
        parse_version(&output).ok_or_else(|| {
            Error::new(
                ErrorKind::Dump,
                format!(
                    "unrecognised version output from {}: {:?}",
                    self.display_program(),
                    output.trim()
                ),
            )
        })
    }

    /// The arguments (after the program) of a custom-format dump of `scope`
    /// with the extensions it `needs`, in the exported `snapshot` when there
    /// is one, with the session `settings` the content fingerprints are
    /// computed under.
    pub fn dump_arguments(
        &self,
        target: &ConnectionTarget,
        scope: &Scope,
        needs: &ScopeDependencies,
        snapshot: Option<&str>,
        settings: &TextSettings,
    ) -> Vec<String> {
        let conninfo = target.conninfo_with_options(&settings.libpq_options());
        let mut args = vec![
            "--format=custom".to_string(),
            "--compress=0".to_string(),
            "--no-password".to_string(),
            format!("--dbname={conninfo}"),
        ];
        if let Some(snapshot) = snapshot {
            args.push(format!("--snapshot={snapshot}"));
        }
        args.extend(scope.pg_dump_args());
        args.extend(needs.pg_dump_args(scope));
        args
    }

    /// The pg_dump command for a dump (see [`Tool::client_command`]).
    pub fn dump_command(
        &self,
        target: &ConnectionTarget,
        scope: &Scope,
        needs: &ScopeDependencies,
        snapshot: Option<&str>,
        settings: &TextSettings,
    ) -> Command {
        self.client_command(
            target,
            self.dump_arguments(target, scope, needs, snapshot, settings),
        )
    }

    /// The tool with `args` (which name `target` in a conninfo), the
    /// password in the environment only. libpq variables that could send
    /// the tool somewhere other than the conninfo says (PGHOSTADDR, a
    /// service file, ...) are removed: it must reach exactly the server
    /// pgward resolved and checked.
    pub fn client_command(&self, target: &ConnectionTarget, args: Vec<String>) -> Command {
        let mut command = self.command();
        command.args(args);
        for variable in REDIRECTING_VARIABLES {
            command.env_remove(variable);
        }
        match target.password() {
            Some(password) => command.env("PGPASSWORD", password.expose()),
            None => command.env_remove("PGPASSWORD"),
        };
        // Messages pgward reads (errors, pg_restore's progress) in English
        // and without colour codes, whatever the operator's locale.
        command
            .env("LC_ALL", "C")
            .env("LANGUAGE", "C")
            .env("PG_COLOR", "never");
        command
    }

    /// Whether the tool runs behind a command prefix (in a container, say),
    /// where files on this host are out of its reach.
    pub fn is_prefixed(&self) -> bool {
        !self.prefix.is_empty()
    }
}

/// pg_dump refuses servers of a newer major version; say so before trying.
pub fn require_can_dump(pg_dump: &ToolVersion, server: &crate::catalog::ServerInfo) -> Result<()> {
    if pg_dump.major >= server.major() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Dump,
        format!(
            "pg_dump {} is older than the server ({}); pg_dump refuses to dump a newer server",
            pg_dump.version, server.version
        ),
    )
    .with_hint(format!(
        "install pg_dump {} or newer (Debian: postgresql-client-{}) and set pg-dump.path",
        server.major(),
        server.major()
    )))
}

/// A narrowed scope's extensions go into the dump with `--extension`,
/// which pg_dump has since PostgreSQL 14.
pub fn require_can_include_extensions(
    pg_dump: &ToolVersion,
    scope: &Scope,
    needs: &ScopeDependencies,
) -> Result<()> {
    if pg_dump.major >= 14 || needs.pg_dump_args(scope).is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = needs.extensions.iter().map(|e| e.name.as_str()).collect();
    Err(Error::new(
        ErrorKind::Dump,
        format!(
            "the scope needs extensions {}, and pg_dump {} cannot include them in a narrowed dump (--extension came with PostgreSQL 14)",
            names.join(", "),
            pg_dump.version
        ),
    )
    .with_hint("install pg_dump 14 or newer (it dumps older servers too) and set pg-dump.path, or back up the whole database"))
}

/// Parses "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)".
pub fn parse_version(output: &str) -> Option<ToolVersion> {
    let line = output.lines().next()?;
    let version = line
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?
        .trim_end_matches(|c: char| !c.is_ascii_digit());
    let major = version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(ToolVersion {
        version: version.to_string(),
        major,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = parse_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n").unwrap();
        assert_eq!((v.version.as_str(), v.major), ("15.18", 15));
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 17beta2").unwrap().major,
            17
        );
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 9.6.24").unwrap().major,
            9
        );
        assert!(parse_version("command not found").is_none());
    }
}
