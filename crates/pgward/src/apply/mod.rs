//! `pgward apply`: a reviewed SQL change applied under governance, as one
//! run with named steps:
//!
//! 1. **pin** (P3): the artifact is read once; its sha256 must equal the
//!    approved one, and exactly those bytes run later. Nothing connects
//!    before this holds.
//! 2. **statements**: split by PostgreSQL's parser; transaction control
//!    and statements that cannot run in a transaction are refused.
//! 3. **preflight** (P1): cluster, database and role are the pinned ones;
//!    preconditions hold; the catalog baseline is read.
//! 4. **rehearsal**: the whole artifact runs in a transaction that is
//!    always rolled back; the catalog delta it made must be the declared one.
//! 5. **backup** (P2): a fresh backup through the normal backup path.
//! 6. **apply**: one transaction; before COMMIT the delta and the
//!    postconditions are checked again, else ROLLBACK.
//! 7. **verify**: after COMMIT the baseline is re-read and the delta
//!    checked; after a rollback it is re-read to prove nothing changed.
//!
//! Every outcome, refusals included, leaves a report (JSON and Markdown)
//! in the repository.

pub mod baseline;
pub mod package;
mod report;
pub mod session;
pub mod statements;

use crate::config::Config;
use crate::connection::{ConnectionTarget, Env};
use crate::encryption::secret::Decryptor;
use crate::error::{Error, Result};
use crate::repository::Repository;
use baseline::{Baseline, BaselineSummary, Delta, Expected, ObjectName};
use package::{Artifact, Package};
use serde::Serialize;
use session::StatementFailure;
use statements::{Refusal, SplitError, Statement};
use std::path::PathBuf;
use std::time::Instant;

pub use report::markdown;

/// Per-run choices that are not in the package.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    pub package: PathBuf,
    /// Stop after the rehearsal: no change (and, rehearsing on
    /// production, no backup).
    pub preflight_only: bool,
    pub rehearse_on: RehearseOn,
}

/// Where the rolled-back rehearsal runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RehearseOn {
    /// In the production database, before the backup: the locks the
    /// artifact takes are held until the rollback (waits for them are
    /// bounded by rehearsal-lock-timeout), and a table rewrite is done and
    /// undone there.
    #[default]
    Production,
    /// In a scratch restore of the fresh backup (drill-style, proven,
    /// then dropped): production's locks are never touched before the apply.
    Scratch,
}

/// How an apply ended; README's exit-code table maps each to a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// The change is committed and its delta verified.
    Applied,
    /// `--preflight-only`: every check and the rehearsal passed.
    PreflightPassed,
    /// The artifact is not the approved one; nothing connected.
    Refused,
    /// A precondition did not hold (identity, preconditions, statements,
    /// rehearsal, the fresh backup); nothing was changed.
    BlockedPreflight,
    /// The change ran and was rolled back.
    FailedRolledBack,
    /// The session broke during COMMIT and the server could not be asked
    /// whether it committed: someone must look.
    InDoubt,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Applied => "APPLIED",
            Status::PreflightPassed => "PREFLIGHT_PASSED",
            Status::Refused => "REFUSED",
            Status::BlockedPreflight => "BLOCKED_PREFLIGHT",
            Status::FailedRolledBack => "FAILED_ROLLED_BACK",
            Status::InDoubt => "IN_DOUBT",
        }
    }
}

/// One check of the procedure with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    /// PASS or FAIL.
    pub status: &'static str,
    pub evidence: String,
}

/// A transaction the artifact ran in: the rehearsal or the apply.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Phase {
    /// `production`, or the scratch database it ran in.
    pub ran_in: String,
    pub duration_ms: u64,
    pub statements_run: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<StatementFailure>,
    /// The catalog delta measured inside the transaction, before it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    /// How the delta and postconditions differ from the package's.
    pub mismatches: Vec<String>,
    /// COMMIT or ROLLBACK.
    pub ended_with: &'static str,
    /// The signal that stopped the transaction, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_by: Option<i32>,
}

/// The fresh backup taken before the change.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BackupEvidence {
    pub id: String,
    pub artifact: String,
    pub archive_format: String,
    pub archive_bytes: u64,
    pub archive_sha256: String,
    pub stored_bytes: u64,
    pub stored_sha256: String,
    pub encrypted: bool,
    pub tables: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ArtifactEvidence {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: Option<String>,
    pub approved_sha256: String,
    pub statements: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TargetEvidence {
    pub database: String,
    pub system_identifier: String,
    pub role: String,
    /// `user@host:port/dbname` of the change's session (no secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
}

/// Everything a reviewer needs to sign the change off (or to see why it
/// did not happen). Never holds a secret.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApplyReport {
    pub id: String,
    pub status: Status,
    /// One line: why the status is not APPLIED / PREFLIGHT_PASSED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// What an operator can do about it; never executed by pgward.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remediation: Vec<String>,
    pub package: PathBuf,
    pub artifact: ArtifactEvidence,
    pub target: TargetEvidence,
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_statements: Vec<Refusal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rehearsal: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupEvidence>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_before: Option<BaselineSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_after: Option<BaselineSummary>,
    pub production_changed: bool,
    pub production_evidence: String,
    /// The signal (SIGINT 2, SIGTERM 15, SIGHUP 1) that stopped the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_by: Option<i32>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// Where this report was written (JSON, Markdown).
    pub report_files: Vec<PathBuf>,
    /// Problems writing the report itself.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl ApplyReport {
    /// Whether the command succeeded: applied and verified, or a
    /// preflight that passed.
    pub fn succeeded(&self) -> bool {
        matches!(self.status, Status::Applied | Status::PreflightPassed)
            && self.checks.iter().all(|c| c.status == "PASS")
    }
}

/// Runs the package. `Err` only for what prevents a report (an unreadable
/// or invalid package, no repository); every other outcome is a report.
pub fn run(
    config: &Config,
    options: &ApplyOptions,
    env: Env,
    decryptor: &mut dyn FnMut() -> Result<Option<Decryptor>>,
) -> Result<ApplyReport> {
    let package = Package::load(&options.package)?;
    let repo = Repository::init_configured(config)?;
    let base = ConnectionTarget::resolve(&config.connection, env)?;
    let apply_target = apply_target(&package, &base, env)?;
    let mut run = Procedure::new(&package, &apply_target);
    let outcome = run.execute(config, options, &package, &apply_target, env, decryptor);
    run.finish(outcome, &repo)
}

/// The change's session: `[apply-connection]`, with the package's
/// database, and the server of `[connection]` (host, port and how it is
/// verified) unless the section names another.
fn apply_target(package: &Package, base: &ConnectionTarget, env: Env) -> Result<ConnectionTarget> {
    let mut section = package.apply_connection.clone();
    let names_a_server = section.host.is_some()
        || section
            .dbname
            .as_deref()
            .is_some_and(|d| d.contains('=') || d.contains("://"));
    if !names_a_server {
        section.host = Some(base.host.clone());
        section.port = section.port.or(Some(base.port));
    }
    section
        .command_line
        .push(("dbname", package.database.clone()));
    ConnectionTarget::resolve_inheriting(&section, Some(base), env)
        .map_err(|e| e.context("apply package [apply-connection]"))
}

/// The apply role's session to a scratch database on the restore server.
fn scratch_target(
    package: &Package,
    restore: &ConnectionTarget,
    scratch: &str,
    env: Env,
) -> Result<ConnectionTarget> {
    let mut section = package.apply_connection.clone();
    section.dbname = None;
    section.host = Some(restore.host.clone());
    section.port = Some(restore.port);
    section.command_line.push(("dbname", scratch.to_string()));
    ConnectionTarget::resolve_inheriting(&section, Some(restore), env)
}

/// How the steps ended, before the report is written.
struct Ending {
    status: Status,
    cause: Option<String>,
    remediation: Vec<String>,
}

impl Ending {
    fn blocked(cause: impl Into<String>) -> Ending {
        Ending {
            status: Status::BlockedPreflight,
            cause: Some(cause.into()),
            remediation: Vec::new(),
        }
    }
}

/// The report under construction while the steps run.
struct Procedure {
    report: ApplyReport,
    started: Instant,
    /// The baseline the change is measured against (read-only, preflight).
    before: Option<Baseline>,
    /// The artifact ended pgward's transaction: what ran after that is
    /// not known to be rolled back.
    escaped: bool,
    /// Signals become a rollback and a report, never a process killed
    /// mid-transaction: watched from the first step that writes (before
    /// it, Ctrl-C simply ends a read-only preflight, or a hung connect).
    /// Suspended while `backup` and `drill` run their own.
    watch: Option<crate::interrupt::InterruptWatch>,
}

impl Procedure {
    fn new(package: &Package, target: &ConnectionTarget) -> Procedure {
        let now = jiff::Timestamp::now();
        Procedure {
            report: ApplyReport {
                id: crate::repository::new_backup_id(&package.database, now),
                status: Status::BlockedPreflight,
                cause: None,
                remediation: Vec::new(),
                package: package.source.clone(),
                artifact: ArtifactEvidence {
                    path: package.artifact_path(),
                    bytes: 0,
                    sha256: None,
                    approved_sha256: package.pinned_sha256(),
                    statements: 0,
                },
                target: TargetEvidence {
                    database: package.database.clone(),
                    system_identifier: package.system_identifier.clone(),
                    role: package.role.clone(),
                    session: Some(target.describe()),
                    server_version: None,
                },
                checks: Vec::new(),
                refused_statements: Vec::new(),
                rehearsal: None,
                backup: None,
                apply: None,
                baseline_before: None,
                baseline_after: None,
                production_changed: false,
                production_evidence: "nothing connected to the database".into(),
                interrupted_by: None,
                started_at: timestamp(now),
                finished_at: String::new(),
                duration_ms: 0,
                report_files: Vec::new(),
                warnings: Vec::new(),
            },
            started: Instant::now(),
            before: None,
            escaped: false,
            watch: None,
        }
    }

    /// Hands signals over to a step that watches them itself (backup,
    /// drill); refuses when one already arrived.
    fn suspend_watch(&mut self) -> std::result::Result<(), Ending> {
        self.interrupted()?;
        self.watch = None;
        Ok(())
    }

    fn resume_watch(&mut self) {
        self.watch = crate::interrupt::InterruptWatch::install().ok();
    }

    /// Stops the procedure between steps when a signal arrived.
    fn interrupted(&mut self) -> std::result::Result<(), Ending> {
        match crate::interrupt::pending() {
            Some(signal) if self.watch.is_some() => {
                self.report.interrupted_by = Some(signal);
                Err(Ending::blocked(format!(
                    "interrupted by signal {signal} before the change ran"
                )))
            }
            _ => Ok(()),
        }
    }

    fn check(&mut self, name: &str, passed: bool, evidence: impl Into<String>) -> bool {
        self.report.checks.push(Check {
            name: name.to_string(),
            status: if passed { "PASS" } else { "FAIL" },
            evidence: evidence.into(),
        });
        passed
    }

    fn execute(
        &mut self,
        config: &Config,
        options: &ApplyOptions,
        package: &Package,
        target: &ConnectionTarget,
        env: Env,
        decryptor: &mut dyn FnMut() -> Result<Option<Decryptor>>,
    ) -> Ending {
        // P3: the approved bytes, or nothing.
        let artifact = match package.read_artifact() {
            Ok(artifact) => artifact,
            Err(error) => {
                return Ending {
                    status: Status::Refused,
                    cause: Some(error.message().to_string()),
                    remediation: Vec::new(),
                };
            }
        };
        self.report.artifact.bytes = artifact.bytes;
        self.report.artifact.sha256 = Some(artifact.sha256.clone());
        let pinned = package.pinned_sha256();
        if !self.check(
            "artifact-sha256",
            artifact.sha256 == pinned,
            format!("sha256 {} (approved {pinned})", artifact.sha256),
        ) {
            return Ending {
                status: Status::Refused,
                cause: Some(format!(
                    "the artifact {} is not the approved one: sha256 {}, approved {pinned}",
                    artifact.path.display(),
                    artifact.sha256
                )),
                remediation: vec![
                    "apply the artifact that was reviewed, or have this one reviewed and pin its sha256 in the package".into(),
                ],
            };
        }
        let statements = match self.statements(&artifact) {
            Ok(statements) => statements,
            Err(ending) => return ending,
        };
        let mut client = match target.connect() {
            Ok(client) => client,
            Err(error) => {
                return Ending::blocked(format!(
                    "cannot connect as the apply role: {}",
                    error.message()
                ));
            }
        };
        self.report.production_evidence = "the change was never run on the database".into();
        if let Err(ending) = self.preflight(&mut client, package) {
            return ending;
        }
        self.resume_watch();
        let prepared = match options.rehearse_on {
            RehearseOn::Production => self
                .rehearse(&mut client, target, package, &statements, "production")
                .and_then(|()| self.left_no_trace(&mut client))
                .and_then(|()| self.interrupted())
                .and_then(|()| match options.preflight_only {
                    true => Ok(()),
                    false => self.fresh_backup(config, package, env),
                }),
            RehearseOn::Scratch => self.fresh_backup(config, package, env).and_then(|()| {
                self.rehearse_on_scratch(config, package, &statements, env, decryptor)
            }),
        };
        if let Err(ending) = prepared.and_then(|()| self.interrupted()) {
            return self.unchanged(&mut client, ending);
        }
        if options.preflight_only {
            return Ending {
                status: Status::PreflightPassed,
                cause: None,
                remediation: Vec::new(),
            };
        }
        self.apply(&mut client, target, package, &statements)
    }

    fn statements(&mut self, artifact: &Artifact) -> std::result::Result<Vec<Statement>, Ending> {
        match statements::split(&artifact.sql) {
            Ok(statements) => {
                self.report.artifact.statements = statements.len();
                self.check(
                    "statements",
                    true,
                    format!(
                        "{} statements, none of them transaction control or non-transactional",
                        statements.len()
                    ),
                );
                Ok(statements)
            }
            Err(SplitError::Syntax { line, message }) => {
                self.check("statements", false, format!("line {line}: {message}"));
                Err(Ending::blocked(format!(
                    "the artifact does not parse as SQL: line {line}: {message}"
                )))
            }
            Err(SplitError::Empty) => {
                self.check("statements", false, "no statements");
                Err(Ending::blocked("the artifact holds no SQL statement"))
            }
            Err(SplitError::Refused(refusals)) => {
                let first = &refusals[0];
                let cause = format!(
                    "{} statement(s) cannot be part of the change's one transaction; first: statement {} (line {}, {}): {}",
                    refusals.len(),
                    first.number,
                    first.line,
                    first.summary,
                    first.reason
                );
                self.check(
                    "statements",
                    false,
                    refusals
                        .iter()
                        .map(|r| format!("line {} {}", r.line, r.summary))
                        .collect::<Vec<_>>()
                        .join("; "),
                );
                self.report.refused_statements = refusals;
                Err(Ending::blocked(cause))
            }
        }
    }

    /// P1: identity, preconditions, baseline. Read-only.
    fn preflight(
        &mut self,
        client: &mut postgres::Client,
        package: &Package,
    ) -> std::result::Result<(), Ending> {
        let failed = |what: &str, e: postgres::Error| {
            Ending::blocked(crate::catalog::query_error(what, e).message().to_string())
        };
        let row = client
            .query_one(
                "SELECT (SELECT s.system_identifier::text FROM pg_catalog.pg_control_system() s), \
                        pg_catalog.current_database()::text, current_user::text, \
                        pg_catalog.current_setting('server_version'), \
                        pg_catalog.current_setting('standard_conforming_strings')",
                &[],
            )
            .map_err(|e| failed("reading the server's identity", e))?;
        let (system_identifier, database, role): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        self.report.target.server_version = Some(row.get(3));
        let mut blocked = Vec::new();
        if !self.check(
            "system-identifier",
            system_identifier == package.system_identifier,
            format!("{system_identifier} (pinned {})", package.system_identifier),
        ) {
            blocked.push(format!(
                "the server's system identifier is {system_identifier}, the package pins {}: this is another cluster",
                package.system_identifier
            ));
        }
        if !self.check(
            "database",
            database == package.database,
            format!("{database} (pinned {})", package.database),
        ) {
            blocked.push(format!(
                "connected to database {database}, the package is for {}",
                package.database
            ));
        }
        if !self.check(
            "role",
            role == package.role,
            format!("current_user {role} (pinned {})", package.role),
        ) {
            blocked.push(format!(
                "the change would run as {role}, the package pins {}",
                package.role
            ));
        }
        // The artifact was split by a parser that reads `\` in a literal
        // as a character; so must the server.
        let conforming: String = row.get(4);
        if !self.check(
            "standard-conforming-strings",
            conforming == "on",
            format!("standard_conforming_strings = {conforming}"),
        ) {
            blocked.push(format!(
                "the session has standard_conforming_strings = {conforming}: the server would read the artifact's string literals otherwise than the parser that checked it"
            ));
        }
        if !blocked.is_empty() {
            return Err(Ending::blocked(blocked.join("; ")));
        }
        let before = baseline::measure_read_only(client)
            .map_err(|e| Ending::blocked(e.message().to_string()))?;
        let summary = before.summary();
        self.check(
            "baseline",
            true,
            format!("{} objects, digest {}", summary.objects, summary.digest),
        );
        self.report.baseline_before = Some(summary);
        let mut unmet = object_conditions(&package.preconditions, &before);
        unmet.extend(
            sql_checks(client, &package.preconditions.checks, true)
                .map_err(|e| Ending::blocked(e.message().to_string()))?,
        );
        self.check(
            "preconditions",
            unmet.is_empty(),
            if unmet.is_empty() {
                format!(
                    "{} absent, {} present, {} SQL checks hold",
                    package.preconditions.absent.len(),
                    package.preconditions.present.len(),
                    package.preconditions.checks.len()
                )
            } else {
                unmet.join("; ")
            },
        );
        self.before = Some(before);
        if !unmet.is_empty() {
            return Err(Ending::blocked(format!(
                "preconditions do not hold: {}",
                unmet.join("; ")
            )));
        }
        Ok(())
    }

    /// The whole artifact in a transaction that is always rolled back.
    fn rehearse(
        &mut self,
        client: &mut postgres::Client,
        target: &ConnectionTarget,
        package: &Package,
        statements: &[Statement],
        ran_in: &str,
    ) -> std::result::Result<(), Ending> {
        let timeouts = package.timeouts().expect("validated when loaded");
        let mut phase = self.transaction(
            client,
            target,
            package,
            statements,
            timeouts.rehearsal_lock_ms,
            timeouts.statement_ms,
            false,
        );
        phase.ran_in = ran_in.to_string();
        let passed = phase.failure.is_none()
            && phase.mismatches.is_empty()
            && phase.interrupted_by.is_none();
        let ending = if let Some(signal) = phase.interrupted_by {
            Some(Ending::blocked(format!(
                "rehearsal: interrupted by signal {signal}; rolled back"
            )))
        } else if let Some(failure) = &phase.failure {
            let (cause, remediation) = explain(client, failure, package);
            Some(Ending {
                status: Status::BlockedPreflight,
                cause: Some(format!("rehearsal: {cause}")),
                remediation,
            })
        } else if !phase.mismatches.is_empty() {
            Some(Ending::blocked(format!(
                "rehearsal: the change does not do what the package declares: {}",
                phase.mismatches.join("; ")
            )))
        } else {
            None
        };
        self.check(
            "rehearsal",
            passed,
            match &ending {
                None => format!(
                    "{} statements ran in {ran_in} and were rolled back in {} ms; the catalog delta is the declared one",
                    phase.statements_run, phase.duration_ms
                ),
                Some(ending) => ending.cause.clone().unwrap_or_default(),
            },
        );
        self.report.rehearsal = Some(phase);
        match ending {
            Some(ending) => Err(ending),
            None => Ok(()),
        }
    }

    /// The rehearsal on a scratch restore of the fresh backup: the backup
    /// is drilled (restored, proven table by table, its verdict recorded),
    /// the scratch database kept for the rehearsal, then dropped.
    fn rehearse_on_scratch(
        &mut self,
        config: &Config,
        package: &Package,
        statements: &[Statement],
        env: Env,
        decryptor: &mut dyn FnMut() -> Result<Option<Decryptor>>,
    ) -> std::result::Result<(), Ending> {
        let id = self.report.backup.as_ref().expect("taken first").id.clone();
        let options = crate::drill::DrillOptions {
            restore: crate::restore::RestoreOptions::default(),
            keep: true,
        };
        let selector = crate::repository::select::Selector::any(&id);
        self.suspend_watch()?;
        let drill = crate::drill::run(config, env, &selector, &options, decryptor, &mut |_| {});
        self.resume_watch();
        let drill = match drill {
            Ok(drill) => drill,
            Err(error) => {
                self.check("scratch", false, error.to_string());
                return Err(Ending::blocked(format!(
                    "the scratch restore of backup {id} failed: {}",
                    error.message()
                )));
            }
        };
        let scratch = drill
            .record
            .restored_to
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut server = match crate::restore::target::RestoreServer::connect(config, env) {
            Ok(server) => server,
            Err(error) => {
                return Err(Ending::blocked(format!(
                    "cannot reach the restore server to rehearse on {scratch} (left in place): {}",
                    error.message()
                )));
            }
        };
        let result = match &drill.record.first_failure {
            Some(failure) => {
                self.check("scratch", false, failure.clone());
                Err(Ending::blocked(format!(
                    "the fresh backup {id} failed its drill, so there is no change: {failure}"
                )))
            }
            None => {
                self.check(
                    "scratch",
                    true,
                    format!("backup {id} restored into {scratch} and proven (drill PASS)"),
                );
                let restore_target = server.target();
                scratch_target(package, restore_target, &scratch, env)
                    .and_then(|target| Ok((target.connect()?, target)))
                    .map_err(|error| {
                        Ending::blocked(format!(
                            "cannot connect as the apply role to the scratch database {scratch}: {}",
                            error.message()
                        ))
                    })
                    .and_then(|(mut client, target)| {
                        self.rehearse(&mut client, &target, package, statements, &scratch)
                    })
            }
        };
        if let Err(error) = server.drop_database(&scratch) {
            self.report.warnings.push(format!(
                "the scratch database {scratch} could not be dropped: {}",
                error.message()
            ));
        }
        result
    }

    /// P2: a fresh backup of the package's scope, through `backup::run`.
    fn fresh_backup(
        &mut self,
        config: &Config,
        package: &Package,
        env: Env,
    ) -> std::result::Result<(), Ending> {
        let mut config = config.clone();
        config
            .connection
            .command_line
            .push(("dbname", package.database.clone()));
        if let Some(scope) = &package.backup_scope {
            config.scope = scope.clone();
        }
        self.suspend_watch()?;
        let outcome = crate::backup::run(
            &config,
            &crate::backup::BackupOptions::default(),
            env,
            &mut |_| {},
        );
        self.resume_watch();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                if let crate::error::ErrorKind::Interrupted { signal } = error.kind() {
                    self.report.interrupted_by = Some(signal);
                }
                self.check("backup", false, error.to_string());
                return Err(Ending {
                    status: Status::BlockedPreflight,
                    cause: Some(format!(
                        "the fresh backup failed, and there is no change without one: {}",
                        error.message()
                    )),
                    remediation: error.hint().map(str::to_string).into_iter().collect(),
                });
            }
        };
        let manifest = &outcome.manifest;
        let same_cluster = manifest.server.system_identifier == package.system_identifier
            && manifest.database == package.database;
        self.report.backup = Some(BackupEvidence {
            id: manifest.id.clone(),
            artifact: manifest.artifact.file.clone(),
            archive_format: manifest.archive.format.clone(),
            archive_bytes: manifest.archive.bytes,
            archive_sha256: manifest.archive.sha256.clone(),
            stored_bytes: manifest.artifact.bytes,
            stored_sha256: manifest.artifact.sha256.clone(),
            encrypted: manifest.artifact.encryption.is_some(),
            tables: manifest.tables.len(),
        });
        self.check(
            "backup",
            same_cluster,
            format!(
                "backup {} of {} on cluster {}: {} archive bytes, sha256 {}",
                manifest.id,
                manifest.database,
                manifest.server.system_identifier,
                manifest.archive.bytes,
                manifest.archive.sha256
            ),
        );
        if !same_cluster {
            return Err(Ending::blocked(format!(
                "the fresh backup {} is of database {} on cluster {}, not of the change's target",
                manifest.id, manifest.database, manifest.server.system_identifier
            )));
        }
        Ok(())
    }

    /// The change itself: one transaction, committed only when its delta
    /// and postconditions are exactly the package's.
    fn apply(
        &mut self,
        client: &mut postgres::Client,
        target: &ConnectionTarget,
        package: &Package,
        statements: &[Statement],
    ) -> Ending {
        let timeouts = package.timeouts().expect("validated when loaded");
        let phase = self.transaction(
            client,
            target,
            package,
            statements,
            timeouts.lock_ms,
            timeouts.statement_ms,
            true,
        );
        let committed = phase.ended_with == "COMMIT";
        let ending = if phase.ended_with == "UNKNOWN" {
            self.report.apply = Some(phase);
            self.report.production_changed = true;
            self.report.production_evidence = "unknown: the session broke during COMMIT and the server could not be asked whether it committed".into();
            return Ending {
                status: Status::InDoubt,
                cause: Some("the session broke during COMMIT; whether the change is committed is unknown".into()),
                remediation: vec![
                    "look at the catalog (the report's baseline-before is what it was), then apply again or not; the fresh backup is in the repository".into(),
                ],
            };
        } else if let Some(signal) = phase.interrupted_by {
            Ending {
                status: Status::FailedRolledBack,
                cause: Some(format!(
                    "interrupted by signal {signal}{}; rolled back",
                    phase
                        .failure
                        .as_ref()
                        .map(|f| format!(" during statement {} ({})", f.number, f.summary))
                        .unwrap_or_default()
                )),
                remediation: Vec::new(),
            }
        } else if let Some(failure) = &phase.failure {
            let (cause, remediation) = explain(client, failure, package);
            Ending {
                status: Status::FailedRolledBack,
                cause: Some(cause),
                remediation,
            }
        } else if !phase.mismatches.is_empty() {
            Ending {
                status: Status::FailedRolledBack,
                cause: Some(format!("rolled back: {}", phase.mismatches.join("; "))),
                remediation: Vec::new(),
            }
        } else {
            Ending {
                status: Status::Applied,
                cause: None,
                remediation: Vec::new(),
            }
        };
        self.report.apply = Some(phase);
        if !committed {
            return self.unchanged(client, ending);
        }
        // After COMMIT: the catalog as everyone now sees it.
        let before = self.before.clone().unwrap_or_default();
        match baseline::measure_read_only(client) {
            Ok(after) => {
                // Roles were checked inside the transaction; here others'
                // role changes since the preflight would only be noise.
                let (before, after) = (before.database_only(), after.database_only());
                let delta = before.delta(&after);
                let mismatches =
                    delta.mismatches(&expected(package).database_only(), &after, &before);
                self.check(
                    "verified-after-commit",
                    mismatches.is_empty(),
                    if mismatches.is_empty() {
                        format!(
                            "{} created, {} dropped, {} altered: exactly the declared delta",
                            delta.created.len(),
                            delta.dropped.len(),
                            delta.altered.len()
                        )
                    } else {
                        mismatches.join("; ")
                    },
                );
                self.report.production_changed = true;
                self.report.production_evidence = format!(
                    "committed; the catalog went from digest {} to {}",
                    self.report
                        .baseline_before
                        .as_ref()
                        .map(|b| b.digest.as_str())
                        .unwrap_or("?"),
                    after.summary().digest
                );
                self.report.baseline_after = Some(after.summary());
                if !mismatches.is_empty() {
                    return Ending {
                        status: Status::Applied,
                        cause: Some(format!(
                            "committed, but the catalog after COMMIT differs from the declared delta (another session changed it too?): {}",
                            mismatches.join("; ")
                        )),
                        remediation: Vec::new(),
                    };
                }
            }
            Err(error) => {
                self.check("verified-after-commit", false, error.message());
                self.report.production_changed = true;
                self.report.production_evidence =
                    "committed; the catalog could not be re-read".into();
            }
        }
        ending
    }

    /// Runs the statements in a transaction, measures the delta inside
    /// it, and commits only when `commit` and everything matched. For the
    /// apply, `preflight` is the baseline the change was checked against:
    /// the catalog must still be that one when the transaction starts.
    #[allow(clippy::too_many_arguments)]
    fn transaction(
        &mut self,
        client: &mut postgres::Client,
        target: &ConnectionTarget,
        package: &Package,
        statements: &[Statement],
        lock_ms: u64,
        statement_ms: u64,
        commit: bool,
    ) -> Phase {
        let started = Instant::now();
        let mut phase = Phase {
            duration_ms: 0,
            statements_run: 0,
            failure: None,
            delta: None,
            mismatches: Vec::new(),
            ended_with: "ROLLBACK",
            interrupted_by: None,
            ran_in: "production".into(),
        };
        let preflight = if commit { self.before.clone() } else { None };
        let mut transaction_id: Option<i64> = None;
        let outcome = (|| -> std::result::Result<(), String> {
            // One snapshot for the whole transaction: the delta measured
            // inside it is this change's alone, whatever others commit
            // meanwhile (their DDL still waits for or blocks ours by locks).
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                .map_err(|e| e.to_string())?;
            // Its id proves, before it ends, that it is still this
            // transaction: nothing in the artifact ended it and went on
            // outside it.
            let id: i64 = client
                .query_one("SELECT pg_catalog.txid_current()", &[])
                .map_err(|e| e.to_string())?
                .get(0);
            transaction_id = Some(id);
            let before = baseline::measure(client).map_err(|e| e.message().to_string())?;
            if let Some(preflight) = &preflight {
                if preflight.database_only() != before.database_only() {
                    let drift = preflight.database_only().delta(&before.database_only());
                    let names: Vec<String> = drift
                        .created
                        .iter()
                        .chain(&drift.dropped)
                        .chain(&drift.altered)
                        .map(|n| n.to_string())
                        .take(10)
                        .collect();
                    phase.mismatches.push(format!(
                        "the catalog changed since the preflight ({}): the change was checked against another catalog",
                        names.join(", ")
                    ));
                    return Ok(());
                }
                let unmet = object_conditions(&package.preconditions, &before);
                let unmet_sql = sql_checks(client, &package.preconditions.checks, false)
                    .map_err(|e| e.message().to_string())?;
                if !unmet.is_empty() || !unmet_sql.is_empty() {
                    phase.mismatches.push(format!(
                        "preconditions no longer hold: {}",
                        unmet
                            .into_iter()
                            .chain(unmet_sql)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                    return Ok(());
                }
            }
            if let Err(failure) =
                session::run_statements(client, target, statements, lock_ms, statement_ms)
            {
                phase.statements_run = failure.number - 1;
                phase.failure = Some(*failure);
                return Ok(());
            }
            phase.statements_run = statements.len();
            let still: (i64, String) = client
                .query_one("SELECT pg_catalog.txid_current(), current_user::text", &[])
                .map(|row| (row.get(0), row.get(1)))
                .map_err(|e| e.to_string())?;
            if still.0 != id {
                phase.mismatches.push(format!(
                    "the artifact ended pgward's transaction {id} (now {}): statements after that ran outside it",
                    still.0
                ));
                self.escaped = true;
                return Ok(());
            }
            if still.1 != package.role {
                phase.mismatches.push(format!(
                    "the statements switched the role to {}; the change must run as {}",
                    still.1, package.role
                ));
            }
            let after = baseline::measure(client).map_err(|e| e.message().to_string())?;
            let delta = before.delta(&after);
            phase
                .mismatches
                .extend(delta.mismatches(&expected(package), &after, &before));
            phase
                .mismatches
                .extend(object_conditions(&package.postconditions, &after));
            phase.mismatches.extend(
                sql_checks(client, &package.postconditions.checks, false)
                    .map_err(|e| e.message().to_string())?,
            );
            phase.delta = Some(delta);
            Ok(())
        })();
        if let Err(message) = outcome {
            phase
                .mismatches
                .push(format!("the transaction failed: {message}"));
        }
        phase.interrupted_by = crate::interrupt::pending();
        let clean = phase.failure.is_none()
            && phase.mismatches.is_empty()
            && phase.interrupted_by.is_none();
        if commit && clean {
            match client.batch_execute("COMMIT") {
                Ok(()) => phase.ended_with = "COMMIT",
                // A deferred constraint fails at COMMIT: the server has
                // rolled the transaction back and said so.
                Err(error) if error.as_db_error().is_some() => phase.mismatches.push(format!(
                    "COMMIT failed: {}",
                    error
                        .as_db_error()
                        .map(|db| db.message())
                        .unwrap_or_default()
                )),
                // The session broke: did the server commit? Ask it.
                Err(error) => {
                    phase.ended_with = match transaction_id.map(|id| self.commit_status(target, id))
                    {
                        Some(Some(status)) if status == "committed" => "COMMIT",
                        Some(Some(status)) if status == "aborted" => "ROLLBACK",
                        _ => "UNKNOWN",
                    };
                    if phase.ended_with != "COMMIT" {
                        phase.mismatches.push(format!("COMMIT failed: {error}"));
                    }
                }
            }
        } else {
            // A session that broke rolls back on the server.
            let _ = client.batch_execute("ROLLBACK");
        }
        self.report.interrupted_by = self.report.interrupted_by.or(phase.interrupted_by);
        phase.duration_ms = started.elapsed().as_millis() as u64;
        phase
    }

    /// `txid_status` of the change's transaction, from a new session.
    fn commit_status(&self, target: &ConnectionTarget, id: i64) -> Option<String> {
        let mut client = target.connect().ok()?;
        client
            .query_one("SELECT pg_catalog.txid_status($1)", &[&id])
            .ok()?
            .get::<_, Option<String>>(0)
    }

    /// After a rehearsal that passed on production: the catalog must be
    /// exactly as before it.
    fn left_no_trace(&mut self, client: &mut postgres::Client) -> std::result::Result<(), Ending> {
        let Some(before) = self.before.clone() else {
            return Ok(());
        };
        let after = baseline::measure_read_only(client)
            .map_err(|e| Ending::blocked(e.message().to_string()))?;
        let summary = after.summary();
        if after.database_only() == before.database_only() {
            self.check(
                "rehearsal-left-no-trace",
                true,
                format!(
                    "after the rollback: {} objects, digest {} (as before)",
                    summary.objects, summary.digest
                ),
            );
            self.report.production_evidence = format!(
                "the rehearsal ran on production and was rolled back; the catalog baseline after it equals the one before: {} objects, digest {}",
                summary.objects, summary.digest
            );
            return Ok(());
        }
        let drift = before.database_only().delta(&after.database_only());
        let evidence = format!(
            "{} created, {} dropped, {} altered since the preflight",
            drift.created.len(),
            drift.dropped.len(),
            drift.altered.len()
        );
        self.check("rehearsal-left-no-trace", false, evidence.clone());
        Err(Ending::blocked(format!(
            "the catalog is not as it was before the rehearsal ({evidence}): another session changed it, or the artifact did something a rollback does not undo"
        )))
    }

    /// Re-reads the baseline after a step that did not change anything
    /// on purpose, and says in the report whether the catalog is as before.
    fn unchanged(&mut self, client: &mut postgres::Client, ending: Ending) -> Ending {
        let Some(before) = self.before.clone() else {
            return ending;
        };
        match baseline::measure_read_only(client) {
            Ok(after) => {
                let summary = after.summary();
                if after.database_only() == before.database_only() {
                    self.report.production_changed = false;
                    self.report.production_evidence = format!(
                        "the catalog baseline after the rollback equals the one before: {} objects, digest {}",
                        summary.objects, summary.digest
                    );
                } else {
                    let delta = before.database_only().delta(&after.database_only());
                    self.report.production_changed = true;
                    self.report.production_evidence = format!(
                        "the catalog changed during the run, although this change was rolled back (another session?): {} created, {} dropped, {} altered",
                        delta.created.len(),
                        delta.dropped.len(),
                        delta.altered.len()
                    );
                }
                self.report.baseline_after = Some(summary);
            }
            Err(error) => {
                self.report.production_evidence = format!(
                    "rolled back; the catalog could not be re-read to prove it: {}",
                    error.message()
                );
            }
        }
        ending
    }

    fn finish(mut self, ending: Ending, repo: &Repository) -> Result<ApplyReport> {
        if let Some(mut watch) = self.watch.take() {
            if let Some(signal) = watch.received()
                && self.report.interrupted_by.is_none()
            {
                self.report.warnings.push(format!(
                    "signal {signal} arrived after the outcome was final; it changed nothing"
                ));
            }
            // Turned into this report and its exit code: not raised again.
            watch.acknowledge();
        }
        if self.escaped {
            self.report.production_changed = true;
            self.report.production_evidence = "the artifact ended pgward's transaction: statements after that point may have changed production; inspect it".into();
        }
        let report = &mut self.report;
        report.status = ending.status;
        report.cause = ending.cause;
        report.remediation = ending.remediation;
        report.finished_at = timestamp(jiff::Timestamp::now());
        report.duration_ms = self.started.elapsed().as_millis() as u64;
        match repo.save_apply_report(&report.id, report, &markdown) {
            Ok(paths) => report.report_files = paths,
            Err(error) => report
                .warnings
                .push(format!("the report could not be saved: {error}")),
        }
        Ok(self.report)
    }
}

fn expected(package: &Package) -> Expected {
    Expected {
        counts: package.expected_delta.clone(),
        altered: package
            .expected_altered
            .iter()
            .map(|name| ObjectName::parse(name).expect("validated when loaded"))
            .collect(),
        dropped: package
            .expected_dropped
            .iter()
            .map(|name| ObjectName::parse(name).expect("validated when loaded"))
            .collect(),
    }
}

/// The object conditions that do not hold on `baseline`.
fn object_conditions(conditions: &package::Conditions, baseline: &Baseline) -> Vec<String> {
    let mut unmet = Vec::new();
    for name in &conditions.absent {
        let object = ObjectName::parse(name).expect("validated when loaded");
        if baseline.contains(&object) {
            unmet.push(format!("{object} exists (expected absent)"));
        }
    }
    for name in &conditions.present {
        let object = ObjectName::parse(name).expect("validated when loaded");
        if !baseline.contains(&object) {
            unmet.push(format!("{object} does not exist (expected present)"));
        }
    }
    unmet
}

/// Runs each boolean check; returns the ones that are not true. In
/// preflight they run read-only.
fn sql_checks(
    client: &mut postgres::Client,
    checks: &[String],
    read_only: bool,
) -> Result<Vec<String>> {
    let mut unmet = Vec::new();
    if checks.is_empty() {
        return Ok(unmet);
    }
    if read_only {
        client
            .batch_execute("BEGIN READ ONLY")
            .map_err(|e| crate::catalog::query_error("starting a read-only transaction", e))?;
    }
    for check in checks {
        match client.query(check.as_str(), &[]) {
            Ok(rows) => {
                let value = rows
                    .first()
                    .filter(|_| rows.len() == 1)
                    .and_then(|row| row.try_get::<_, Option<bool>>(0).ok())
                    .flatten();
                if value != Some(true) {
                    unmet.push(format!("check {check:?} is not true"));
                }
            }
            Err(error) => {
                unmet.push(format!(
                    "check {check:?} failed: {}",
                    error
                        .as_db_error()
                        .map(|db| db.message().to_string())
                        .unwrap_or_else(|| error.to_string())
                ));
                if !read_only {
                    // The transaction is aborted: nothing else can be checked.
                    break;
                }
                let _ = client.batch_execute("ROLLBACK; BEGIN READ ONLY");
            }
        }
    }
    if read_only {
        let _ = client.batch_execute("ROLLBACK");
    }
    Ok(unmet)
}

/// A failed statement as a one-line cause, and what an operator could do
/// (printed, never executed). The transaction is over when this runs.
fn explain(
    client: &mut postgres::Client,
    failure: &StatementFailure,
    package: &Package,
) -> (String, Vec<String>) {
    let mut cause = failure.describe();
    let mut remediation = Vec::new();
    if failure.is_permission_denied()
        && let Some(schema) = failure
            .message
            .strip_prefix("permission denied for schema ")
    {
        let facts = client.query_opt(
            "SELECT pg_catalog.pg_get_userbyid(n.nspowner)::text, \
                    pg_catalog.has_schema_privilege(n.oid, 'USAGE'), \
                    pg_catalog.has_schema_privilege(n.oid, 'CREATE'), \
                    pg_catalog.quote_ident(n.nspname), pg_catalog.quote_ident($2) \
               FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
            &[&schema, &package.role],
        );
        if let Ok(Some(row)) = facts {
            let (owner, usage, create): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
            // Quoted by the server, whose keywords these are.
            let (quoted_schema, quoted_role): (String, String) = (row.get(3), row.get(4));
            let privileges = match (usage, create) {
                (true, false) => "has USAGE but not CREATE",
                (false, true) => "has CREATE but not USAGE",
                (false, false) => "has neither USAGE nor CREATE",
                (true, true) => "has USAGE and CREATE now",
            };
            cause = format!(
                "statement {} ({}): {}; role {} {privileges}; schema owner {owner}",
                failure.number, failure.summary, failure.message, package.role,
            );
            let privilege = if !usage { "USAGE, CREATE" } else { "CREATE" };
            let (schema, role) = (quoted_schema, quoted_role);
            remediation.push(format!(
                "run the change as the schema's owner: set [apply-connection] user = {owner:?} and role = {owner:?} in the package, and have that re-approved"
            ));
            remediation.push(format!(
                "or have an administrator grant the apply role what it lacks for the change: GRANT {privilege} ON SCHEMA {schema} TO {role}; and take it back afterwards: REVOKE {privilege} ON SCHEMA {schema} FROM {role};"
            ));
        }
    }
    if failure.is_lock_timeout() {
        remediation.push(
            "run the change when the blocking session has finished (or have it ended), or raise lock-timeout in the package".into(),
        );
    }
    (cause, remediation)
}

fn timestamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl From<&ApplyReport> for Error {
    /// The report's failure as an error, for callers that branch on kinds.
    fn from(report: &ApplyReport) -> Error {
        let kind = match report.status {
            _ if report.interrupted_by.is_some() => crate::error::ErrorKind::Interrupted {
                signal: report.interrupted_by.unwrap_or_default(),
            },
            Status::Refused => crate::error::ErrorKind::Config,
            Status::BlockedPreflight => crate::error::ErrorKind::Blocked,
            _ => crate::error::ErrorKind::Apply,
        };
        Error::new(
            kind,
            format!(
                "{}: {}",
                report.status.name(),
                report.cause.as_deref().unwrap_or("a check failed")
            ),
        )
    }
}
