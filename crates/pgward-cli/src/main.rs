//! The `pgward` binary: parses arguments, calls the library, renders the
//! result for people or as JSON, and maps errors to the documented exit
//! codes in one place. All behaviour lives in the `pgward` library crate.

mod journaling;
mod render;
mod tty;

use clap::{Args, CommandFactory, Parser, Subcommand};
use pgward::config::NotifyEvent;
use pgward::encryption::{certificate::Certificate, keygen, secret};
use pgward::{Config, Error, ErrorKind, backup, check, grants, list, verify};
use std::path::PathBuf;
use std::time::Instant;

/// Governed PostgreSQL backups that cannot fail silently.
#[derive(Parser, Debug)]
#[command(
    name = "pgward",
    version,
    about,
    max_term_width = 100,
    disable_help_flag = true
)]
struct Cli {
    /// Print help (-h is the host, as in pg_dump and psql).
    #[arg(long, global = true, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Print nothing on success (for cron: mail only failures); errors and failed notifications still print.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "PGWARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Backup repository: a directory or s3://bucket/prefix (overrides `repository` in the config).
    #[arg(long, global = true, env = "PGWARD_REPO", value_name = "DIR|URL")]
    repo: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Back up one database into the repository.
    Backup(BackupArgs),
    /// The readiness matrix: tools, connection, scope, privileges, repository. Never writes.
    Check(TargetArgs),
    /// The narrowest GRANTs that close the backup role's privilege gaps, and their rollback.
    Grants(GrantsArgs),
    /// List the repository's backups (newest first) and its quarantine.
    List(ListArgs),
    /// Prove a backup's artifact intact against its manifest, offline.
    Verify(VerifyArgs),
    /// Restore a backup into a new database, then prove every table came back.
    Restore(RestoreArgs),
    /// Restore a backup into a scratch database, prove it, drop it, record the verdict.
    Drill(DrillArgs),
    /// Copy complete backups to another repository (a directory or s3://bucket/prefix), verified there.
    Copy(CopyArgs),
    /// OpenPGP keys for encrypted backups.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The nightly job: backup, verify it, drill when due, prune, notify.
    Run(RunArgs),
    /// Apply the retention policy: remove the backups it does not keep, and old quarantined runs.
    Prune(PruneArgs),
    /// Apply a reviewed SQL change under an apply package: pin, preflight, rehearsal, backup, one transaction, report.
    Apply(ApplyArgs),
    /// The repository's journal of runs: list it, verify its hash chain, print its head.
    Log(LogArgs),
    /// Per database: the newest backup and drill against the objectives (OK / LATE / FAILED); exit 0 only when all hold.
    Status(StatusArgs),
    /// One journaled run as a report for a reviewer (Markdown, or JSON with --json).
    Report(ReportArgs),
    /// Shell completions for bash, zsh, fish, elvish or powershell, on stdout.
    Completions {
        /// The shell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// The manual page (roff), on stdout: `pgward man > pgward.1`.
    Man,
}

#[derive(Args, Debug)]
struct CopyArgs {
    /// A backup id, or `latest` (of the database given or configured).
    #[arg(
        value_name = "ID|latest",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    backup: Option<String>,
    /// Every backup (of --database, when given) the destination lacks.
    #[arg(long)]
    all: bool,
    /// The destination repository: a directory or s3://bucket/prefix (created if needed).
    #[arg(long, value_name = "DIR|URL")]
    to: PathBuf,
    #[command(flatten)]
    of: DatabaseArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    how: RestoreHowArgs,
    #[command(flatten)]
    decrypt: DecryptArgs,
}

#[derive(Args, Debug)]
struct ApplyArgs {
    /// The apply package (TOML): the artifact's pin, target, role, conditions, expected delta.
    #[arg(value_name = "PACKAGE")]
    package: PathBuf,
    /// Stop after the preflight and the rolled-back rehearsal: no change (no backup either, unless the rehearsal needs one).
    #[arg(long)]
    preflight_only: bool,
    /// Where the rolled-back rehearsal runs: in production, or in a scratch restore of the fresh backup.
    #[arg(long, value_enum, default_value = "production", value_name = "WHERE")]
    rehearse: Rehearse,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Rehearse {
    Production,
    Scratch,
}

#[derive(Args, Debug)]
struct LogArgs {
    /// Only runs about this database.
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
    /// Only runs of this command (backup, verify, drill, restore, grants, prune, run, apply).
    #[arg(long, value_name = "COMMAND")]
    command: Option<String>,
    /// Only runs with this outcome.
    #[arg(long, value_name = "OUTCOME", value_parser = ["ok", "failed"])]
    outcome: Option<String>,
    /// Only runs that started within this long (e.g. 7d) or since this time (RFC 3339).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Walk the hash chain and name the first record edited, deleted or reordered (exit 1 then).
    #[arg(long)]
    verify: bool,
    /// With --verify: the head printed earlier by --head (SEQUENCE:SHA256), which must still hold.
    #[arg(long, value_name = "SEQ:SHA256", requires = "verify")]
    anchor: Option<String>,
    /// Print the head of the chain (SEQUENCE:SHA256) to keep elsewhere.
    #[arg(long, conflicts_with = "verify")]
    head: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Text (default), json (as --json) or prometheus (text exposition format).
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json", "prometheus"], default_value = "text")]
    format: String,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The run id (as `pgward log` shows it), or `latest`.
    #[arg(value_name = "RUN_ID")]
    run: String,
}

#[derive(Args, Debug)]
struct PruneArgs {
    /// Show what would be kept and removed, and why; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only the backups (and quarantined runs) of this database.
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Only the backups of this database.
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
}

/// Which database's backups `latest` means (and an id must be of).
#[derive(Args, Debug)]
struct DatabaseArgs {
    /// The database whose backups are meant (default: the one the connection settings name; required for `latest` when the repository holds several databases' backups).
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
}

/// Where the database is, with pg_dump's and psql's short flags.
#[derive(Args, Debug)]
struct ConnectArgs {
    /// Database name, `key=value` conninfo or `postgresql://` URI (default: libpq environment).
    #[arg(short = 'd', long, value_name = "CONNINFO")]
    dbname: Option<String>,
    /// Server host name, IP address or socket directory (connection.host).
    #[arg(short = 'h', long, value_name = "HOST")]
    host: Option<String>,
    /// Server port (connection.port).
    #[arg(short = 'p', long, value_name = "PORT")]
    port: Option<u16>,
    /// Database user (connection.user).
    #[arg(short = 'U', long = "username", value_name = "USER")]
    user: Option<String>,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// A backup id, or `latest`.
    #[arg(value_name = "ID|latest")]
    backup: String,
    #[command(flatten)]
    of: DatabaseArgs,
    #[command(flatten)]
    decrypt: DecryptArgs,
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// A backup id, or `latest`.
    #[arg(value_name = "ID|latest")]
    backup: String,
    /// The database to restore into: created, or existing and empty.
    #[arg(long, value_name = "NEWDB")]
    to: String,
    /// Only this schema, with everything in it (repeatable).
    #[arg(long = "schema", value_name = "SCHEMA")]
    schemas: Vec<String>,
    /// Only this table, as schema.table, with its indexes, constraints and sequences (repeatable).
    #[arg(long = "table", value_name = "SCHEMA.TABLE")]
    tables: Vec<String>,
    /// DROP the existing target database, and everything in it, before restoring.
    #[arg(long)]
    drop_existing_database: bool,
    /// Allow restoring into postgres, template0, template1 or the restore connection's own database.
    #[arg(long)]
    allow_system_database: bool,
    #[command(flatten)]
    of: DatabaseArgs,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    how: RestoreHowArgs,
    #[command(flatten)]
    decrypt: DecryptArgs,
}

#[derive(Args, Debug)]
struct DrillArgs {
    /// A backup id, or `latest`.
    #[arg(value_name = "ID|latest")]
    backup: String,
    /// Keep the scratch database afterwards (it is dropped by default).
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    of: DatabaseArgs,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    how: RestoreHowArgs,
    #[command(flatten)]
    decrypt: DecryptArgs,
}

/// How and where a restore runs (shared by restore and drill).
#[derive(Args, Debug)]
struct RestoreHowArgs {
    /// pg_restore jobs and verifying sessions; 1 streams without a spool file.
    #[arg(long, value_name = "N", default_value_t = pgward::restore::DEFAULT_JOBS as u16,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Restore without owners: objects belong to the restoring role.
    #[arg(long)]
    no_owner: bool,
    /// Restore without grants (GRANT/REVOKE).
    #[arg(long)]
    no_acl: bool,
    /// Server and role to restore with, as a conninfo (overrides [restore-connection]).
    #[arg(long, value_name = "CONNINFO")]
    restore_connection: Option<String>,
}

/// How to decrypt encrypted artifacts (overrides [decryption]).
#[derive(Args, Debug)]
struct DecryptArgs {
    /// Secret key file that decrypts encrypted artifacts (decryption.secret-key).
    #[arg(long, env = "PGWARD_SECRET_KEY", value_name = "FILE")]
    secret_key: Option<PathBuf>,
    /// File whose first line is the secret key's passphrase (decryption.passphrase-file).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Decrypt by running `gpg --batch --quiet --decrypt` (your keyring, agent or smartcard); wins over --secret-key.
    #[arg(long)]
    gpg: bool,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create a keypair for backups: PREFIX.sec.asc (passphrase-protected) and PREFIX.pub.asc.
    Generate {
        /// Path prefix of the two files to create (neither may exist).
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
        /// The key's user id.
        #[arg(long, value_name = "NAME", default_value = "pgward backups")]
        user_id: String,
        /// File whose first line is the new passphrase (default: PGWARD_PASSPHRASE_FILE, then a prompt).
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Show a certificate's fingerprint, algorithms, expiry and encryption capability.
    Show {
        /// A certificate (or secret key) file, armored or binary.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Which database, which part of it, and which pg_dump: shared by the
/// commands that look at a database.
#[derive(Args, Debug)]
struct TargetArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Only this schema (repeatable); replaces the config file's scope.
    #[arg(long = "schema", value_name = "SCHEMA")]
    schemas: Vec<String>,
    /// Leave out this schema (repeatable); replaces the config file's scope.
    #[arg(long = "exclude-schema", value_name = "SCHEMA")]
    exclude_schemas: Vec<String>,
    /// Only this table, as schema.table (repeatable); replaces the config file's scope.
    #[arg(long = "table", value_name = "SCHEMA.TABLE")]
    tables: Vec<String>,
    /// Leave out this table, as schema.table (repeatable); replaces the config file's scope.
    #[arg(long = "exclude-table", value_name = "SCHEMA.TABLE")]
    exclude_tables: Vec<String>,
    /// The pg_dump program to run.
    #[arg(long, value_name = "PATH")]
    pg_dump: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BackupArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Run the readiness check and show what would be dumped; dump and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Smallest plausible archive, e.g. "1 MiB" (validation.min-size).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    min_size: Option<u64>,
    /// Largest accepted shrink against the previous backup, in percent.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    max_shrink_percent: Option<u8>,
    /// Accept this backup even if it shrank beyond the limit.
    #[arg(long)]
    allow_shrink: bool,
    /// zstd compression level (1-22, or -1 to -7 for zstd's fast levels).
    #[arg(long, value_name = "LEVEL", allow_negative_numbers = true)]
    compression_level: Option<i32>,
    /// zstd worker threads (0: compress on the main thread).
    #[arg(long, value_name = "N")]
    compression_threads: Option<u32>,
}

#[derive(Args, Debug)]
struct GrantsArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Print the rollback (REVOKE) script instead of the grants.
    #[arg(long)]
    revoke: bool,
    /// With --revoke: the rollback of a saved plan (an id, or `latest`) instead of the current one.
    #[arg(long, value_name = "ID|latest", requires = "revoke")]
    plan: Option<String>,
    /// Run the plan in one transaction through the admin connection, then re-check.
    #[arg(long, conflicts_with = "revoke")]
    execute: bool,
    /// Privileged connection for --execute (overrides [admin-connection]); never the backup role.
    #[arg(long, value_name = "CONNINFO")]
    admin_dbname: Option<String>,
}

fn parse_size(text: &str) -> Result<u64, String> {
    pgward::config::parse_size(text)
}

/// A failure, and whether its JSON document was already printed (a failed
/// `verify` prints its report, which is the document).
enum Failure {
    Error(Error),
    Reported(Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Error(error)
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(usage) => usage_error(usage),
    };
    let json = cli.json;
    let (code, cause) = match run(cli) {
        Ok(()) => (0, None),
        Err(Failure::Error(error)) => {
            render::error(&error, json);
            (error.kind().exit_code(), Some(error.message().to_string()))
        }
        Err(Failure::Reported(error)) => {
            render::error(&error, false);
            (error.kind().exit_code(), Some(error.message().to_string()))
        }
    };
    for warning in journaling::finish(code, cause) {
        eprintln!("pgward: warning: {warning}");
    }
    std::process::exit(code);
}

/// A command line clap refuses: its own text, and with `--json` one JSON
/// error document too (kind `config`, exit 2). Help and the version are
/// no errors.
fn usage_error(usage: clap::Error) -> ! {
    use clap::error::ErrorKind as Clap;
    if matches!(usage.kind(), Clap::DisplayHelp | Clap::DisplayVersion)
        || !std::env::args().any(|arg| arg == "--json")
    {
        usage.exit();
    }
    let text = usage.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ")
        .to_string();
    let error = Error::config(format!("usage: {first}"))
        .with_hint("see `pgward --help` or `pgward COMMAND --help`");
    render::error(&error, true);
    std::process::exit(error.kind().exit_code());
}

fn load_config(cli: &Cli) -> Result<Config, Error> {
    let default = || {
        pgward::config::default_paths(&pgward::process_env)
            .into_iter()
            .find(|path| path.is_file())
    };
    let mut config = match cli.config.clone().or_else(default) {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(repo) = &cli.repo {
        config.repository = Some(repo.clone());
    }
    Ok(config)
}

/// Tells the `[[notify]]` targets how a command went; what was sent is
/// printed with the command's result. Never changes the outcome.
fn notify(
    config: &Config,
    event: NotifyEvent,
    started: Instant,
    result: std::result::Result<(String, &serde_json::Value), &Error>,
) {
    if config.notify.is_empty() {
        return;
    }
    let error_document;
    let (ok, summary, document) = match result {
        Ok((summary, document)) => (true, summary, document),
        Err(error) => {
            error_document = render::error_document(error);
            (false, error.to_string(), &error_document)
        }
    };
    let outcome = pgward::notify::Outcome {
        event,
        ok,
        summary,
        duration: started.elapsed(),
        document,
    };
    render::attach_notifications(pgward::notify::send(
        &config.notify,
        &outcome,
        &pgward::process_env,
    ));
}

/// The healthchecks `start` signal for a command that begins.
fn notify_start(config: &Config, event: NotifyEvent) {
    if !config.notify.is_empty() {
        render::attach_notifications(pgward::notify::start(
            &config.notify,
            event,
            &pgward::process_env,
        ));
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    render::set_quiet(cli.quiet && !cli.json);
    let mut config = load_config(&cli)?;
    match cli.command {
        Command::Backup(args) if args.dry_run => {
            apply_target_args(&mut config, &args.target)?;
            apply_backup_args(&mut config, &args)?;
            let plan = backup::dry_run(&config, &pgward::process_env)?;
            render::dry_run(&plan, cli.json);
            check_verdict(&plan.check)?;
        }
        Command::Backup(args) => {
            apply_target_args(&mut config, &args.target)?;
            apply_backup_args(&mut config, &args)?;
            let mut progress = render::Progress::new(!cli.json && !cli.quiet);
            let options = backup::BackupOptions {
                allow_shrink: args.allow_shrink,
            };
            journaling::begin(&config, "backup", connection_database(&config));
            let started = Instant::now();
            notify_start(&config, NotifyEvent::Backup);
            let outcome = backup::run(&config, &options, &pgward::process_env, &mut |p| {
                progress.update(p.archive_bytes)
            });
            progress.clear();
            // Journaled before any notification: a run killed while an
            // endpoint hangs still leaves its backup vouched for.
            match &outcome {
                Ok(done) => {
                    journaling::run_id(&done.manifest.id);
                    journaling::database(&done.manifest.database);
                    journaling::touched_known(
                        &done.artifact_path,
                        done.manifest.artifact.bytes,
                        &done.manifest.artifact.sha256,
                    );
                    journaling::touched(&done.manifest_path);
                    journaling::settle(0, None);
                }
                Err(error) => {
                    journaling::settle(error.kind().exit_code(), Some(error.message().to_string()))
                }
            }
            match &outcome {
                Ok(done) => notify(
                    &config,
                    NotifyEvent::Backup,
                    started,
                    Ok((
                        format!(
                            "backup {} complete: {} tables, {} stored",
                            done.manifest.id,
                            done.manifest.tables.len(),
                            pgward::config::format_size(done.manifest.artifact.bytes)
                        ),
                        &render::backup_document(done),
                    )),
                ),
                Err(error) => notify(&config, NotifyEvent::Backup, started, Err(error)),
            }
            let done = outcome?;
            render::backup(&done, cli.json);
            render::notifications(cli.json);
        }
        Command::Check(args) => {
            apply_target_args(&mut config, &args)?;
            let started = Instant::now();
            let report = check::run(&config, &pgward::process_env)?;
            let verdict = check_verdict(&report);
            match &verdict {
                Ok(()) => notify(
                    &config,
                    NotifyEvent::Check,
                    started,
                    Ok((
                        format!("check passed: {} rows", report.matrix.items.len()),
                        &render::check_document(&report),
                    )),
                ),
                Err(Failure::Error(e) | Failure::Reported(e)) => {
                    notify(&config, NotifyEvent::Check, started, Err(e))
                }
            }
            render::check(&report, cli.json);
            render::notifications(cli.json);
            verdict?;
        }
        Command::Grants(args) => {
            apply_target_args(&mut config, &args.target)?;
            if let Some(admin) = &args.admin_dbname {
                let mut admin_config = config.admin_connection.clone().unwrap_or_default();
                admin_config.dbname = Some(admin.clone());
                config.admin_connection = Some(admin_config);
            }
            if args.execute {
                journaling::begin(&config, "grants", connection_database(&config));
                journaling::option("execute".into());
            }
            run_grants(&config, &args, cli.json)?;
        }
        Command::List(args) => {
            let repo = pgward::Repository::open_configured(&config)?;
            render::list(&list::run(&repo, args.database.as_deref())?, cli.json);
        }
        Command::Copy(args) => {
            let from = pgward::Repository::open_configured(&config)?;
            let location = pgward::config::Location::parse(&args.to)?;
            let to = pgward::Repository::init_at(&location, &config)?;
            // With --all, each backup's copy decides whether it is there
            // already (the same manifest, byte for byte), not its id.
            let manifests = match &args.backup {
                Some(backup) => vec![from.find(&selector(&config, backup, &args.of)?)?],
                None => pgward::copy::oldest_first(
                    from.backups()?
                        .into_iter()
                        .filter(|m| args.of.database.as_ref().is_none_or(|db| &m.database == db))
                        .collect(),
                ),
            };
            journaling::begin(&config, "copy", args.of.database.clone());
            journaling::option(format!("to {}", location.describe()));
            let mut progress = render::Progress::new(!cli.json);
            let copied = pgward::copy::run(&from, &to, &manifests, &mut |n| progress.update(n));
            progress.clear();
            let (report, failure) = copied?;
            // What was copied before a failure is journaled all the same.
            for backup in &report.backups {
                journaling::option(pgward::copy::journal_option(&backup.id, &report.to));
            }
            if let Some(error) = failure {
                return Err(error.into());
            }
            render::copy(&report, cli.json);
        }
        Command::Verify(args) => {
            apply_decrypt_args(&mut config, &args.decrypt);
            let repo = pgward::Repository::open_configured(&config)?;
            let mut progress = render::Progress::new(!cli.json);
            let mut decryptor = configured_decryptor(&config);
            let selector = selector(&config, &args.backup, &args.of)?;
            journaling::begin(&config, "verify", selector.database.clone());
            journaling::option(format!("backup {}", args.backup));
            let report = verify::run(&repo, &selector, &mut decryptor, &mut |n| {
                progress.update(n)
            });
            progress.clear();
            let report = report?;
            journaling::option(format!("backup-id {}", report.id));
            journaling::touched(&repo.manifest_path(&report.id));
            render::verify(&report, cli.json);
            report.into_result().map_err(Failure::Reported)?;
        }
        Command::Restore(args) => {
            apply_decrypt_args(&mut config, &args.decrypt);
            apply_restore_connect_args(&mut config, &args.connect)?;
            let options = pgward::restore::RestoreOptions {
                selection: pgward::restore::selection::Selection::new(
                    args.schemas.clone(),
                    &args.tables,
                )?,
                drop_existing: args.drop_existing_database,
                allow_system_database: args.allow_system_database,
                ..restore_options(&mut config, &args.how)
            };
            let mut decryptor = configured_decryptor(&config);
            let mut progress = render::Progress::new(!cli.json);
            let chosen = selector(&config, &args.backup, &args.of)?;
            journaling::begin(&config, "restore", chosen.database.clone());
            journaling::option(format!("backup {}", args.backup));
            journaling::option(format!("to {}", args.to));
            let report = pgward::restore::run(
                &config,
                &pgward::process_env,
                &chosen,
                &args.to,
                &options,
                &mut decryptor,
                &mut |n| progress.update(n),
            );
            progress.clear();
            let report = report?;
            journaling::option(format!("backup-id {}", report.backup_id));
            render::restore(&report, cli.json);
            if let Some(check) = report.first_failure() {
                return Err(Failure::Reported(
                    Error::new(
                        ErrorKind::Integrity,
                        format!(
                            "database {} does not match backup {}: {}: {}",
                            report.database, report.backup_id, check.name, check.detail
                        ),
                    )
                    .with_hint("the database was kept for inspection; drill the backup, or restore another one"),
                ));
            }
        }
        Command::Drill(args) => {
            apply_decrypt_args(&mut config, &args.decrypt);
            apply_restore_connect_args(&mut config, &args.connect)?;
            let options = pgward::drill::DrillOptions {
                restore: restore_options(&mut config, &args.how),
                keep: args.keep,
            };
            let mut decryptor = configured_decryptor(&config);
            let mut progress = render::Progress::new(!cli.json && !cli.quiet);
            let started = Instant::now();
            let selector = selector(&config, &args.backup, &args.of)?;
            journaling::begin(&config, "drill", selector.database.clone());
            journaling::option(format!("backup {}", args.backup));
            notify_start(&config, NotifyEvent::Drill);
            let report = pgward::drill::run(
                &config,
                &pgward::process_env,
                &selector,
                &options,
                &mut decryptor,
                &mut |n| progress.update(n),
            );
            progress.clear();
            let report = match report {
                Ok(report) => report,
                Err(error) => {
                    notify(&config, NotifyEvent::Drill, started, Err(&error));
                    return Err(error.into());
                }
            };
            journaling::option(format!("backup-id {}", report.record.backup_id));
            if let Ok(repo) = pgward::Repository::open_configured(&config) {
                journaling::touched(&repo.drill_record_path(&report.record.backup_id));
            }
            let verdict = report.clone().into_result();
            match &verdict {
                Ok(_) => notify(
                    &config,
                    NotifyEvent::Drill,
                    started,
                    Ok((
                        format!("drill of {} passed", report.record.backup_id),
                        &render::drill_document(&report),
                    )),
                ),
                Err(error) => notify(&config, NotifyEvent::Drill, started, Err(error)),
            }
            render::drill(&report, cli.json);
            render::notifications(cli.json);
            verdict.map_err(Failure::Reported)?;
        }
        Command::Prune(args) => {
            let repo = pgward::Repository::open_configured(&config)?;
            let started = Instant::now();
            if !args.dry_run {
                notify_start(&config, NotifyEvent::Prune);
            }
            let options = pgward::prune::PruneOptions {
                dry_run: args.dry_run,
                database: args.database.clone(),
            };
            if !args.dry_run {
                journaling::begin(&config, "prune", args.database.clone());
            }
            let report = pgward::prune::run(&repo, &config, &options);
            if let Ok(pruned) = &report {
                for backup in pruned.backups.iter().filter(|b| b.action == "delete") {
                    journaling::option(format!("removed {}", backup.id));
                }
            }
            match &report {
                Ok(pruned) if !pruned.dry_run => notify(
                    &config,
                    NotifyEvent::Prune,
                    started,
                    Ok((
                        format!("prune: {} kept, {} deleted", pruned.kept, pruned.deleted),
                        &render::prune_document(pruned),
                    )),
                ),
                Ok(_) => {}
                Err(error) => notify(&config, NotifyEvent::Prune, started, Err(error)),
            }
            render::prune(&report?, cli.json);
            render::notifications(cli.json);
        }
        Command::Run(args) => {
            apply_target_args(&mut config, &args.target)?;
            apply_decrypt_args(&mut config, &args.decrypt);
            let options = pgward::drill::DrillOptions {
                restore: restore_options(&mut config, &args.how),
                keep: false,
            };
            let mut decryptor = configured_decryptor(&config);
            let started = Instant::now();
            journaling::begin(&config, "run", connection_database(&config));
            notify_start(&config, NotifyEvent::Run);
            let report =
                match pgward::run::run(&config, &pgward::process_env, &mut decryptor, &options) {
                    Ok(report) => report,
                    Err(error) => {
                        notify(&config, NotifyEvent::Run, started, Err(&error));
                        return Err(error.into());
                    }
                };
            if let Some(manifest) = &report.manifest
                && let Ok(repo) = pgward::Repository::open_configured(&config)
            {
                journaling::run_id(&manifest.id);
                journaling::database(&manifest.database);
                journaling::touched_known(
                    &repo.artifact_path(manifest),
                    manifest.artifact.bytes,
                    &manifest.artifact.sha256,
                );
                journaling::touched(&repo.manifest_path(&manifest.id));
            }
            for (id, to) in &report.copies {
                journaling::option(pgward::copy::journal_option(id, to));
            }
            if report.ok {
                journaling::settle(0, None);
            } else {
                let error = pgward::run::failure_error(&report);
                journaling::settle(error.kind().exit_code(), Some(error.message().to_string()));
            }
            notify_run(&config, &report, started);
            render::run(&report, cli.json);
            render::notifications(cli.json);
            if !report.ok {
                return Err(Failure::Reported(pgward::run::failure_error(&report)));
            }
        }
        Command::Apply(args) => {
            let options = pgward::apply::ApplyOptions {
                package: args.package.clone(),
                preflight_only: args.preflight_only,
                rehearse_on: match args.rehearse {
                    Rehearse::Production => pgward::apply::RehearseOn::Production,
                    Rehearse::Scratch => pgward::apply::RehearseOn::Scratch,
                },
            };
            let mut decryptor = configured_decryptor(&config);
            let started = Instant::now();
            journaling::begin(&config, "apply", None);
            journaling::option(format!("package {}", args.package.display()));
            notify_start(&config, NotifyEvent::Apply);
            let report =
                match pgward::apply::run(&config, &options, &pgward::process_env, &mut decryptor) {
                    Ok(report) => report,
                    Err(error) => {
                        notify(&config, NotifyEvent::Apply, started, Err(&error));
                        return Err(error.into());
                    }
                };
            journaling::run_id(&report.id);
            journaling::database(&report.target.database);
            journaling::option(format!("status {}", report.status.name()));
            for file in &report.report_files {
                journaling::touched(file);
            }
            if let (Some(backup), Ok(repo)) =
                (&report.backup, pgward::Repository::open_configured(&config))
            {
                journaling::touched_known(
                    &repo.root().join("backups").join(&backup.artifact),
                    backup.stored_bytes,
                    &backup.stored_sha256,
                );
                journaling::touched(&repo.manifest_path(&backup.id));
            }
            let verdict = report
                .succeeded()
                .then_some(())
                .ok_or_else(|| Error::from(&report));
            match &verdict {
                Ok(()) => journaling::settle(0, None),
                Err(error) => {
                    journaling::settle(error.kind().exit_code(), Some(error.message().to_string()))
                }
            }
            match &verdict {
                Ok(()) => notify(
                    &config,
                    NotifyEvent::Apply,
                    started,
                    Ok((
                        format!("apply {}: {}", report.id, report.status.name()),
                        &render::apply_document(&report),
                    )),
                ),
                Err(error) => notify(&config, NotifyEvent::Apply, started, Err(error)),
            }
            render::apply(&report, cli.json);
            render::notifications(cli.json);
            verdict.map_err(Failure::Reported)?;
        }
        Command::Log(args) => {
            let repo = pgward::Repository::open_configured(&config)?;
            if args.verify || args.head {
                let verification = pgward::journal::verify(&repo, args.anchor.as_deref())?;
                render::journal_verification(&verification, args.head, cli.json);
                if let Some(broken) = verification.broken {
                    return Err(Failure::Reported(Error::new(
                        ErrorKind::Integrity,
                        format!("the journal is broken: {broken}"),
                    )));
                }
                return Ok(());
            }
            let since = match &args.since {
                None => None,
                Some(when) => Some(since_timestamp(when)?),
            };
            let (records, damaged) = pgward::journal::read_tolerant(&repo)?;
            for line in &damaged {
                eprintln!("pgward: warning: {line} (see `pgward log --verify`)");
            }
            let records: Vec<_> = records
                .into_iter()
                .filter(|r| args.database.is_none() || r.database == args.database)
                .filter(|r| args.command.as_ref().is_none_or(|c| &r.command == c))
                .filter(|r| args.outcome.as_ref().is_none_or(|o| &r.outcome == o))
                .filter(|r| {
                    since.is_none_or(|since| {
                        r.started_at
                            .parse::<jiff::Timestamp>()
                            .is_ok_and(|t| t >= since)
                    })
                })
                .collect();
            render::journal(&records, cli.json);
        }
        Command::Status(args) => {
            let repo = pgward::Repository::open_configured(&config)?;
            let objectives = pgward::status::Objectives::from_config(&config)?;
            let facts = pgward::status::facts(&repo)?;
            let report = pgward::status::evaluate(&facts, &objectives, pgward::clock::now());
            let format = if cli.json {
                "json"
            } else {
                args.format.as_str()
            };
            render::status(&report, format);
            if !report.ok() {
                return Err(Failure::Reported(Error::new(
                    ErrorKind::Status,
                    format!(
                        "status {}: an objective does not hold",
                        report.verdict.name()
                    ),
                )));
            }
        }
        Command::Report(args) => {
            let repo = pgward::Repository::open_configured(&config)?;
            let (verification, records) = pgward::journal::read_and_verify(&repo)?;
            let record = if args.run == "latest" {
                records.last()
            } else {
                records.iter().rev().find(|r| r.run_id == args.run)
            }
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no run {} in the journal", args.run),
                )
                .with_hint("`pgward log` lists the runs")
            })?;
            render::run_report(record, &verification, &repo, cli.json);
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "pgward", &mut std::io::stdout());
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Error::config(format!("cannot write the manual page: {e}")))?;
        }
        Command::Key(KeyCommand::Generate {
            out,
            user_id,
            passphrase_file,
        }) => {
            let passphrase = new_passphrase(passphrase_file)?;
            let key = keygen::generate(&user_id, Some(&passphrase))?;
            let written = keygen::write(&key, &out)?;
            render::key_generated(&written, cli.json);
        }
        Command::Key(KeyCommand::Show { file }) => {
            let certificate = match Certificate::load(&file) {
                Ok(c) => c,
                Err(not_public) => match secret::load(&file) {
                    Ok(key) => Certificate {
                        path: file.clone(),
                        key: key.to_public_key(),
                    },
                    Err(_) => return Err(not_public.into()),
                },
            };
            render::key_info(&certificate.info(pgward::clock::now()), cli.json);
        }
    }
    Ok(())
}

/// `7d` (that long ago) or an RFC 3339 time.
fn since_timestamp(when: &str) -> Result<jiff::Timestamp, Error> {
    if let Ok(at) = when.parse::<jiff::Timestamp>() {
        return Ok(at);
    }
    let ago = pgward::config::parse_duration(when).map_err(|e| {
        Error::config(format!("--since {when:?}: {e}"))
            .with_hint("a duration such as 7d, or a time such as 2026-11-30T00:00:00Z")
    })?;
    Ok(pgward::clock::now() - ago)
}

/// The database the connection settings name, for the journal (None
/// when they name none or cannot be read: the command says why itself).
fn connection_database(config: &Config) -> Option<String> {
    // The database connected to, libpq's default (the user name) included.
    pgward::connection::ConnectionTarget::resolve(&config.connection, &pgward::process_env)
        .ok()
        .map(|target| target.dbname)
        .filter(|name| !name.is_empty())
}

/// What decrypts artifacts as the config (and the flags applied to it)
/// says, asked for only when an artifact is encrypted; the passphrase
/// prompt goes to the terminal.
fn configured_decryptor(
    config: &Config,
) -> impl FnMut() -> Result<Option<secret::Decryptor>, Error> + use<> {
    let decryption = config.decryption.clone();
    move || secret::decryptor(&decryption, &pgward::process_env, &tty::ask_passphrase)
}

fn restore_options(config: &mut Config, how: &RestoreHowArgs) -> pgward::restore::RestoreOptions {
    if let Some(conninfo) = &how.restore_connection {
        config.restore_connection = Some(pgward::config::ConnectionConfig {
            dbname: Some(conninfo.clone()),
            ..Default::default()
        });
    }
    pgward::restore::RestoreOptions {
        jobs: usize::from(how.jobs),
        no_owner: how.no_owner,
        no_acl: how.no_acl,
        ..Default::default()
    }
}

/// A failed readiness check is exit 1; its report was the output.
fn check_verdict(report: &check::CheckReport) -> Result<(), Failure> {
    if report.verdict != check::Status::Fail {
        return Ok(());
    }
    let first = report
        .matrix
        .items
        .iter()
        .find(|i| i.status == check::Status::Fail);
    let error = Error::new(
        ErrorKind::Validation,
        format!(
            "readiness check failed: {} item(s) FAIL, first: {}: {}",
            report.matrix.failures(),
            first.map(|i| i.id.as_str()).unwrap_or("?"),
            first.map(|i| i.evidence.as_str()).unwrap_or("?")
        ),
    );
    Err(Failure::Reported(
        match first.and_then(|i| i.hint.clone()) {
            Some(hint) => error.with_hint(hint),
            None => error,
        },
    ))
}

fn run_grants(config: &Config, args: &GrantsArgs, json: bool) -> Result<(), Failure> {
    // Plans are saved in a local repository (an s3:// one is refused).
    let local = match &config.repository {
        Some(_) => Some(config.repository_path()?.to_path_buf()),
        None => None,
    };
    let repo = match &local {
        Some(path) if path.join("pgward-repository.json").is_file() => {
            Some(pgward::Repository::open(path)?)
        }
        Some(path) if args.execute || (!args.revoke && args.plan.is_none()) => {
            Some(pgward::Repository::init(path)?)
        }
        _ => None,
    };
    if let Some(selector) = &args.plan {
        let repo = repo.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "no repository to read saved plans from",
            )
            .with_hint("pass --repo DIR or set PGWARD_REPO")
        })?;
        let database = config.connection.dbname.as_deref();
        let plan = grants::load(
            &repo,
            selector,
            database.filter(|d| !d.contains('=') && !d.contains("://")),
        )?;
        render::grants(&plan, true, None, json);
        return Ok(());
    }
    let (plan, report) = grants::plan(config, &pgward::process_env)?;
    let saved = match &repo {
        Some(repo) => grants::save(repo, &plan)?,
        None => None,
    };
    if !args.execute {
        render::grants(&plan, args.revoke, saved.as_deref(), json);
        return Ok(());
    }
    if plan.is_empty() {
        render::grants(&plan, false, saved.as_deref(), json);
        return Ok(());
    }
    let execution = grants::execute(config, &pgward::process_env, &plan, &report)?;
    render::execution(&plan, &execution, saved.as_deref(), json);
    if !execution.gaps_after.is_empty() {
        return Err(Failure::Reported(Error::new(
            ErrorKind::Validation,
            format!(
                "{} privilege gap(s) remain after the grants",
                execution.gaps_after.len()
            ),
        )));
    }
    Ok(())
}

fn apply_decrypt_args(config: &mut Config, args: &DecryptArgs) {
    if let Some(key) = &args.secret_key {
        config.decryption.secret_key = Some(key.clone());
        config.decryption.command.clear();
    }
    if let Some(file) = &args.passphrase_file {
        config.decryption.passphrase_file = Some(file.clone());
    }
    if args.gpg {
        config.decryption.secret_key = None;
        config.decryption.command = ["gpg", "--batch", "--quiet", "--decrypt"]
            .map(String::from)
            .to_vec();
    }
}

/// A new key's passphrase: from a file, the file PGWARD_PASSPHRASE_FILE
/// names, or asked twice on the terminal. Never from argv.
fn new_passphrase(file: Option<PathBuf>) -> Result<secret::Zeroizing<String>, Error> {
    let file = file.or_else(|| std::env::var_os(secret::PASSPHRASE_FILE_ENV).map(PathBuf::from));
    if let Some(file) = file {
        return secret::read_passphrase_file(&file);
    }
    let no_terminal = || {
        Error::config("a new key needs a passphrase: none was entered and no file was given")
            .with_hint(format!(
                "pass --passphrase-file FILE or set {} to a file holding it",
                secret::PASSPHRASE_FILE_ENV
            ))
    };
    let ask = |prompt| tty::ask_passphrase(prompt).map(secret::Zeroizing::new);
    let first = ask("Passphrase for the new secret key: ").ok_or_else(no_terminal)?;
    let again = ask("Repeat the passphrase: ").ok_or_else(no_terminal)?;
    if first != again {
        return Err(Error::config(
            "the two passphrases differ; nothing was written",
        ));
    }
    Ok(first)
}

/// A run's notifications: one per target, after every step, for the
/// whole run (ok only when no step failed), to every target that wants
/// `run` events or the events of any step that ran.
fn notify_run(config: &Config, report: &pgward::run::RunReport, started: Instant) {
    if config.notify.is_empty() {
        return;
    }
    let document = render::run_document(report);
    let ran: Vec<NotifyEvent> = report
        .steps
        .iter()
        .filter(|s| s.status != "skipped")
        .filter_map(|s| match s.name {
            "backup" | "verify" => Some(NotifyEvent::Backup),
            "drill" => Some(NotifyEvent::Drill),
            "prune" => Some(NotifyEvent::Prune),
            _ => None,
        })
        .collect();
    let targets: Vec<_> = config
        .notify
        .iter()
        .filter(|t| {
            t.events.contains(&NotifyEvent::Run) || ran.iter().any(|e| t.events.contains(e))
        })
        .cloned()
        .map(|mut t| {
            // Matched here; the delivery filters on the outcome only.
            t.events = vec![NotifyEvent::Run];
            t
        })
        .collect();
    let outcome = pgward::notify::Outcome {
        event: NotifyEvent::Run,
        ok: report.ok,
        summary: report.summary(),
        duration: started.elapsed(),
        document: &document,
    };
    render::attach_notifications(pgward::notify::send(
        &targets,
        &outcome,
        &pgward::process_env,
    ));
}

/// The backup a command names, among the backups of the database given
/// or configured.
fn selector(
    config: &Config,
    backup: &str,
    of: &DatabaseArgs,
) -> Result<pgward::repository::select::Selector, Error> {
    pgward::repository::select::Selector::configured(
        backup,
        config,
        of.database.as_deref(),
        &pgward::process_env,
    )
}

/// `-d -h -p -U`: the command line wins over the configuration, a
/// conninfo in `connection.dbname` included.
fn apply_connect_args(config: &mut Config, args: &ConnectArgs) {
    if let Some(dbname) = &args.dbname {
        config.connection.dbname = Some(dbname.clone());
    }
    for (key, value) in [
        ("host", args.host.clone()),
        ("port", args.port.map(|p| p.to_string())),
        ("user", args.user.clone()),
    ] {
        if let Some(value) = value {
            config.connection.command_line.push((key, value));
        }
    }
}

/// For restore and drill, `-h -p -U` choose the restore server only when
/// no `[restore-connection]` or `[admin-connection]` does: refused rather
/// than silently ignored.
fn apply_restore_connect_args(config: &mut Config, args: &ConnectArgs) -> Result<(), Error> {
    let server_flags = args.host.is_some() || args.port.is_some() || args.user.is_some();
    if server_flags && (config.restore_connection.is_some() || config.admin_connection.is_some()) {
        return Err(Error::config(
            "-h/-p/-U would not choose the restore server: [restore-connection] or [admin-connection] does",
        )
        .with_hint("pass --restore-connection CONNINFO to restore elsewhere, or change that section"));
    }
    apply_connect_args(config, args);
    Ok(())
}

fn apply_target_args(config: &mut Config, args: &TargetArgs) -> Result<(), Error> {
    apply_connect_args(config, &args.connect);
    let scope_given = !(args.schemas.is_empty()
        && args.exclude_schemas.is_empty()
        && args.tables.is_empty()
        && args.exclude_tables.is_empty());
    if scope_given {
        config.scope = pgward::scope::Scope {
            schemas: args.schemas.clone(),
            exclude_schemas: args.exclude_schemas.clone(),
            tables: args.tables.clone(),
            exclude_tables: args.exclude_tables.clone(),
            // How the scope restores is the configuration's to say.
            standalone: config.scope.standalone,
        };
        config.scope.validate()?;
    }
    if let Some(path) = &args.pg_dump {
        config.pg_dump.path = Some(path.clone());
    }
    Ok(())
}

fn apply_backup_args(config: &mut Config, args: &BackupArgs) -> Result<(), Error> {
    if let Some(size) = args.min_size {
        config.validation.min_size = size;
    }
    if let Some(percent) = args.max_shrink_percent {
        config.validation.max_shrink_percent = percent;
    }
    if let Some(level) = args.compression_level {
        config.compression.level = level;
    }
    if let Some(threads) = args.compression_threads {
        config.compression.threads = Some(threads);
    }
    config.validate()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_help_text() {
        Cli::command().debug_assert();
        fn walk(cmd: &clap::Command) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                assert!(
                    builtin || arg.get_help().is_some(),
                    "--{} has no help",
                    arg.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
                walk(sub);
            }
        }
        walk(&Cli::command());
    }
}
