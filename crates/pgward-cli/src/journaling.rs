//! The journal as an observer of a finished run: a command that writes,
//! proves or changes something says at its start what it is about
//! ([`begin`]) and, as it learns them, its run id and the files it touched;
//! `main` appends the record with the outcome and exit code when the
//! command is over, whatever way it ended, and then rewrites the metrics
//! textfile. The commands' own code never waits on either.

use pgward::journal::Entry;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

struct Pending {
    /// The repository's directory or bucket.
    location: pgward::config::Location,
    /// Opened when first needed: the repository may not exist before the
    /// run has written into it.
    repo: Option<pgward::Repository>,
    /// A bucket is asked once: a run that failed because the service is
    /// unreachable must not wait on it again for every file it names.
    asked_bucket: bool,
    entry: Entry,
    started: Instant,
    /// For the metrics textfile, written from the repository as this
    /// configuration opens it (signature pin included).
    config: pgward::Config,
}

static CURRENT: Mutex<Option<Pending>> = Mutex::new(None);

/// Starts the record of `command`; nothing is journaled when no
/// repository is configured (there is nowhere to write).
pub fn begin(config: &pgward::Config, command: &str, database: Option<String>) {
    let Ok(location) = config.repository_location() else {
        return;
    };
    let pending = Pending {
        location,
        repo: None,
        asked_bucket: false,
        entry: Entry {
            command: command.to_string(),
            database,
            started_at: pgward::clock::now_rfc3339(),
            ..Entry::default()
        },
        started: Instant::now(),
        config: config.clone(),
    };
    *CURRENT.lock().expect("not poisoned") = Some(pending);
}

fn with(f: impl FnOnce(&mut Pending)) {
    if let Some(pending) = CURRENT.lock().expect("not poisoned").as_mut() {
        f(pending);
    }
}

/// The run's id (a backup's id, an apply's report id).
pub fn run_id(id: &str) {
    with(|p| p.entry.run_id = id.to_string());
}

pub fn database(name: &str) {
    with(|p| p.entry.database = Some(name.to_string()));
}

/// An option worth keeping with the record (never a secret).
pub fn option(text: String) {
    with(|p| p.entry.options.push(text));
}

/// The pending run's repository, opened on first use.
fn repository(p: &mut Pending) -> Option<&pgward::Repository> {
    let bucket = matches!(p.location, pgward::config::Location::S3(_));
    if p.repo.is_none() && !(bucket && p.asked_bucket) {
        p.asked_bucket = bucket;
        p.repo = pgward::Repository::open_at(&p.location, &p.config).ok();
    }
    p.repo.as_ref()
}

/// A file the run wrote or proved; hashed now.
pub fn touched(path: &Path) {
    with(|p| {
        let touched = repository(p).and_then(|repo| pgward::journal::touched(repo, path));
        if let Some(touched) = touched {
            p.entry.artifacts.push(touched);
        }
    });
}

/// A large file whose size and sha256 the run already knows.
pub fn touched_known(path: &Path, bytes: u64, sha256: &str) {
    with(|p| {
        let touched =
            repository(p).map(|repo| pgward::journal::touched_known(repo, path, bytes, sha256));
        if let Some(touched) = touched {
            p.entry.artifacts.push(touched);
        }
    });
}

/// Appends the record now, before notifications go out: a run killed
/// while it waits on a slow endpoint still leaves its backup vouched for.
/// Prints what could not be written. `main`'s [`finish`] is then a no-op.
pub fn settle(exit_code: i32, cause: Option<String>) {
    for warning in finish(exit_code, cause) {
        eprintln!("pgward: warning: {warning}");
    }
}

/// Appends the record of the command that began, if one did; returns a
/// warning to print when the journal or the metrics could not be written.
pub fn finish(exit_code: i32, cause: Option<String>) -> Vec<String> {
    let Some(mut pending) = CURRENT.lock().expect("not poisoned").take() else {
        return Vec::new();
    };
    let cause = cause.map(|c| scrub(&c, &pending.config));
    let mut warnings = Vec::new();
    let Some(repo) = repository(&mut pending).cloned() else {
        // A run refused before there was a repository (or in a directory
        // pgward refuses as one): nowhere to write, and nothing to add.
        return warnings;
    };
    let entry = &mut pending.entry;
    if entry.run_id.is_empty() {
        entry.run_id = pgward::repository::new_backup_id(
            entry.database.as_deref().unwrap_or(&entry.command),
            pgward::clock::now(),
        );
    }
    entry.duration_ms = pending.started.elapsed().as_millis() as u64;
    entry.ok = exit_code == 0;
    entry.exit_code = exit_code;
    entry.cause = cause;
    if let Err(error) = pgward::journal::append(&repo, entry) {
        warnings.push(format!("the run could not be journaled: {error}"));
    }
    if let Some(path) = &pending.config.metrics.textfile
        && let Err(error) = write_metrics(&pending.config, path)
    {
        warnings.push(format!("metrics not written: {error}"));
    }
    warnings
}

/// A cause as the journal keeps it: one line, without the password the
/// configuration holds, and without the quoted values of a conninfo that
/// did not parse (an unquoted password with a space in it splits into
/// "parameters" that messages quote).
fn scrub(cause: &str, config: &pgward::Config) -> String {
    let mut cause = cause.replace(['\n', '\r'], " ");
    if let Ok(target) =
        pgward::connection::ConnectionTarget::resolve(&config.connection, &pgward::process_env)
        && let Some(password) = target.password()
        && !password.expose().is_empty()
    {
        cause = cause.replace(password.expose(), "***");
    }
    if cause.contains("connection parameter") || cause.contains("conninfo") {
        let mut masked = String::new();
        let mut quoted = false;
        for c in cause.chars() {
            if c == '"' {
                quoted = !quoted;
                masked.push_str(if quoted { "\"…" } else { "\"" });
            } else if !quoted {
                masked.push(c);
            }
        }
        cause = masked;
    }
    cause
}

/// The status of the repository as metrics, into the textfile.
pub fn write_metrics(config: &pgward::Config, path: &Path) -> Result<(), pgward::Error> {
    let repo = pgward::Repository::open_configured(config)?;
    let objectives = pgward::status::Objectives::from_config(config)?;
    let facts = pgward::status::facts(&repo)?;
    let report = pgward::status::evaluate(&facts, &objectives, pgward::clock::now());
    pgward::status::write_textfile(path, &pgward::status::prometheus(&report))
}
