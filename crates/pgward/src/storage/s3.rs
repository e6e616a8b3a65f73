//! [`Storage`] on an S3-compatible bucket (AWS S3, MinIO, R2, B2, Wasabi,
//! Garage, Ceph RGW, ...), through Apache OpenDAL's S3 service: SigV4
//! signing, multipart uploads and conditional writes are the library's;
//! what pgward adds is the same never-replace discipline as on disk
//! (`If-None-Match: *` on every new object), CRC32C checksums on every part
//! (the service checks them on arrival), aborted uploads on any failure,
//! and credentials that are resolved here, once, so that an error can name
//! where they came from.
//!
//! OpenDAL is asynchronous; one small tokio runtime per storage drives it
//! and the calls here block on it. HTTPS goes through reqwest on the
//! project's one TLS stack (rustls with ring), with the system's roots.

use super::s3_uploads::{BucketRequests, bucket_url};
use super::{Object, OpenUpload, Opened, Storage, Upload, invalid_key, valid_key};
use crate::config::{S3Addressing, S3Config};
use crate::connection::Env;
use crate::error::{Error, Result};
use opendal::Operator;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Part size when `[s3] part-size` is unset. Measured (bench/copy.sh, a
/// 99 MiB artifact): pgward's peak RSS is about 15 MiB plus four parts
/// (OpenDAL's part being filled, two in flight, one being signed), 51 MiB
/// at 8 MiB parts and 83 MiB at 16 MiB, for the same speed on loopback.
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// S3's smallest part (but the last).
const MIN_PART_SIZE: u64 = 5 << 20;
/// Parts uploaded at the same time (see [`DEFAULT_PART_SIZE`] for what
/// that costs in memory).
pub const PARTS_IN_FLIGHT: usize = 2;

/// `s3://bucket/prefix`: a bucket and a key prefix (possibly empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`; `None` when `text` is not an s3 URL.
    pub fn parse(text: &str) -> Option<std::result::Result<S3Location, String>> {
        let rest = text.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() {
            return Some(Err(format!(
                "{text:?} names no bucket (s3://BUCKET/PREFIX)"
            )));
        }
        if !prefix.is_empty() && !valid_key(prefix) {
            return Some(Err(format!(
                "{text:?}: the prefix must be plain names separated by single slashes"
            )));
        }
        Some(Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }))
    }

    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// The environment variables that carry S3 credentials: pgward reads
/// them, and no program it starts (pg_dump, pg_restore, gpg) needs them.
const CREDENTIAL_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
];

/// Keeps the S3 credentials in the environment out of `command`'s.
pub fn withhold_credentials(command: &mut std::process::Command) {
    for variable in CREDENTIAL_VARIABLES {
        command.env_remove(variable);
    }
}

/// An access key pair and where it was found (for messages; never the
/// secret itself).
pub struct Credentials {
    pub access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The credentials, in this order: `[s3] credentials-file` (profile
/// `[s3] profile`, else AWS_PROFILE, else `default`); the environment's
/// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN); the
/// shared credentials file (AWS_SHARED_CREDENTIALS_FILE, else
/// ~/.aws/credentials). A literal secret in the config file or in argv is
/// not accepted.
pub fn resolve_credentials(config: &S3Config, env: Env) -> Result<Credentials> {
    let profile = config
        .profile
        .clone()
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".to_string());
    if let Some(file) = &config.credentials_file {
        return from_credentials_file(file, &profile, "[s3] credentials-file");
    }
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials {
            access_key_id: id,
            secret_access_key: Zeroizing::new(secret),
            session_token: env("AWS_SESSION_TOKEN").map(Zeroizing::new),
            source: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment".to_string(),
        });
    }
    let shared = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".aws/credentials")));
    if let Some(file) = shared.filter(|f| f.is_file()) {
        return from_credentials_file(&file, &profile, "the shared credentials file");
    }
    Err(Error::config("no S3 credentials found").with_hint(
        "set [s3] credentials-file (an AWS credentials file), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials",
    ))
}

/// Reads `[profile]`'s keys from an AWS credentials file (INI).
fn from_credentials_file(file: &Path, profile: &str, what: &str) -> Result<Credentials> {
    let source = format!("{what} {} (profile {profile})", file.display());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(Error::config(format!(
                "{what} {} holds a secret and is readable by others (mode {:o})",
                file.display(),
                mode & 0o777
            ))
            .with_hint(format!("chmod 600 {}", file.display())));
        }
    }
    let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
        Error::config(format!("cannot read {what} {}: {e}", file.display()))
            .with_hint("point [s3] credentials-file at a readable AWS credentials file")
    })?);
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_profile = name == profile || name.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim().to_string();
            match key.trim() {
                "aws_access_key_id" => id = Some(value),
                "aws_secret_access_key" => secret = Some(Zeroizing::new(value)),
                "aws_session_token" => token = Some(Zeroizing::new(value)),
                _ => {}
            }
        }
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: token,
            source,
        }),
        _ => Err(Error::config(format!(
            "{source} has no aws_access_key_id and aws_secret_access_key"
        ))
        .with_hint(
            "add both keys under the profile, or choose another with [s3] profile / AWS_PROFILE",
        )),
    }
}

/// A bucket (and prefix) as a [`Storage`].
#[derive(Clone)]
pub struct S3Storage {
    runtime: Arc<tokio::runtime::Runtime>,
    operator: Operator,
    location: S3Location,
    part_size: usize,
    /// Where the credentials came from, for access errors.
    credentials: String,
    /// Requests OpenDAL does not make (open uploads).
    requests: BucketRequests,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage")
            .field("location", &self.location.url())
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// A client for `location` with `[s3]` settings; nothing is sent yet.
    pub fn new(location: &S3Location, config: &S3Config, env: Env) -> Result<S3Storage> {
        let credentials = resolve_credentials(config, env)?;
        let part_size = match &config.part_size {
            Some(text) => crate::config::parse_size(text)
                .map_err(|e| Error::config(format!("[s3] part-size: {e}")))?,
            None => DEFAULT_PART_SIZE,
        };
        if !(MIN_PART_SIZE..=(1 << 30)).contains(&part_size) {
            return Err(
                Error::config(format!("[s3] part-size {part_size} is outside 5MiB..1GiB"))
                    .with_hint(
                        "S3 parts are at least 5 MiB; at 8MiB (the default) a copy holds about 15 MiB plus four parts",
                    ),
            );
        }
        let region = config
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = config.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL"));
        let mut builder = opendal::services::S3::default()
            .bucket(&location.bucket)
            .root(&format!("/{}", location.prefix))
            .region(&region)
            .access_key_id(&credentials.access_key_id)
            .secret_access_key(&credentials.secret_access_key)
            .checksum_algorithm("crc32c")
            // Only what pgward resolved above is used: no instance
            // metadata service, no second reading of files or variables.
            .disable_config_load()
            .disable_ec2_metadata();
        if let Some(token) = &credentials.session_token {
            builder = builder.session_token(token);
        }
        if let Some(endpoint) = &endpoint {
            builder = builder.endpoint(endpoint);
        }
        let addressing = config.addressing.unwrap_or(if endpoint.is_some() {
            S3Addressing::Path
        } else {
            S3Addressing::VirtualHosted
        });
        let virtual_hosted = addressing == S3Addressing::VirtualHosted;
        if virtual_hosted {
            builder = builder.enable_virtual_host_style();
        }
        if let Some(class) = &config.storage_class {
            builder = builder.default_storage_class(class);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pgward-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::repository(format!("cannot start the S3 client: {e}")))?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = {
            let _entered = runtime.enter();
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(Duration::from_secs(120))
                .build()
                .map_err(|e| Error::repository(format!("cannot start the S3 client: {e}")))?
        };
        let requests = BucketRequests {
            client: client.clone(),
            bucket_url: bucket_url(
                endpoint.as_deref(),
                &region,
                &location.bucket,
                virtual_hosted,
            ),
            root: if location.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", location.prefix)
            },
            signer: Arc::new(reqsign_aws_v4::RequestSigner::new("s3", &region)),
            credential: Arc::new(reqsign_aws_v4::Credential {
                access_key_id: credentials.access_key_id.clone(),
                secret_access_key: credentials.secret_access_key.to_string(),
                session_token: credentials.session_token.as_ref().map(|t| t.to_string()),
                expires_in: None,
            }),
            credential_source: credentials.source.clone(),
        };
        let transport = opendal::HttpTransporter::new(
            opendal_http_transport_reqwest::ReqwestTransport::new(client),
        );
        let operator = Operator::new(builder)
            .map_err(|e| Error::config(format!("[s3]: {}", one_line(&e))))?
            .with_context(opendal::OperationContext::new().with_http_transport(transport))
            // A dropped connection or a 5xx is retried (three times, from
            // half a second, doubling); a refusal is not.
            .layer(
                opendal::layers::RetryLayer::new()
                    .with_max_times(3)
                    .with_min_delay(Duration::from_millis(500))
                    .with_jitter(),
            );
        Ok(S3Storage {
            runtime: Arc::new(runtime),
            operator,
            location: location.clone(),
            part_size: part_size as usize,
            credentials: credentials.source,
            requests,
        })
    }

    /// The part size uploads use.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// Where the credentials came from.
    pub fn credential_source(&self) -> &str {
        &self.credentials
    }

    /// A streamed GET of `size` bytes.
    fn stream(&self, key: &str, size: u64) -> io::Result<Box<dyn Read + Send>> {
        let op = self.operator.clone();
        let stream = self
            .runtime
            .block_on(async move { op.reader(key).await?.into_bytes_stream(..).await })
            .map_err(|e| self.error("read", e))?;
        Ok(Box::new(S3Read {
            storage: self.clone(),
            stream,
            left: size,
            chunk: Vec::new(),
            taken: 0,
        }))
    }

    fn key(&self, key: &str) -> io::Result<String> {
        if valid_key(key) {
            Ok(key.to_string())
        } else {
            Err(invalid_key(key))
        }
    }

    fn error(&self, what: &str, e: opendal::Error) -> io::Error {
        to_io_error(what, &self.credentials, e)
    }

    fn put(&self, key: &str, bytes: &[u8], if_not_exists: bool) -> io::Result<()> {
        let key = self.key(key)?;
        let op = self.operator.clone();
        let body = bytes.to_vec();
        self.runtime
            .block_on(async move { op.write_with(&key, body).if_not_exists(if_not_exists).await })
            .map(|_| ())
            .map_err(|e| self.error("write", e))
    }
}

/// What an upload hands OpenDAL at a time (it gathers the parts itself:
/// a part-sized buffer here too would be one more part in memory).
const FEED: usize = 1 << 20;

/// How often [`Storage::read_versioned`] reads a record again that was
/// replaced between its HEAD and its GET.
const VERSIONED_READ_ROUNDS: usize = 10;

/// S3's most parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// S3's largest part.
const MAX_PART_SIZE: u64 = 5 << 30;

/// The configured part size, or a larger one (whole MiB) when an object
/// of `expected` bytes would otherwise need more than 10 000 parts.
fn part_size_for(configured: u64, expected: Option<u64>) -> io::Result<usize> {
    let Some(expected) = expected else {
        return Ok(configured as usize);
    };
    // Headroom: the count must hold even if the estimate is a little low.
    let needed = (expected + expected / 16)
        .div_ceil(MAX_PARTS)
        .div_ceil(1 << 20)
        << 20;
    let part = configured.max(needed);
    if part > MAX_PART_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{expected} bytes exceed what one S3 object can hold in 10 000 parts of 5 GiB"),
        ));
    }
    Ok(part as usize)
}

/// One line from an OpenDAL error: the S3 error code and HTTP status when
/// the service sent them, else the error's first line.
fn one_line(e: &opendal::Error) -> String {
    let text = e.to_string();
    let field = |name: &str| {
        text.split_once(&format!("{name}: \""))
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(value, _)| value.to_string())
            .filter(|v| !v.is_empty())
    };
    let status = text
        .split_once("status: ")
        .map(|(_, rest)| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|s| !s.is_empty());
    match (field("code"), status) {
        (Some(code), Some(status)) => match field("message") {
            Some(message) => format!("{code} (HTTP {status}): {message}"),
            None => format!("{code} (HTTP {status})"),
        },
        (Some(code), None) => code,
        // No answer from the service: what failed, without the request's
        // context (the URL and sizes are in the caller's message).
        _ => {
            let line = text.lines().next().unwrap_or_default();
            match (line.split_once(", context:"), line.rsplit_once("=> ")) {
                (Some((what, _)), Some((_, why))) => format!("{what}: {why}"),
                _ => line.to_string(),
            }
        }
    }
}

fn to_io_error(what: &str, credentials: &str, e: opendal::Error) -> io::Error {
    use opendal::ErrorKind as K;
    let detail = one_line(&e);
    let kind = match e.kind() {
        _ if detail.starts_with("NoSuchBucket") => io::ErrorKind::Other,
        K::NotFound => io::ErrorKind::NotFound,
        K::ConditionNotMatch | K::AlreadyExists => io::ErrorKind::AlreadyExists,
        K::PermissionDenied => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    let message = match kind {
        io::ErrorKind::PermissionDenied => {
            format!("{what} refused: {detail}; credentials from {credentials}")
        }
        _ if detail.starts_with("NoSuchBucket") => {
            format!("{what} failed: the bucket does not exist ({detail})")
        }
        _ => format!("{what} failed: {detail}"),
    };
    io::Error::new(kind, message)
}

impl Storage for S3Storage {
    fn location(&self) -> String {
        self.location.url()
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let key = self.key(key)?;
        let op = self.operator.clone();
        match self.runtime.block_on(async move { op.stat(&key).await }) {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                let error = self.error("stat", e);
                // A missing bucket is not a missing object.
                if error.kind() == io::ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
            Err(e) => Err(self.error("stat", e)),
        }
    }

    fn read_whole(&self, key: &str, limit: u64) -> io::Result<Vec<u8>> {
        let key = self.key(key)?;
        let size = self
            .size(&key)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such object"))?;
        if size > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {limit} bytes"),
            ));
        }
        let op = self.operator.clone();
        self.runtime
            .block_on(async move { op.read(&key).await })
            .map(|buffer| buffer.to_vec())
            .map_err(|e| self.error("read", e))
    }

    fn open_versioned(&self, key: &str) -> io::Result<Opened> {
        let key = self.key(key)?;
        let op = self.operator.clone();
        let meta = match self.runtime.block_on(async { op.stat(&key).await }) {
            Ok(meta) => meta,
            Err(e) => {
                let error = self.error("stat", e);
                return Err(match error.kind() {
                    io::ErrorKind::NotFound => {
                        io::Error::new(io::ErrorKind::NotFound, "no such object")
                    }
                    _ => error,
                });
            }
        };
        Ok(Opened {
            stream: self.stream(&key, meta.content_length())?,
            bytes: meta.content_length(),
            version: meta.etag().map(String::from),
        })
    }

    // The version is compared here, on a plain HEAD, and the GET that
    // follows is unconditional: services differ in how they honour
    // If-Match on reads (some refuse a correct one), and a restore must
    // not depend on it. A replacement in the instant between the two is
    // left to the archive's sha256, which the readers prove at the end.
    fn open_at_version(&self, key: &str, version: &str) -> io::Result<Box<dyn Read + Send>> {
        let key = self.key(key)?;
        let op = self.operator.clone();
        let meta = self
            .runtime
            .block_on(async { op.stat(&key).await })
            .map_err(|e| self.error("stat", e))?;
        if meta.etag() != Some(version) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the object was replaced since it was first read (it is no longer version {version})"
                ),
            ));
        }
        self.stream(&key, meta.content_length())
    }

    fn list(&self, dir: &str) -> io::Result<Vec<Object>> {
        let dir = format!("{}/", self.key(dir)?);
        let op = self.operator.clone();
        let path = dir.clone();
        let entries = self
            .runtime
            .block_on(async move { op.list(&path).await })
            .map_err(|e| self.error("list", e))?;
        Ok(entries
            .into_iter()
            .filter(|entry| entry.metadata().is_file())
            .filter_map(|entry| {
                let name = entry.path().strip_prefix(&dir)?.to_string();
                (!name.is_empty() && !name.contains('/')).then(|| Object {
                    name,
                    bytes: entry.metadata().content_length(),
                })
            })
            .collect())
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.put(key, bytes, true)
    }

    fn put_replacing(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.put(key, bytes, false)
    }

    fn upload(&self, key: &str, expected: Option<u64>) -> io::Result<Box<dyn Upload>> {
        let key = self.key(key)?;
        let op = self.operator.clone();
        let part = part_size_for(self.part_size as u64, expected)?;
        let writer = self
            .runtime
            .block_on(async move {
                op.writer_with(&key)
                    .chunk(part)
                    .concurrent(PARTS_IN_FLIGHT)
                    .if_not_exists(true)
                    .await
            })
            .map_err(|e| self.error("upload", e))?;
        Ok(Box::new(S3Upload {
            storage: self.clone(),
            writer: Some(writer),
            pending: Vec::with_capacity(FEED),
        }))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let key = self.key(key)?;
        let op = self.operator.clone();
        self.runtime
            .block_on(async move { op.delete(&key).await })
            .map_err(|e| self.error("delete", e))
    }

    fn read_versioned(&self, key: &str, limit: u64) -> io::Result<Option<(Vec<u8>, String)>> {
        let key = self.key(key)?;
        let op = self.operator.clone();
        // A record replaced between the HEAD and the GET (a lease renewed
        // by its holder just then) is read again, as it is now; a few
        // rounds, then the refusal is the answer.
        for _ in 0..VERSIONED_READ_ROUNDS {
            let stat = self.runtime.block_on(async { op.stat(&key).await });
            let meta = match stat {
                Ok(meta) => meta,
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                    let error = self.error("stat", e);
                    return match error.kind() {
                        io::ErrorKind::NotFound => Ok(None),
                        _ => Err(error),
                    };
                }
                Err(e) => return Err(self.error("stat", e)),
            };
            if meta.content_length() > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("larger than {limit} bytes"),
                ));
            }
            let version = meta
                .etag()
                .ok_or_else(|| io::Error::other("the service sent no ETag"))?
                .to_string();
            // The body read must be the version stated: a replacement in
            // between is refused rather than paired with the older tag.
            let read = self
                .runtime
                .block_on(async { op.read_with(&key).if_match(&version).await });
            match read {
                Ok(buffer) => return Ok(Some((buffer.to_vec(), version))),
                Err(e) if e.kind() == opendal::ErrorKind::ConditionNotMatch => continue,
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                    let error = self.error("read", e);
                    if error.kind() == io::ErrorKind::NotFound {
                        return Ok(None);
                    }
                    return Err(error);
                }
                Err(e) => return Err(self.error("read", e)),
            }
        }
        Err(io::Error::other(format!(
            "read failed: {key} was replaced {VERSIONED_READ_ROUNDS} times while it was read"
        )))
    }

    fn replace_if_version(&self, key: &str, bytes: &[u8], version: &str) -> io::Result<String> {
        let key = self.key(key)?;
        let op = self.operator.clone();
        let body = bytes.to_vec();
        let written = self
            .runtime
            .block_on(async { op.write_with(&key, body).if_match(version).await })
            .map_err(|e| self.error("replace", e))?;
        match written.etag() {
            Some(tag) => Ok(tag.to_string()),
            None => self
                .runtime
                .block_on(async { op.stat(&key).await })
                .map_err(|e| self.error("stat", e))?
                .etag()
                .map(String::from)
                .ok_or_else(|| io::Error::other("the service sent no ETag")),
        }
    }

    fn open_uploads(&self, prefix: &str) -> io::Result<Vec<OpenUpload>> {
        let requests = self.requests.clone();
        let prefix = prefix.to_string();
        self.runtime
            .block_on(async move { requests.list(&prefix).await })
    }

    fn abort_open_upload(&self, upload: &OpenUpload) -> io::Result<()> {
        self.key(&upload.key)?;
        let requests = self.requests.clone();
        let upload = upload.clone();
        self.runtime
            .block_on(async move { requests.abort(&upload).await })
    }

    fn delete_if_version(&self, key: &str, version: &str) -> io::Result<()> {
        let key = self.key(key)?;
        let op = self.operator.clone();
        self.runtime
            .block_on(async { op.delete_with(&key).if_match(version).await })
            .map_err(|e| self.error("delete", e))
    }
}

/// An object read as one streamed GET: the service sends while pgward
/// works (TCP's window is the read-ahead), and memory holds one chunk.
struct S3Read {
    storage: S3Storage,
    stream: opendal::FuturesBytesStream,
    /// Bytes still expected: a stream that ends before is an error.
    left: u64,
    chunk: Vec<u8>,
    taken: usize,
}

impl Read for S3Read {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use futures::StreamExt;
        while self.taken == self.chunk.len() {
            let next = self.storage.runtime.block_on(self.stream.next());
            match next {
                None if self.left == 0 => return Ok(0),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        super::StorageFailure(format!(
                            "the object ended {} bytes early",
                            self.left
                        )),
                    ));
                }
                Some(Err(e)) => {
                    let detail = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<opendal::Error>())
                        .map(one_line)
                        .unwrap_or_else(|| e.to_string());
                    return Err(io::Error::new(
                        e.kind(),
                        super::StorageFailure(format!("read failed: {detail}")),
                    ));
                }
                Some(Ok(bytes)) => {
                    if bytes.len() as u64 > self.left {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the object is longer than its size said",
                        ));
                    }
                    self.left -= bytes.len() as u64;
                    self.chunk = bytes.to_vec();
                    self.taken = 0;
                }
            }
        }
        let n = (self.chunk.len() - self.taken).min(buf.len());
        buf[..n].copy_from_slice(&self.chunk[self.taken..self.taken + n]);
        self.taken += n;
        Ok(n)
    }
}

/// A multipart upload fed one part at a time.
struct S3Upload {
    storage: S3Storage,
    /// `None` once finished or aborted.
    writer: Option<opendal::Writer>,
    /// Bytes gathered for the writer, which fills parts from them.
    pending: Vec<u8>,
}

impl S3Upload {
    fn send_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let part = std::mem::replace(&mut self.pending, Vec::with_capacity(FEED));
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| io::Error::other("the upload is over"))?;
        let result = self.storage.runtime.block_on(writer.write(part));
        result.map_err(|e| self.storage.error("upload", e))
    }

    fn abort_now(&mut self) -> io::Result<()> {
        match self.writer.take() {
            Some(mut writer) => self
                .storage
                .runtime
                .block_on(writer.abort())
                .map_err(|e| self.storage.error("abort upload", e)),
            None => Ok(()),
        }
    }
}

impl Write for S3Upload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = FEED - self.pending.len();
        let n = room.min(buf.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == FEED {
            self.send_pending()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload for S3Upload {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let finished = self.send_pending().and_then(|()| {
            let writer = self
                .writer
                .as_mut()
                .ok_or_else(|| io::Error::other("the upload is over"))?;
            let result = self.storage.runtime.block_on(writer.close());
            result
                .map(|_| ())
                .map_err(|e| self.storage.error("upload", e))
        });
        match finished {
            Ok(()) => {
                self.writer = None;
                Ok(())
            }
            // A refused completion (the key exists) leaves the upload
            // open on the service: abort it, so no parts stay billed.
            Err(e) => {
                let _ = self.abort_now();
                Err(e)
            }
        }
    }

    fn abort(mut self: Box<Self>) -> io::Result<()> {
        self.abort_now()
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        let _ = self.abort_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_that_ten_thousand_are_enough() {
        let mib = 1u64 << 20;
        assert_eq!(part_size_for(16 * mib, None).unwrap() as u64, 16 * mib);
        assert_eq!(
            part_size_for(16 * mib, Some(1 << 30)).unwrap() as u64,
            16 * mib
        );
        // 1 TiB: 16 MiB parts would need 65 536 of them.
        let part = part_size_for(16 * mib, Some(1 << 40)).unwrap() as u64;
        assert!(
            (1u64 << 40).div_ceil(part) <= 10_000 && part.is_multiple_of(mib),
            "{part}"
        );
        assert!(part_size_for(16 * mib, Some(60_000 * (1 << 30))).is_err());
    }

    #[test]
    fn locations_parse() {
        let l = S3Location::parse("s3://bk/a/b/").unwrap().unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bk", "a/b"));
        assert_eq!(l.url(), "s3://bk/a/b");
        assert_eq!(S3Location::parse("s3://bk").unwrap().unwrap().prefix, "");
        assert!(S3Location::parse("/var/backups").is_none());
        assert!(S3Location::parse("s3:///x").unwrap().is_err());
        assert!(S3Location::parse("s3://bk/a/../b").unwrap().is_err());
    }

    #[test]
    fn credentials_file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n\n[profile other]\naws_access_key_id=A2\naws_secret_access_key=secret-two\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let none = |_: &str| None;
        let open = S3Config {
            credentials_file: Some(file.clone()),
            ..S3Config::default()
        };
        let e = resolve_credentials(&open, &none).unwrap_err();
        assert!(
            e.message().contains("readable by others"),
            "{}",
            e.message()
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = S3Config {
            credentials_file: Some(file.clone()),
            ..S3Config::default()
        };
        let c = resolve_credentials(&config, &none).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("A1", "S1")
        );
        let other = S3Config {
            profile: Some("other".into()),
            ..config.clone()
        };
        let c = resolve_credentials(&other, &none).unwrap();
        assert_eq!(c.access_key_id, "A2");
        assert!(c.source.contains("profile other"), "{}", c.source);
        assert!(!format!("{c:?}").contains("secret-two"));
        let missing = S3Config {
            profile: Some("nope".into()),
            ..config
        };
        let e = resolve_credentials(&missing, &none).unwrap_err();
        assert!(e.message().contains("profile nope"), "{}", e.message());
    }
}
