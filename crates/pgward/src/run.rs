//! `pgward run`: the configured policy as one command, for cron or a
//! systemd timer: backup, verify of what was just written, a drill when
//! one is due, a copy to each `[[mirror]]`, prune. Each step's outcome is
//! reported; a failed backup
//! skips everything after it; the run's exit code is its worst step's.
//! Notifying is the caller's last step (it needs the run's document).

use crate::backup::{self, BackupOptions};
use crate::clock;
use crate::config::{Config, parse_duration};
use crate::connection::Env;
use crate::drill::{self, DrillOptions};
use crate::encryption::secret::Decryptor;
use crate::error::{Error, ErrorKind, Result};
use crate::prune::{self, PruneOptions, PruneReport};
use crate::repository::Repository;
use crate::repository::manifest::Manifest;
use crate::repository::select::Selector;
use crate::verify;
use serde::Serialize;
use std::time::Instant;

/// One step of a run and how it went.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Step {
    /// `backup`, `verify`, `drill`, `prune`.
    pub name: &'static str,
    /// `ok`, `failed` or `skipped`.
    pub status: &'static str,
    /// What it did, why it failed (one line), or why it was skipped.
    pub detail: String,
    pub duration_ms: u64,
    /// The step's own exit code (0 unless failed).
    pub exit_code: i32,
    #[serde(skip)]
    pub error: Option<Error>,
}

impl Step {
    fn ok(name: &'static str, started: Instant, detail: String) -> Step {
        Step {
            name,
            status: "ok",
            detail,
            duration_ms: started.elapsed().as_millis() as u64,
            exit_code: 0,
            error: None,
        }
    }

    fn failed(name: &'static str, started: Instant, error: Error) -> Step {
        Step {
            name,
            status: "failed",
            detail: error.to_string(),
            duration_ms: started.elapsed().as_millis() as u64,
            exit_code: error.kind().exit_code(),
            error: Some(error),
        }
    }

    fn skipped(name: &'static str, why: impl Into<String>) -> Step {
        Step {
            name,
            status: "skipped",
            detail: why.into(),
            duration_ms: 0,
            exit_code: 0,
            error: None,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunReport {
    pub ok: bool,
    /// The backup this run wrote, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    pub database: Option<String>,
    pub steps: Vec<Step>,
    pub duration_ms: u64,
    /// The prune step's full report, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneReport>,
    /// The backup's manifest, when one was written.
    #[serde(skip)]
    pub manifest: Option<Manifest>,
    /// The backups the mirror steps copied (or found there): id and
    /// destination.
    #[serde(skip)]
    pub copies: Vec<(String, String)>,
}

impl RunReport {
    /// The worst step's exit code (0 when every step is ok or skipped).
    pub fn exit_code(&self) -> i32 {
        self.steps.iter().map(|s| s.exit_code).max().unwrap_or(0)
    }

    /// The run's failure, as the worst step's error; `None` when it
    /// succeeded.
    pub fn failure(&self) -> Option<&Error> {
        self.steps
            .iter()
            .filter(|s| s.error.is_some())
            .max_by_key(|s| s.exit_code)
            .and_then(|s| s.error.as_ref())
    }

    /// One line: what the run did, or its first failure.
    pub fn summary(&self) -> String {
        match self.steps.iter().find(|s| s.status == "failed") {
            Some(step) => format!("{} failed: {}", step.name, step.detail),
            None => self
                .steps
                .iter()
                .map(|s| format!("{} {}", s.name, s.status))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Whether a drill is due for the backups of `manifest`'s database and
/// scope: `drill-every = "always"`, or its newest passed drill is older
/// than the interval (or there is none). Unset: never.
fn drill_due(repo: &Repository, config: &Config, manifest: &Manifest) -> Result<Option<String>> {
    let Some(every) = config.policy.drill_every.as_deref() else {
        return Ok(None);
    };
    if every == "always" {
        return Ok(Some("drill-every = \"always\"".to_string()));
    }
    let interval =
        parse_duration(every).map_err(|e| Error::config(format!("policy.drill-every: {e}")))?;
    let now = clock::now();
    let newest_pass = repo
        .backups()?
        .iter()
        .filter(|m| m.database == manifest.database && m.scope == manifest.scope)
        .filter_map(|m| repo.drill_record(&m.id).ok().flatten())
        .filter(|r| r.verdict == "pass")
        .filter_map(|r| r.finished_at.parse::<jiff::Timestamp>().ok())
        .max();
    Ok(match newest_pass {
        None => Some("no passed drill of this database and scope yet".to_string()),
        Some(at) if now.duration_since(at) >= interval => Some(format!(
            "the newest passed drill is from {} (drill-every = {every:?})",
            clock::rfc3339(at)
        )),
        Some(_) => None,
    })
}

pub fn run(
    config: &Config,
    env: Env,
    decryptor: &mut dyn FnMut() -> Result<Option<Decryptor>>,
    drill_options: &DrillOptions,
) -> Result<RunReport> {
    let run_started = Instant::now();
    let mut steps = Vec::new();
    let mut report = RunReport {
        ok: false,
        backup_id: None,
        database: None,
        steps: Vec::new(),
        duration_ms: 0,
        prune: None,
        manifest: None,
        copies: Vec::new(),
    };

    let started = Instant::now();
    let outcome = backup::run(config, &BackupOptions::default(), env, &mut |_| {});
    let manifest = match outcome {
        Ok(outcome) => {
            steps.push(Step::ok(
                "backup",
                started,
                format!(
                    "{} ({} tables, {} stored)",
                    outcome.manifest.id,
                    outcome.manifest.tables.len(),
                    crate::config::format_size(outcome.manifest.artifact.bytes)
                ),
            ));
            outcome.manifest
        }
        Err(error) => {
            steps.push(Step::failed("backup", started, error));
            for name in ["verify", "drill"] {
                steps.push(Step::skipped(name, "the backup failed"));
            }
            for _ in &config.mirrors {
                steps.push(Step::skipped("mirror", "the backup failed"));
            }
            steps.push(Step::skipped("prune", "the backup failed"));
            report.steps = steps;
            report.duration_ms = run_started.elapsed().as_millis() as u64;
            return Ok(report);
        }
    };
    report.backup_id = Some(manifest.id.clone());
    report.database = Some(manifest.database.clone());
    let repo = Repository::open_configured(config)?;

    let started = Instant::now();
    // An encrypted backup on a host without its key: the stored bytes are
    // proved, and the step says the content was not.
    let verified = verify::run_written(&repo, &Selector::any(&manifest.id), decryptor, &mut |_| {})
        .and_then(verify::VerifyReport::into_result);
    steps.push(match verified {
        Ok(report) => Step::ok(
            "verify",
            started,
            if report.content_checked {
                format!("{}: intact ({} checks)", manifest.id, report.checks.len())
            } else {
                format!(
                    "{}: stored bytes intact; content not checked (no decryption key here)",
                    manifest.id
                )
            },
        ),
        Err(error) => Step::failed("verify", started, error),
    });

    let started = Instant::now();
    match drill_due(&repo, config, &manifest) {
        _ if interrupted(&steps) => steps.push(Step::skipped("drill", "the run was interrupted")),
        Err(error) => steps.push(Step::failed("drill", started, error)),
        Ok(None) => steps.push(Step::skipped(
            "drill",
            match &config.policy.drill_every {
                None => "policy.drill-every is not set".to_string(),
                Some(every) => format!("not due (drill-every = {every:?})"),
            },
        )),
        Ok(Some(why)) => {
            let drilled = drill::run(
                config,
                env,
                &Selector::any(&manifest.id),
                drill_options,
                decryptor,
                &mut |_| {},
            )
            .and_then(drill::DrillReport::into_result);
            steps.push(match drilled {
                Ok(report) => Step::ok(
                    "drill",
                    started,
                    format!("{}: PASS ({why})", report.record.backup_id),
                ),
                Err(error) => Step::failed("drill", started, error),
            });
        }
    }

    // Tonight's backup goes off-site only once it proved itself; each
    // mirror is tried whatever another one did.
    let unproven = steps.iter().find(|s| s.status == "failed").map(|s| s.name);
    let mut missed_tonight = None;
    let mut reached = Vec::new();
    for mirror in &config.mirrors {
        let started = Instant::now();
        if interrupted(&steps) {
            steps.push(Step::skipped("mirror", "the run was interrupted"));
        } else if let Some(step) = unproven {
            steps.push(Step::skipped(
                "mirror",
                format!("the {step} of tonight's backup failed: an unproven backup is not copied off-site"),
            ));
        } else {
            let mirrored = copy_to_mirror(&repo, config, mirror, &manifest);
            report.copies.extend(mirrored.copies);
            if mirrored.tonight {
                reached.push(mirror.clone());
            } else {
                missed_tonight.get_or_insert(mirror.repository.clone());
            }
            steps.push(match mirrored.failure {
                None => Step::ok("mirror", started, mirrored.detail),
                Some(error) => {
                    let mut step = Step::failed("mirror", started, error);
                    if !mirrored.detail.is_empty() {
                        step.detail = format!("{}: {}", mirrored.detail, step.detail);
                    }
                    step
                }
            });
        }
    }

    let started = Instant::now();
    // Nothing is pruned on the strength of a backup that did not prove
    // itself tonight: the older ones may be all that is good.
    if interrupted(&steps) {
        steps.push(Step::skipped("prune", "the run was interrupted"));
    } else if let Some(mirror) = missed_tonight.filter(|_| unproven.is_none()) {
        steps.push(Step::skipped(
            "prune",
            format!("tonight's backup did not reach the mirror {mirror}: nothing is pruned while the local copies may be the only ones"),
        ));
    } else if let Some(step) = unproven {
        steps.push(Step::skipped(
            "prune",
            format!("the {step} of tonight's backup failed: nothing is pruned until a backup proves itself"),
        ));
    } else if crate::retention::RetentionPolicy::from_config(&config.policy)?.is_none() {
        steps.push(Step::skipped("prune", "no retention policy in [policy]"));
    } else {
        let pruned = prune::run(
            &repo,
            config,
            &PruneOptions {
                dry_run: false,
                database: Some(manifest.database.clone()),
            },
        );
        match pruned {
            Ok(pruned) => {
                steps.push(Step::ok(
                    "prune",
                    started,
                    format!(
                        "{} kept, {} deleted, {} quarantined run(s) removed",
                        pruned.kept,
                        pruned.deleted,
                        pruned.quarantine_removed.len()
                    ),
                ));
                report.prune = Some(pruned);
            }
            Err(error) => steps.push(Step::failed("prune", started, error)),
        }
    }

    // A mirror with `prune = true` follows the same policy, only after the
    // local prune ran (so every reason to keep everything applies to it
    // too) and once tonight's backup is there.
    let local_pruned = steps
        .last()
        .is_some_and(|s| s.name == "prune" && s.status == "ok");
    for mirror in config.mirrors.iter().filter(|m| m.prune) {
        let started = Instant::now();
        if !local_pruned {
            steps.push(Step::skipped(
                "mirror-prune",
                format!("{}: the local prune did not run", mirror.repository),
            ));
            continue;
        }
        if !reached.contains(mirror) {
            steps.push(Step::skipped(
                "mirror-prune",
                format!("{}: tonight's backup is not there", mirror.repository),
            ));
            continue;
        }
        let pruned = crate::config::Location::parse(std::path::Path::new(&mirror.repository))
            .and_then(|location| {
                // The same trust as `prune --repo`: forged manifests must
                // not count toward what the policy keeps.
                let pin = crate::signing::pin(&config.signing)?;
                Ok(Repository::open_at(&location, config)?.trusting(pin))
            })
            .and_then(|target| {
                prune::run(
                    &target,
                    config,
                    &PruneOptions {
                        dry_run: false,
                        database: Some(manifest.database.clone()),
                    },
                )
            });
        steps.push(match pruned {
            Ok(pruned) => Step::ok(
                "mirror-prune",
                started,
                format!(
                    "{}: {} kept, {} deleted",
                    mirror.repository, pruned.kept, pruned.deleted
                ),
            ),
            Err(error) => Step::failed(
                "mirror-prune",
                started,
                error.context(format!("mirror {}", mirror.repository)),
            ),
        });
    }

    report.ok = steps.iter().all(|s| s.status != "failed");
    report.steps = steps;
    report.manifest = Some(manifest);
    report.duration_ms = run_started.elapsed().as_millis() as u64;
    Ok(report)
}

/// What a mirror step did.
struct Mirrored {
    detail: String,
    /// (id, destination) of every backup the mirror now holds for sure.
    copies: Vec<(String, String)>,
    /// Tonight's backup is at the mirror, verified.
    tonight: bool,
    /// The first failure, when a copy failed.
    failure: Option<Error>,
}

/// Copies tonight's backup to `mirror` first, then every other backup of
/// its database that the mirror lacks, oldest first (a night the mirror
/// was unreachable is caught up on the next). One backup that cannot be
/// copied does not keep the others from theirs.
fn copy_to_mirror(
    repo: &Repository,
    config: &Config,
    mirror: &crate::config::MirrorConfig,
    manifest: &Manifest,
) -> Mirrored {
    let failed = |error: Error| Mirrored {
        detail: String::new(),
        copies: Vec::new(),
        tonight: false,
        failure: Some(error),
    };
    let location = match crate::config::Location::parse(std::path::Path::new(&mirror.repository)) {
        Ok(location) => location,
        Err(error) => return failed(error),
    };
    // A local mirror must exist already (`pgward copy --to DIR` creates
    // it): a mount that is missing must not turn into a directory on the
    // local disk that passes for off-site.
    let opened = match &location {
        crate::config::Location::Local(_) => Repository::open_at(&location, config).map_err(|e| {
            // The mirror is unavailable tonight: a failed step (exit 1),
            // not a usage error.
            Error::new(ErrorKind::Repository, e.message()).with_hint(format!(
                "create the mirror with `pgward copy latest --to {}` once it is mounted",
                location.describe()
            ))
        }),
        crate::config::Location::S3(_) => Repository::init_at(&location, config),
    };
    let target = match opened {
        Ok(target) => target,
        Err(error) => return failed(error.context(format!("mirror {}", location.describe()))),
    };
    let others = match repo.backups() {
        Ok(backups) => backups
            .into_iter()
            .filter(|m| m.database == manifest.database && m.id != manifest.id)
            .collect(),
        Err(error) => return failed(error),
    };
    let order: Vec<Manifest> = std::iter::once(manifest.clone())
        .chain(crate::copy::oldest_first(others))
        .collect();
    let (report, failures) = match crate::copy::each(repo, &target, &order, false, &mut |_| {}) {
        Ok(done) => done,
        Err(error) => return failed(error),
    };
    let tonight = report.backups.iter().any(|b| b.id == manifest.id);
    let sent: u64 = report.backups.iter().map(|b| b.bytes_sent).sum();
    let caught_up = report
        .backups
        .iter()
        .filter(|b| b.id != manifest.id && b.outcome == crate::copy::CopyOutcome::Copied)
        .count();
    let mut detail = format!(
        "{}: {} {} ({} sent{})",
        location.describe(),
        manifest.id,
        if tonight {
            "copied and verified"
        } else {
            "NOT copied"
        },
        crate::config::format_size(sent),
        match caught_up {
            0 => String::new(),
            n => format!("; {n} earlier backup(s) caught up"),
        }
    );
    if !failures.is_empty() {
        detail.push_str(&format!("; {} backup(s) failed", failures.len()));
    }
    let copies = report
        .backups
        .iter()
        .map(|b| (b.id.clone(), report.to.clone()))
        .collect();
    // A signal is the failure that counts (the run stops on it); else the
    // first.
    let signalled = failures
        .iter()
        .position(|(_, e)| matches!(e.kind(), ErrorKind::Interrupted { .. }))
        .unwrap_or(0);
    let failure = failures
        .into_iter()
        .nth(signalled)
        .map(|(id, error)| error.context(format!("mirror {}: backup {id}", location.describe())));
    Mirrored {
        detail,
        copies,
        tonight,
        failure,
    }
}

/// Whether a signal stopped one of the steps: the run goes no further.
fn interrupted(steps: &[Step]) -> bool {
    steps.iter().any(|s| {
        s.error
            .as_ref()
            .is_some_and(|e| matches!(e.kind(), ErrorKind::Interrupted { .. }))
    })
}

/// An error for a run that failed, for callers that need one.
pub fn failure_error(report: &RunReport) -> Error {
    report
        .failure()
        .map(|e| Error::new(e.kind(), format!("run failed: {}", report.summary())))
        .unwrap_or_else(|| Error::new(ErrorKind::Validation, "run failed"))
}
