//! Resolving where the database is the way libpq (and so pg_dump) would,
//! so that pgward's own catalog session and the pg_dump it starts reach the
//! same server, database and role.
//!
//! Precedence, highest first: the `dbname` conninfo/URI, the config file's
//! `[connection]` keys, the service file entry (PGSERVICE), the environment
//! (PGHOST, PGPORT, PGUSER, PGDATABASE), libpq's defaults. The password comes
//! from the conninfo, `password-file`, PGPASSWORD, then the passfile
//! (PGPASSFILE or ~/.pgpass). pg_dump receives the resolved parameters as a
//! conninfo *without* the password, and the password only in its
//! environment, so it never appears in a process listing.

use crate::config::ConnectionConfig;
use crate::error::{Error, ErrorKind, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A secret that never prints itself.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// The fully resolved connection target.
#[derive(Debug, Clone)]
pub struct ConnectionTarget {
    /// A host name, an IP address or a Unix socket directory.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub sslmode: Option<String>,
    pub connect_timeout: Option<u64>,
    password: Option<Secret>,
}

const KNOWN_KEYS: &[&str] = &[
    "host",
    "port",
    "user",
    "dbname",
    "password",
    "passfile",
    "sslmode",
    "connect_timeout",
    "service",
    "application_name",
];

/// Reads the environment; a parameter so tests can supply their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ConnectionTarget {
    pub fn resolve(config: &ConnectionConfig, env: Env) -> Result<ConnectionTarget> {
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        if let Some(dbname) = &config.dbname {
            params = parse_dbname(dbname)?;
        }
        let mut fill = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                params.entry(key.to_string()).or_insert(value);
            }
        };
        fill("host", config.host.clone());
        fill("port", config.port.map(|p| p.to_string()));
        fill("user", config.user.clone());
        if let Some(service) = params.get("service").cloned().or_else(|| env("PGSERVICE")) {
            for (key, value) in read_service(&service, env)? {
                params.entry(key).or_insert(value);
            }
        }
        for (key, var) in [
            ("host", "PGHOST"),
            ("port", "PGPORT"),
            ("user", "PGUSER"),
            ("dbname", "PGDATABASE"),
            ("sslmode", "PGSSLMODE"),
            ("connect_timeout", "PGCONNECT_TIMEOUT"),
            ("passfile", "PGPASSFILE"),
        ] {
            if let Some(value) = env(var) {
                params.entry(key.to_string()).or_insert(value);
            }
        }

        let port = match params.get("port") {
            // The value is not echoed: in a mangled URI it may be part of a password.
            Some(p) => p.parse().map_err(|_| {
                Error::config("invalid port in the connection settings").with_hint(
                    "set a port number from 1 to 65535; in a URI, percent-encode / : @ in passwords",
                )
            })?,
            None => 5432,
        };
        let host = match params.get("host") {
            Some(h) => h.clone(),
            None => default_socket_dir(port),
        };
        let user = match params.get("user") {
            Some(u) => u.clone(),
            None => os_user().map(|(name, _)| name).ok_or_else(|| {
                Error::config("no database user given and the OS user name is unknown")
                    .with_hint("set PGUSER or connection.user")
            })?,
        };
        let dbname = params
            .get("dbname")
            .cloned()
            .unwrap_or_else(|| user.clone());
        let connect_timeout = params.get("connect_timeout").and_then(|t| t.parse().ok());

        let password = if let Some(p) = params.get("password") {
            Some(p.clone())
        } else if let Some(file) = &config.password_file {
            Some(read_password_file(file)?)
        } else if let Some(p) = env("PGPASSWORD") {
            Some(p)
        } else {
            let passfile = params.get("passfile").map(PathBuf::from).or_else(|| {
                env("HOME")
                    .or_else(|| os_user().map(|(_, home)| home))
                    .map(|h| Path::new(&h).join(".pgpass"))
            });
            passfile.and_then(|f| password_from_passfile(&f, &host, port, &dbname, &user))
        };

        Ok(ConnectionTarget {
            host,
            port,
            user,
            dbname,
            sslmode: params.get("sslmode").cloned(),
            connect_timeout,
            password: password.map(Secret),
        })
    }

    /// `user@host:port/dbname`, for messages and manifests (no secret).
    pub fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    /// A libpq conninfo string for child tools: everything but the password.
    pub fn conninfo(&self) -> String {
        let mut parts = vec![
            format!("host={}", conninfo_quote(&self.host)),
            format!("port={}", self.port),
            format!("user={}", conninfo_quote(&self.user)),
            format!("dbname={}", conninfo_quote(&self.dbname)),
            "application_name=pgward".to_string(),
        ];
        if let Some(mode) = &self.sslmode {
            parts.push(format!("sslmode={}", conninfo_quote(mode)));
        }
        if let Some(t) = self.connect_timeout {
            parts.push(format!("connect_timeout={t}"));
        }
        parts.join(" ")
    }

    /// [`ConnectionTarget::conninfo`] with server `options` (`-c name=value ...`).
    pub fn conninfo_with_options(&self, options: &str) -> String {
        format!("{} options={}", self.conninfo(), conninfo_quote(options))
    }

    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// Opens pgward's own session.
    pub fn connect(&self) -> Result<postgres::Client> {
        if matches!(
            self.sslmode.as_deref(),
            Some("require" | "verify-ca" | "verify-full")
        ) {
            return Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "sslmode={} is not supported yet by pgward's own connection",
                    self.sslmode.as_deref().unwrap_or_default()
                ),
            )
            .with_hint(
                "connect over a Unix socket or a trusted network with sslmode=prefer or disable",
            ));
        }
        let mut config = postgres::Config::new();
        for host in self.host.split(',') {
            config.host(host);
        }
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("pgward")
            .connect_timeout(std::time::Duration::from_secs(
                self.connect_timeout.unwrap_or(10),
            ));
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        config.connect(postgres::NoTls).map_err(|e| {
            let detail = e
                .as_db_error()
                .map(|db| db.message().to_string())
                .unwrap_or_else(|| error_chain(&e));
            Error::new(
                ErrorKind::Connection,
                format!("cannot connect to {}: {detail}", self.describe()),
            )
            .with_hint("check --dbname / PGHOST, PGPORT, PGUSER, PGDATABASE and the password (PGPASSWORD, PGPASSFILE or connection.password-file)")
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Debian's libpq default socket directory.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// libpq's default: the first of its socket directories that has a socket
/// for the port, else /var/run/postgresql (Debian's default).
fn default_socket_dir(port: u16) -> String {
    for dir in [DEFAULT_SOCKET_DIR, "/tmp"] {
        if Path::new(dir).join(format!(".s.PGSQL.{port}")).exists() {
            return dir.to_string();
        }
    }
    DEFAULT_SOCKET_DIR.to_string()
}

/// The effective user's name and home directory from the user database.
fn os_user() -> Option<(String, String)> {
    // SAFETY: getpwuid returns a pointer to static storage or null; both
    // strings are copied out before any other call could overwrite it.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned();
        let home = std::ffi::CStr::from_ptr((*pw).pw_dir)
            .to_string_lossy()
            .into_owned();
        Some((name, home))
    }
}

/// A `dbname` value: a `postgresql://` URI, a `key=value` conninfo, or a
/// plain database name.
fn parse_dbname(text: &str) -> Result<BTreeMap<String, String>> {
    let params = if text.starts_with("postgresql://") || text.starts_with("postgres://") {
        parse_uri(text)?
    } else if text.contains('=') {
        parse_conninfo(text)?
    } else {
        BTreeMap::from([("dbname".to_string(), text.to_string())])
    };
    if let Some(key) = params.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(
            Error::config(format!("unsupported connection parameter {key:?}"))
                .with_hint(format!("pgward understands: {}", KNOWN_KEYS.join(", "))),
        );
    }
    Ok(params)
}

fn parse_conninfo(text: &str) -> Result<BTreeMap<String, String>> {
    let invalid = || {
        Error::config("invalid connection string").with_hint(
            "write key=value pairs separated by spaces, quoting values with single quotes",
        )
    };
    let mut params = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err(invalid());
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next().ok_or_else(invalid)? {
                    '\\' => value.push(chars.next().ok_or_else(invalid)?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.push(chars.next().ok_or_else(invalid)?);
                } else {
                    value.push(c);
                }
            }
        }
        params.insert(key, value);
    }
}

fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::config("invalid percent-encoding in connection URI"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::config("connection URI is not valid UTF-8"))
}

fn parse_uri(text: &str) -> Result<BTreeMap<String, String>> {
    let rest = text.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut params = BTreeMap::new();
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            if !user.is_empty() {
                params.insert("user".into(), percent_decode(user)?);
            }
            if !password.is_empty() {
                params.insert("password".into(), percent_decode(password)?);
            }
            hostport
        }
        None => authority,
    };
    if hostport.contains(',') {
        return Err(
            Error::config("connection URIs with several hosts are not supported")
                .with_hint("name one host; pgward and pg_dump must reach the same server"),
        );
    }
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| Error::config("invalid IPv6 host in connection URI"))?;
        (
            host.to_string(),
            after.strip_prefix(':').unwrap_or("").to_string(),
        )
    } else {
        let (h, p) = hostport.rsplit_once(':').unwrap_or((hostport, ""));
        (h.to_string(), p.to_string())
    };
    if !host.is_empty() {
        params.insert("host".into(), percent_decode(&host)?);
    }
    if !port.is_empty() {
        params.insert("port".into(), port);
    }
    if !path.is_empty() {
        params.insert("dbname".into(), percent_decode(path)?);
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(percent_decode(k)?, percent_decode(v)?);
    }
    Ok(params)
}

fn read_password_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!("cannot read password file {}: {e}", path.display()))
            .with_hint("check connection.password-file")
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// A `[service]` section of pg_service.conf, as key/value pairs.
fn read_service(name: &str, env: Env) -> Result<Vec<(String, String)>> {
    let mut candidates = Vec::new();
    if let Some(file) = env("PGSERVICEFILE") {
        candidates.push(PathBuf::from(file));
    } else if let Some(home) = env("HOME") {
        candidates.push(Path::new(&home).join(".pg_service.conf"));
    }
    candidates.push(
        env("PGSYSCONFDIR")
            .map(|d| Path::new(&d).join("pg_service.conf"))
            .unwrap_or_else(|| PathBuf::from("/etc/postgresql-common/pg_service.conf")),
    );
    for file in candidates {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let mut in_section = false;
        let mut found = None::<Vec<(String, String)>>;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                in_section = section == name;
                if in_section {
                    found.get_or_insert_with(Vec::new);
                }
            } else if in_section && let Some((k, v)) = line.split_once('=') {
                found
                    .get_or_insert_with(Vec::new)
                    .push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        if let Some(entries) = found {
            if let Some((key, _)) = entries
                .iter()
                .find(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
            {
                return Err(Error::config(format!(
                    "service {name:?} in {} sets {key:?}, which pgward does not support",
                    file.display()
                ))
                .with_hint(format!("pgward understands: {}", KNOWN_KEYS.join(", "))));
            }
            return Ok(entries);
        }
    }
    Err(
        Error::config(format!("service {name:?} not found in any service file"))
            .with_hint("check PGSERVICE and PGSERVICEFILE (or ~/.pg_service.conf)"),
    )
}

/// The password for this target from a libpq passfile, honouring `*`
/// wildcards and `\` escapes; ignored when readable by group or others, as
/// libpq does.
fn password_from_passfile(
    path: &Path,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    // libpq matches its own default socket directory as "localhost" and any
    // other socket directory literally.
    let host = if host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        host
    };
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_passfile_line(line);
        if fields.len() != 5 {
            continue;
        }
        let matches = |field: &str, value: &str| field == "*" || field == value;
        if matches(&fields[0], host)
            && matches(&fields[1], &port)
            && matches(&fields[2], dbname)
            && matches(&fields[3], user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().unwrap().push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            other => fields.last_mut().unwrap().push(other),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(dbname: Option<&str>, vars: &[(&str, &str)]) -> Result<ConnectionTarget> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = ConnectionConfig {
            dbname: dbname.map(String::from),
            ..ConnectionConfig::default()
        };
        ConnectionTarget::resolve(&config, &|name| vars.get(name).cloned())
    }

    #[test]
    fn conninfo_beats_environment() {
        let t = resolve(
            Some("host=db port=5433 dbname='my db'"),
            &[("PGHOST", "other"), ("PGUSER", "backup")],
        )
        .unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_str(), t.dbname.as_str()),
            ("db", 5433, "backup", "my db")
        );
        assert_eq!(
            t.conninfo(),
            "host='db' port=5433 user='backup' dbname='my db' application_name=pgward"
        );
    }

    #[test]
    fn uri_with_password_never_reaches_the_conninfo() {
        let t = resolve(
            Some("postgresql://app:s%40cret@[::1]:6000/prod?sslmode=disable"),
            &[],
        )
        .unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.port, 6000);
        assert_eq!(t.password().unwrap().expose(), "s@cret");
        assert!(!t.conninfo().contains("s@cret"));
        assert!(!format!("{t:?}").contains("s@cret"));
    }

    #[test]
    fn plain_name_and_defaults() {
        let t = resolve(Some("appdb"), &[("PGUSER", "u"), ("PGPASSWORD", "pw")]).unwrap();
        assert_eq!(t.dbname, "appdb");
        assert_eq!(t.password().unwrap().expose(), "pw");
        let t = resolve(None, &[("PGUSER", "u")]).unwrap();
        assert_eq!(t.dbname, "u", "dbname defaults to the user name");
    }

    #[test]
    fn unknown_parameters_are_refused() {
        let err = resolve(Some("host=x sslrootcert=/a"), &[]).unwrap_err();
        assert!(err.message().contains("sslrootcert"));
    }

    #[test]
    fn passfile_matching() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            "other:*:*:*:no\nlocalhost:5432:app:bob:pa\\:ss\n*:*:*:*:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            password_from_passfile(&file, "/var/run/postgresql", 5432, "app", "bob").as_deref(),
            Some("pa:ss")
        );
        assert_eq!(
            password_from_passfile(&file, "/run/other", 5432, "app", "bob").as_deref(),
            Some("fallback"),
            "other socket directories match literally, as in libpq"
        );
        assert_eq!(
            password_from_passfile(&file, "db", 5432, "app", "bob").as_deref(),
            Some("fallback")
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            password_from_passfile(&file, "db", 5432, "app", "bob"),
            None
        );
    }

    #[test]
    fn service_file_entries_fill_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services");
        std::fs::write(&file, "[prod]\nhost=pg.internal\nport=6432\ndbname=app\n").unwrap();
        let file = file.to_str().unwrap();
        let t = resolve(
            None,
            &[
                ("PGSERVICE", "prod"),
                ("PGSERVICEFILE", file),
                ("PGUSER", "u"),
                ("PGPORT", "1"),
            ],
        )
        .unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.dbname.as_str()),
            ("pg.internal", 6432, "app")
        );
    }
}
