//! One definition of every setting, shared by the config file (TOML), the
//! command line (which overrides individual fields) and library callers.
//!
//! Unknown keys are an error: a misspelt `exclude-schemas` must not silently
//! widen or narrow what gets backed up.

use crate::error::{Error, Result};
use crate::scope::Scope;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The backup repository: a directory, or `s3://bucket/prefix`.
    pub repository: Option<PathBuf>,
    /// `[s3]`: how `s3://` repositories (and mirrors) are reached.
    #[serde(default)]
    pub s3: S3Config,
    /// `[[mirror]]` tables: repositories `run` copies each new backup to.
    #[serde(default, rename = "mirror")]
    pub mirrors: Vec<MirrorConfig>,
    #[serde(default)]
    pub connection: ConnectionConfig,
    #[serde(default)]
    pub scope: Scope,
    /// A privileged connection used only by `pgward grants --execute`
    /// (never the backup role's).
    pub admin_connection: Option<ConnectionConfig>,
    /// The server and role that `restore` and `drill` restore into (a
    /// spare instance, say); its dbname is only where pgward connects to
    /// create and drop databases. Unset: `admin-connection`, else
    /// `connection`.
    pub restore_connection: Option<ConnectionConfig>,
    #[serde(default)]
    pub pg_dump: ToolConfig,
    #[serde(default)]
    pub pg_restore: ToolConfig,
    #[serde(default)]
    pub compression: CompressionConfig,
    #[serde(default)]
    pub validation: ValidationConfig,
    #[serde(default)]
    pub encryption: EncryptionConfig,
    #[serde(default)]
    pub decryption: DecryptionConfig,
    #[serde(default)]
    pub drill: DrillConfig,
    #[serde(default)]
    pub signing: SigningConfig,
    /// Retention, drills and the nightly job (`pgward run`, `pgward prune`).
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[metrics]`: where Prometheus metrics are written after every run.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[[notify]]` tables: where outcomes are sent.
    #[serde(default, rename = "notify")]
    pub notify: Vec<NotifyConfig>,
    /// The file this configuration was read from (not a key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsConfig {
    /// A node_exporter textfile-collector file (`….prom`), replaced
    /// atomically after every run that is journaled.
    pub textfile: Option<PathBuf>,
}

/// `[s3]`. Credentials are never a literal here: a credentials file, or
/// the standard AWS environment variables and shared file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct S3Config {
    /// The service's URL (`https://s3.eu-central-003.backblazeb2.com`,
    /// `http://127.0.0.1:9000`); unset: AWS_ENDPOINT_URL, else AWS S3.
    pub endpoint: Option<String>,
    /// Unset: AWS_REGION, AWS_DEFAULT_REGION, else `us-east-1`.
    pub region: Option<String>,
    /// `path` (`endpoint/bucket/key`) or `virtual-hosted`
    /// (`bucket.endpoint/key`); default `path` with an endpoint, else
    /// `virtual-hosted`.
    pub addressing: Option<S3Addressing>,
    /// The storage class of new objects (`STANDARD`, `STANDARD_IA`, ...).
    pub storage_class: Option<String>,
    /// An AWS credentials file (INI) holding the access key pair.
    pub credentials_file: Option<PathBuf>,
    /// The profile in the credentials file (default: AWS_PROFILE, else
    /// `default`).
    pub profile: Option<String>,
    /// Multipart part size (default 8MiB, at least 5MiB).
    pub part_size: Option<String>,
    /// How long the lock of a run writing into the bucket stays valid
    /// without renewal (default `5m`): how long a run that died keeps
    /// the next one out.
    pub lock_lease: Option<String>,
}

impl S3Config {
    /// `lock-lease`, 2 s to 1 h.
    pub fn lock_lease(&self) -> Result<std::time::Duration> {
        let Some(text) = &self.lock_lease else {
            return Ok(crate::repository::lease::DEFAULT_LEASE);
        };
        let lease =
            parse_duration(text).map_err(|e| Error::config(format!("[s3] lock-lease: {e}")))?;
        let seconds = lease.as_secs();
        if !(2..=3600).contains(&seconds) {
            return Err(Error::config(format!(
                "[s3] lock-lease {text:?} is outside 2s..1h"
            ))
            .with_hint("the holder renews it every fifth of the lease; 5m (the default) suits most links"));
        }
        Ok(std::time::Duration::from_secs(seconds as u64))
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum S3Addressing {
    Path,
    VirtualHosted,
}

/// `[[mirror]]`: a second repository (off-site) that `run` copies each
/// new backup to once it is committed.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MirrorConfig {
    /// A directory or `s3://bucket/prefix`.
    pub repository: String,
    /// `run` applies `[policy]` to this mirror too (after the local prune,
    /// once tonight's backup has reached it). Default false: the mirror
    /// keeps everything.
    #[serde(default)]
    pub prune: bool,
}

/// Where pgward looks for its configuration when neither `--config` nor
/// PGWARD_CONFIG names one: the system's, then the user's.
pub fn default_paths(env: crate::connection::Env) -> Vec<PathBuf> {
    let user = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")))
        .map(|dir| dir.join("pgward").join("pgward.toml"));
    std::iter::once(PathBuf::from("/etc/pgward/pgward.toml"))
        .chain(user)
        .collect()
}

/// What `prune` keeps (per database and scope), when `run` drills, and
/// how long quarantined runs stay. Durations are a number and a unit:
/// `90s`, `30m`, `12h`, `14d`, `2w`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PolicyConfig {
    /// The N newest complete backups.
    pub keep_last: Option<u32>,
    /// The newest backup of each of the last N hours (days, ...) that
    /// have one, in `time-zone`.
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// Every backup younger than this.
    pub keep_within: Option<String>,
    /// How long quarantined runs stay (default 30d).
    pub quarantine_keep: Option<String>,
    /// `run` drills when the newest passed drill of this database and
    /// scope is older than this; `"always"`: every run; unset: never.
    pub drill_every: Option<String>,
    /// The time zone calendar buckets are counted in (IANA name, default
    /// the system's).
    pub time_zone: Option<String>,
    /// `status`: a database whose newest complete backup is older than
    /// this is LATE.
    pub max_backup_age: Option<String>,
    /// `status`: a database whose newest drill is older than this (or
    /// that was never drilled) is LATE.
    pub max_drill_age: Option<String>,
}

/// Where an outcome is sent. The URL is a secret (it holds the push
/// token): from `url-file` or `url-env`, or `url` in this (private) file;
/// it is masked in every output.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NotifyConfig {
    pub kind: NotifyKind,
    pub url: Option<String>,
    /// A file whose first line is the URL.
    pub url_file: Option<PathBuf>,
    /// An environment variable that holds the URL.
    pub url_env: Option<String>,
    /// Which outcomes are sent: `failure`, `success` (default both).
    #[serde(default = "default_on")]
    pub on: Vec<NotifyOn>,
    /// Which commands' outcomes: `backup`, `drill`, `prune`, `check`,
    /// `run` (default all).
    #[serde(default = "default_events")]
    pub events: Vec<NotifyEvent>,
    /// Connect and total timeout of each attempt (default 10s).
    pub timeout: Option<String>,
    /// Attempts after the first, with backoff (default 2).
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyKind {
    /// Uptime Kuma push monitor: GET URL?status=up|down&msg=…&ping=ms.
    UptimeKuma,
    /// healthchecks.io and compatible: URL/start, URL (success), URL/fail.
    Healthchecks,
    /// POST of the command's JSON document.
    Webhook,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyOn {
    Failure,
    Success,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyEvent {
    Backup,
    Drill,
    Prune,
    Check,
    Run,
    /// `apply`: not among the defaults (a change is no heartbeat); name it.
    Apply,
}

fn default_on() -> Vec<NotifyOn> {
    vec![NotifyOn::Failure, NotifyOn::Success]
}

fn default_events() -> Vec<NotifyEvent> {
    vec![
        NotifyEvent::Backup,
        NotifyEvent::Drill,
        NotifyEvent::Prune,
        NotifyEvent::Check,
        NotifyEvent::Run,
    ]
}

/// `90s`, `30m`, `12h`, `14d`, `2w`.
pub fn parse_duration(text: &str) -> std::result::Result<jiff::SignedDuration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a number and a unit, such as \"14d\"")
    })?;
    let seconds = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use s, m, h, d or w"
            ));
        }
    };
    n.checked_mul(seconds)
        .map(jiff::SignedDuration::from_secs)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

/// Signed manifests: a backup signs its manifest with a key of its own,
/// and every command that reads manifests accepts only those signed by the
/// pinned key, so that someone who can write the repository but not this
/// key cannot plant or alter a backup. Off unless `fingerprint` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SigningConfig {
    /// The full fingerprint of the signing key. Set: every manifest must
    /// carry a valid signature by this key's primary key.
    pub fingerprint: Option<String>,
    /// The signing key's public certificate, where manifests are read
    /// (not needed where `secret-key` is set).
    pub certificate: Option<PathBuf>,
    /// The signing key's secret key (mode 0600), on the host that backs up.
    pub secret_key: Option<PathBuf>,
    /// A file whose first line is the secret key's passphrase.
    pub passphrase_file: Option<PathBuf>,
}

/// How drills (and the verification after a restore) judge what they find.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DrillConfig {
    /// Findings accepted as known and explained, each `"CLASS OBJECT"`,
    /// e.g. `"column-order public.child"`: recorded in the verdict, no
    /// longer failing it. Nothing is accepted by default.
    #[serde(default)]
    pub accept: Vec<String>,
}

/// Who backups are encrypted to.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EncryptionConfig {
    /// Refuse to back up without a usable recipient. Unset means: required
    /// as soon as a recipient is configured.
    pub required: Option<bool>,
    /// `[[encryption.recipient]]` tables; every backup is encrypted to all.
    #[serde(default, rename = "recipient")]
    pub recipients: Vec<RecipientConfig>,
}

/// One recipient: a public certificate and the fingerprint it must have.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RecipientConfig {
    /// An OpenPGP certificate (public key), armored or binary.
    pub certificate: PathBuf,
    /// The full fingerprint the certificate must have (spaces allowed).
    pub fingerprint: String,
}

impl RecipientConfig {
    pub fn pin(&self) -> Result<crate::encryption::Fingerprint> {
        crate::encryption::Fingerprint::parse(&self.fingerprint).map_err(|e| {
            Error::config(format!(
                "encryption.recipient {}: fingerprint {e}",
                self.certificate.display()
            ))
        })
    }
}

/// How pgward decrypts where it reads artifacts (`verify`): a secret key
/// file, or an external command such as `gpg --decrypt`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DecryptionConfig {
    /// An OpenPGP secret key file (armored or binary).
    pub secret_key: Option<PathBuf>,
    /// A file holding the secret key's passphrase (first line).
    pub passphrase_file: Option<PathBuf>,
    /// A command that reads the encrypted artifact on stdin and writes the
    /// plaintext on stdout, e.g. ["gpg", "--batch", "--decrypt"].
    #[serde(default)]
    pub command: Vec<String>,
}

/// Where the database is. Anything left unset comes from the libpq
/// environment (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGPASSFILE,
/// PGSERVICE) and libpq's defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConnectionConfig {
    /// A database name, a `key=value` conninfo string or a `postgresql://` URI.
    pub dbname: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// A file whose first line is the password (never put the password itself here).
    pub password_file: Option<PathBuf>,
    /// The cluster's expected system identifier: a safety pin against
    /// backing up (or later restoring to) the wrong cluster.
    pub system_identifier: Option<String>,
    /// TLS, with libpq's names and meanings (see README, Connecting).
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub sslcrl: Option<PathBuf>,
    pub sslcrldir: Option<PathBuf>,
    pub sslsni: Option<String>,
    #[serde(rename = "ssl_min_protocol_version")]
    pub ssl_min_protocol_version: Option<String>,
    #[serde(rename = "ssl_max_protocol_version")]
    pub ssl_max_protocol_version: Option<String>,
    /// Server options, as libpq's `options` (`-c name=value ...`).
    pub options: Option<String>,
    /// libpq's `target_session_attrs`, for several hosts.
    #[serde(rename = "target_session_attrs")]
    pub target_session_attrs: Option<String>,
    /// Set by the command line (`-h`, `-p`, `-U`): wins over everything
    /// else, a conninfo in `dbname` included (not a config key).
    #[serde(skip)]
    pub command_line: Vec<(&'static str, String)>,
}

/// The settings that say how the server is verified: a session of
/// another role to the same server (admin, restore) inherits them from
/// `[connection]` unless its own section sets them, so that it is never
/// less protected. Client certificates are per role and not inherited.
pub const INHERITED_TLS_PARAMETERS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
];

impl ConnectionConfig {
    /// The libpq parameters this section sets besides dbname, host, port,
    /// user and the password file, by their libpq names.
    pub fn libpq_parameters(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            ("sslmode", self.sslmode.clone()),
            ("sslrootcert", self.sslrootcert.clone()),
            ("sslcert", path(&self.sslcert)),
            ("sslkey", path(&self.sslkey)),
            ("sslcrl", path(&self.sslcrl)),
            ("sslcrldir", path(&self.sslcrldir)),
            ("sslsni", self.sslsni.clone()),
            (
                "ssl_min_protocol_version",
                self.ssl_min_protocol_version.clone(),
            ),
            (
                "ssl_max_protocol_version",
                self.ssl_max_protocol_version.clone(),
            ),
            ("options", self.options.clone()),
            ("target_session_attrs", self.target_session_attrs.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// How a PostgreSQL client tool (pg_dump, pg_restore) is run.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ToolConfig {
    /// The program; found on PATH when unset.
    pub path: Option<PathBuf>,
    /// Words put before the pg_dump command, e.g.
    /// `["docker", "exec", "-i", "-e", "PGPASSWORD", "db"]`.
    #[serde(default)]
    pub command_prefix: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CompressionConfig {
    /// zstd level: 1 to 22, or -1 to -7 for zstd's fast levels.
    #[serde(default = "default_level")]
    pub level: i32,
    /// zstd worker threads; unset means one per core, at most 4.
    pub threads: Option<u32>,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            level: default_level(),
            threads: None,
        }
    }
}

fn default_level() -> i32 {
    crate::pipeline::compress::DEFAULT_LEVEL
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ValidationConfig {
    /// The smallest plausible archive (uncompressed), in bytes or with a unit
    /// ("1 MiB"). Set it near your real dump size: an empty dump is ~10 KiB.
    #[serde(default = "default_min_size", deserialize_with = "deserialize_size")]
    pub min_size: u64,
    /// How much smaller (in percent of archive bytes) a backup may be than
    /// the previous good backup of the same database and scope.
    #[serde(default = "default_max_shrink")]
    pub max_shrink_percent: u8,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            min_size: default_min_size(),
            max_shrink_percent: default_max_shrink(),
        }
    }
}

fn default_min_size() -> u64 {
    1024
}

fn default_max_shrink() -> u8 {
    50
}

fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// Parses "4096", "64 KiB", "1MiB", "2 GB" (decimal and binary units).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| {
        format!("invalid size {text:?}: expected a number of bytes such as \"1 MiB\"")
    })?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1 << 10,
        "mb" => 1000 * 1000,
        "mib" | "m" => 1 << 20,
        "gb" => 1000 * 1000 * 1000,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {text:?}: use B, KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Formats a byte count in binary units: "512 B", "1.5 MiB".
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A repository's place: a local directory or an S3-compatible bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(crate::storage::s3::S3Location),
}

impl Location {
    pub fn parse(text: &Path) -> Result<Location> {
        let Some(text) = text.to_str() else {
            return Ok(Location::Local(text.to_path_buf()));
        };
        match crate::storage::s3::S3Location::parse(text) {
            Some(Ok(location)) => Ok(Location::S3(location)),
            Some(Err(e)) => Err(Error::config(format!("repository {e}"))),
            None if text.contains("://") => Err(Error::config(format!(
                "repository {text:?}: only s3:// URLs and directories are repositories"
            ))),
            None => Ok(Location::Local(PathBuf::from(text))),
        }
    }

    /// For messages.
    pub fn describe(&self) -> String {
        match self {
            Location::Local(path) => path.display().to_string(),
            Location::S3(location) => location.url(),
        }
    }
}

impl Config {
    /// The repository directory, for the commands that work on a local
    /// repository only; an `s3://` repository is refused with what to do
    /// instead.
    pub fn repository_path(&self) -> Result<&Path> {
        let path = self.repository.as_deref().ok_or_else(|| {
            Error::config("no repository configured")
                .with_hint("pass --repo DIR, set PGWARD_REPO or `repository` in the config file")
        })?;
        if let Location::S3(location) = Location::parse(path)? {
            return Err(Error::config(format!(
                "this command works on a local repository, and {} is object storage",
                location.url()
            ))
            .with_hint("this command keeps its reports in a local repository: point it at one (backups can be copied off-site with [[mirror]] or `pgward copy`); every other command works on s3:// repositories"));
        }
        Ok(path)
    }

    /// Where the repository is: a directory or a bucket.
    pub fn repository_location(&self) -> Result<Location> {
        let path = self.repository.as_deref().ok_or_else(|| {
            Error::config("no repository configured")
                .with_hint("pass --repo DIR, set PGWARD_REPO or `repository` in the config file")
        })?;
        Location::parse(path)
    }

    /// Reads a config file; any unknown key or bad value is an error that
    /// names the file and line.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read config file {}: {e}", path.display()))
                .with_hint("check the path given by --config or PGWARD_CONFIG")
        })?;
        let mut config = Config::parse(&text)
            .map_err(|e| e.context(format!("config file {}", path.display())))?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1)
                .map(|line| format!("line {line}: "))
                .unwrap_or_default();
            Error::config(format!("{line}{}", e.message().trim().replace('\n', " ")))
                .with_hint("see the configuration reference in README.md")
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that serde cannot (ranges, combinations); run again
    /// after command-line overrides.
    pub fn validate(&self) -> Result<()> {
        if !(-7..=22).contains(&self.compression.level) || self.compression.level == 0 {
            return Err(Error::config(format!(
                "compression level {} is out of range",
                self.compression.level
            ))
            .with_hint(format!(
                "use a zstd level from 1 to 22, or -1 to -7 for zstd's fast levels ({} is the default)",
                default_level()
            )));
        }
        if self.validation.max_shrink_percent > 100 {
            return Err(Error::config(
                "validation.max-shrink-percent must be between 0 and 100",
            ));
        }
        for recipient in &self.encryption.recipients {
            recipient.pin()?;
        }
        if self.decryption.secret_key.is_some() && !self.decryption.command.is_empty() {
            return Err(Error::config(
                "decryption.secret-key and decryption.command are both set",
            )
            .with_hint("choose one: a secret key file pgward reads, or a command (gpg) that decrypts"));
        }
        for mirror in &self.mirrors {
            Location::parse(Path::new(&mirror.repository))
                .map_err(|e| e.context("[[mirror]] repository"))?;
        }
        for entry in &self.drill.accept {
            crate::findings::Acceptance::parse(entry)?;
        }
        crate::retention::RetentionPolicy::from_config(&self.policy)?;
        if let Some(keep) = &self.policy.quarantine_keep {
            parse_duration(keep)
                .map_err(|e| Error::config(format!("policy.quarantine-keep: {e}")))?;
        }
        for (key, value) in [
            ("policy.max-backup-age", &self.policy.max_backup_age),
            ("policy.max-drill-age", &self.policy.max_drill_age),
        ] {
            if let Some(value) = value {
                parse_duration(value).map_err(|e| Error::config(format!("{key}: {e}")))?;
            }
        }
        if let Some(path) = &self.metrics.textfile
            && path.file_name().is_none()
        {
            return Err(Error::config(format!(
                "metrics.textfile {} names no file",
                path.display()
            )));
        }
        if let Some(every) = &self.policy.drill_every
            && every != "always"
        {
            parse_duration(every).map_err(|e| {
                Error::config(format!("policy.drill-every: {e}"))
                    .with_hint("a duration such as \"7d\", or \"always\" to drill on every run")
            })?;
        }
        for (n, target) in self.notify.iter().enumerate() {
            let sources = [
                target.url.is_some(),
                target.url_file.is_some(),
                target.url_env.is_some(),
            ];
            if sources.iter().filter(|set| **set).count() != 1 {
                return Err(Error::config(format!(
                    "notify #{}: set exactly one of url, url-file and url-env",
                    n + 1
                ))
                .with_hint("url-file (a file only pgward's user can read) keeps the token out of the config"));
            }
            crate::notify::validate(target)
                .map_err(|e| Error::config(format!("notify #{}: {e}", n + 1)))?;
        }
        self.scope.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses() {
        let config = Config::parse(
            r#"
            repository = "/var/backups/pgward"
            [connection]
            dbname = "appdb"
            host = "/var/run/postgresql"
            [scope]
            schemas = ["public", "cutter_governance"]
            exclude-tables = ["public.audit_log"]
            [pg-dump]
            command-prefix = ["docker", "exec", "-i", "db"]
            [compression]
            level = 5
            [validation]
            min-size = "1 MiB"
            max-shrink-percent = 30
            "#,
        )
        .unwrap();
        assert_eq!(config.validation.min_size, 1 << 20);
        assert_eq!(config.scope.schemas, vec!["public", "cutter_governance"]);
        assert_eq!(config.pg_dump.command_prefix.len(), 4);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let err =
            Config::parse("repository = \"/x\"\n[scope]\nexclude-schema = [\"a\"]\n").unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Config);
        assert!(
            err.message()
                .starts_with("line 3: unknown field `exclude-schema`"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64 KiB").unwrap(), 65536);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
