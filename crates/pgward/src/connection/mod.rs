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

pub mod libpq;
mod streaming;
pub mod tls;

pub use streaming::StreamingSession;

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
    /// A host name, an IP address or a Unix socket directory; several,
    /// comma-separated, as libpq takes them.
    pub host: String,
    /// The (first) port.
    pub port: u16,
    pub user: String,
    pub dbname: String,
    /// Every other libpq parameter set, by its libpq name (never the
    /// password): what pg_dump and pg_restore are given, and what
    /// pgward's own session honours.
    params: BTreeMap<String, String>,
    /// The TLS settings, resolved with libpq's defaults.
    pub tls: tls::TlsSettings,
    password: Option<Secret>,
    ignored_passfile: Option<(PathBuf, u32)>,
}

/// How pgward treats one of libpq's connection parameters.
enum Handling {
    /// Honoured by pgward's own session and given to pg_dump/pg_restore.
    Honoured,
    /// Given to pg_dump/pg_restore; pgward's own session has no use for it
    /// (GSSAPI settings: its session would fail with the server's error).
    ToolsOnly,
    /// Refused, with the reason and what to do instead.
    Refused(&'static str),
}

/// libpq 15's connection parameters, their environment variables, and
/// what pgward does with each. Anything else is refused, as libpq does.
const PARAMETERS: &[(&str, Option<&str>, Handling)] = &[
    ("host", Some("PGHOST"), Handling::Honoured),
    ("hostaddr", Some("PGHOSTADDR"), Handling::Honoured),
    ("port", Some("PGPORT"), Handling::Honoured),
    ("dbname", Some("PGDATABASE"), Handling::Honoured),
    ("user", Some("PGUSER"), Handling::Honoured),
    ("password", None, Handling::Honoured),
    ("passfile", Some("PGPASSFILE"), Handling::Honoured),
    ("service", None, Handling::Honoured),
    (
        "channel_binding",
        Some("PGCHANNELBINDING"),
        Handling::Honoured,
    ),
    (
        "connect_timeout",
        Some("PGCONNECT_TIMEOUT"),
        Handling::Honoured,
    ),
    ("options", Some("PGOPTIONS"), Handling::Honoured),
    ("application_name", Some("PGAPPNAME"), Handling::Honoured),
    ("fallback_application_name", None, Handling::Honoured),
    ("keepalives", None, Handling::Honoured),
    ("keepalives_idle", None, Handling::Honoured),
    ("keepalives_interval", None, Handling::Honoured),
    ("keepalives_count", None, Handling::Honoured),
    ("tcp_user_timeout", None, Handling::Honoured),
    (
        "target_session_attrs",
        Some("PGTARGETSESSIONATTRS"),
        Handling::Honoured,
    ),
    ("sslmode", Some("PGSSLMODE"), Handling::Honoured),
    ("requiressl", Some("PGREQUIRESSL"), Handling::Honoured),
    (
        "sslcompression",
        Some("PGSSLCOMPRESSION"),
        Handling::Honoured,
    ),
    ("sslcert", Some("PGSSLCERT"), Handling::Honoured),
    ("sslkey", Some("PGSSLKEY"), Handling::Honoured),
    ("sslrootcert", Some("PGSSLROOTCERT"), Handling::Honoured),
    ("sslcrl", Some("PGSSLCRL"), Handling::Honoured),
    ("sslcrldir", Some("PGSSLCRLDIR"), Handling::Honoured),
    ("sslsni", Some("PGSSLSNI"), Handling::Honoured),
    (
        "ssl_min_protocol_version",
        Some("PGSSLMINPROTOCOLVERSION"),
        Handling::Honoured,
    ),
    (
        "ssl_max_protocol_version",
        Some("PGSSLMAXPROTOCOLVERSION"),
        Handling::Honoured,
    ),
    ("gssencmode", Some("PGGSSENCMODE"), Handling::Honoured),
    ("krbsrvname", Some("PGKRBSRVNAME"), Handling::ToolsOnly),
    ("gsslib", Some("PGGSSLIB"), Handling::ToolsOnly),
    (
        "sslpassword",
        None,
        Handling::Refused(
            "a key passphrase would have to reach pg_dump's command line: decrypt the client key into a file only the backup user can read (openssl pkey -in KEY -out KEY.plain; chmod 600 KEY.plain) and set sslkey to it",
        ),
    ),
    (
        "client_encoding",
        Some("PGCLIENTENCODING"),
        Handling::Refused(
            "pgward dumps in the database's own encoding and compares restored data in it: remove client_encoding",
        ),
    ),
    (
        "replication",
        None,
        Handling::Refused(
            "a replication connection cannot run pg_dump's queries: remove replication",
        ),
    ),
    (
        "requirepeer",
        None,
        Handling::Refused(
            "pgward's own session cannot check a Unix socket's peer: remove requirepeer, or connect over TCP with sslmode=verify-full",
        ),
    ),
];

/// Parameters that are not passed on as they are: the password never
/// leaves pgward but by the environment, the passfile and service are read
/// here, application_name is pgward's own unless set.
const NOT_PASSED_ON: &[&str] = &[
    "host",
    "port",
    "user",
    "dbname",
    "password",
    "passfile",
    "service",
    "application_name",
    "fallback_application_name",
];

/// Whether `key` is a libpq parameter pgward takes; the error says why
/// not. `source` names where it was set.
pub(crate) fn check_key(key: &str, source: &str) -> Result<()> {
    match PARAMETERS.iter().find(|(name, _, _)| *name == key) {
        Some((_, _, Handling::Refused(why))) => Err(Error::config(format!(
            "connection parameter {key:?} ({source}) is not supported"
        ))
        .with_hint(*why)),
        Some(_) => Ok(()),
        None => Err(
            Error::config(format!("unknown connection parameter {key:?} in {source}")).with_hint(
                "libpq 15 does not know it either; see README, Connecting, for the parameters",
            ),
        ),
    }
}

/// Reads the environment; a parameter so tests can supply their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ConnectionTarget {
    pub fn resolve(config: &ConnectionConfig, env: Env) -> Result<ConnectionTarget> {
        Self::resolve_inheriting(config, None, env)
    }

    /// [`ConnectionTarget::resolve`] of a session of another role to the
    /// server `base` reaches (admin, restore): the settings that say how
    /// the server is verified come from `base` unless `config` sets them.
    pub fn resolve_inheriting(
        config: &ConnectionConfig,
        base: Option<&ConnectionTarget>,
        env: Env,
    ) -> Result<ConnectionTarget> {
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        if let Some(dbname) = &config.dbname {
            params = libpq::parse_dbname(dbname)?;
        }
        for (key, value) in &config.command_line {
            params.insert(key.to_string(), value.clone());
        }
        let mut fill = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                params.entry(key.to_string()).or_insert(value);
            }
        };
        fill("host", config.host.clone());
        fill("port", config.port.map(|p| p.to_string()));
        fill("user", config.user.clone());
        for (key, value) in config.libpq_parameters() {
            fill(key, Some(value));
        }
        if let Some(base) = base {
            for key in crate::config::INHERITED_TLS_PARAMETERS {
                fill(key, base.params.get(*key).cloned());
            }
        }
        if let Some(service) = params.get("service").cloned().or_else(|| env("PGSERVICE")) {
            for (key, value) in libpq::read_service(&service, env)? {
                params.entry(key).or_insert(value);
            }
        }
        for (key, var, handling) in PARAMETERS {
            let Some(var) = var else { continue };
            // A variable for a refused parameter is the environment's
            // business (pg_dump reads PGCLIENTENCODING itself, as ever).
            if matches!(handling, Handling::Refused(_)) {
                continue;
            }
            if let Some(value) = env(var) {
                params.entry(key.to_string()).or_insert(value);
            }
        }
        for key in params.keys() {
            check_key(key, "the connection settings")?;
        }

        let port = match params.get("port") {
            // The value is not echoed: in a mangled URI it may be part of a password.
            Some(p) => parse_ports(p)?.first().copied().unwrap_or(5432),
            None => 5432,
        };
        let host = match params.get("host").filter(|h| !h.is_empty()) {
            Some(h) => h.clone(),
            None if params.contains_key("hostaddr") => params["hostaddr"].clone(),
            None => libpq::default_socket_dir(port),
        };
        let user = match params.get("user") {
            Some(u) => u.clone(),
            None => libpq::os_user().map(|(name, _)| name).ok_or_else(|| {
                Error::config("no database user given and the OS user name is unknown")
                    .with_hint("set PGUSER or connection.user")
            })?,
        };
        let dbname = params
            .get("dbname")
            .cloned()
            .unwrap_or_else(|| user.clone());
        let home = env("HOME").or_else(|| libpq::os_user().map(|(_, home)| home));

        let mut ignored_passfile = None;
        let password = if let Some(p) = params.get("password") {
            Some(p.clone())
        } else if let Some(file) = &config.password_file {
            Some(libpq::read_password_file(file)?)
        } else if let Some(p) = env("PGPASSWORD") {
            Some(p)
        } else {
            let passfile = params
                .get("passfile")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| Path::new(h).join(".pgpass")));
            // libpq ignores a password file others can read, silently;
            // pgward says so (check WARNs, a failed login's hint names it).
            if let Some(file) = &passfile {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(file)
                    && meta.is_file()
                    && meta.permissions().mode() & 0o077 != 0
                {
                    ignored_passfile = Some((file.clone(), meta.permissions().mode() & 0o777));
                }
            }
            passfile.and_then(|f| {
                libpq::password_from_passfile(
                    &f,
                    host.split(',').next().unwrap_or(&host),
                    port,
                    &dbname,
                    &user,
                )
            })
        };
        let tls = tls::TlsSettings::resolve(&params, home.as_deref().map(Path::new), env)?;
        if params.get("gssencmode").map(String::as_str) == Some("require") {
            return Err(Error::config(
                "gssencmode=require: pgward's own session cannot use GSSAPI encryption",
            )
            .with_hint("use TLS (sslmode=verify-full) instead, or gssencmode=prefer"));
        }
        params.retain(|key, _| key != "password");

        Ok(ConnectionTarget {
            host,
            port,
            user,
            dbname,
            params,
            tls,
            password: password.map(Secret),
            ignored_passfile,
        })
    }

    /// A password file that was not read because group or others may
    /// read it (libpq's rule), with its mode.
    pub fn ignored_passfile(&self) -> Option<(&Path, u32)> {
        self.ignored_passfile
            .as_ref()
            .map(|(path, mode)| (path.as_path(), *mode))
    }

    /// The database the settings name, if they name one (libpq's default,
    /// the user name, is not naming one).
    pub fn named_database(&self) -> Option<&str> {
        self.params
            .contains_key("dbname")
            .then_some(self.dbname.as_str())
    }

    /// `user@host:port/dbname`, for messages and manifests (no secret).
    pub fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    /// The same target with another database (restore targets, the
    /// maintenance database).
    pub fn with_dbname(&self, dbname: &str) -> ConnectionTarget {
        let mut target = self.clone();
        target.dbname = dbname.to_string();
        target.params.insert("dbname".into(), dbname.to_string());
        target
    }

    /// A libpq conninfo string for child tools: everything but the
    /// password, so that pg_dump and pg_restore reach the server as
    /// pgward's own session does.
    pub fn conninfo(&self) -> String {
        let mut parts = vec![
            format!("host={}", conninfo_quote(&self.host)),
            format!(
                "port={}",
                self.params
                    .get("port")
                    .filter(|p| p.contains(','))
                    .map_or(self.port.to_string(), |p| conninfo_quote(p))
            ),
            format!("user={}", conninfo_quote(&self.user)),
            format!("dbname={}", conninfo_quote(&self.dbname)),
            match self.params.get("application_name") {
                Some(name) => format!("application_name={}", conninfo_quote(name)),
                None => "application_name=pgward".to_string(),
            },
        ];
        for (key, value) in &self.params {
            if NOT_PASSED_ON.contains(&key.as_str()) {
                continue;
            }
            // libpq 15 does not know sslrootcert=system: its tools get the
            // file that stands for it, and the mode it implies.
            let value = match (key.as_str(), &self.tls.system_roots) {
                ("sslrootcert", Some(file)) => file.display().to_string(),
                _ => value.clone(),
            };
            parts.push(format!("{key}={}", conninfo_quote(&value)));
        }
        if self.tls.system_roots.is_some() && !self.params.contains_key("sslmode") {
            parts.push("sslmode='verify-full'".to_string());
        }
        parts.join(" ")
    }

    /// [`ConnectionTarget::conninfo`] with server `options` (`-c name=value ...`)
    /// added after the configured ones, so that pgward's settings win.
    pub fn conninfo_with_options(&self, options: &str) -> String {
        let mut target = self.clone();
        let combined = match self.params.get("options") {
            Some(own) => format!("{own} {options}"),
            None => options.to_string(),
        };
        target.params.insert("options".into(), combined);
        target.conninfo()
    }

    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// Whether every host is a Unix socket directory: libpq never uses
    /// TLS there (the socket's permissions protect it), whatever sslmode.
    pub fn is_local_socket(&self) -> bool {
        !self.params.contains_key("hostaddr")
            && self
                .host
                .split(',')
                .all(|h| h.starts_with('/') || h.starts_with('@'))
    }

    /// Opens pgward's own session, with libpq's sslmode semantics.
    pub fn connect(&self) -> Result<postgres::Client> {
        self.connect_with(|config, tls| {
            let config = postgres::Config::from(config.clone());
            match tls {
                None => config.connect(postgres::NoTls),
                Some(tls) => config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)),
            }
        })
    }

    /// A session made by `open` (the sync or the async driver) from the
    /// driver's configuration and the TLS settings (None: no TLS), tried
    /// the way libpq's sslmode tries.
    fn connect_with<S>(
        &self,
        open: impl Fn(
            &tokio_postgres::Config,
            Option<rustls::ClientConfig>,
        ) -> std::result::Result<S, postgres::Error>,
    ) -> Result<S> {
        use postgres::config::SslMode as Wire;
        let config = self.session_config()?;
        let attempt = |mode: Wire| self.attempt(&config, mode, &open);
        if self.is_local_socket() {
            return attempt(Wire::Disable).map_err(|failure| self.connect_error(failure));
        }
        let result = match self.tls.mode {
            tls::SslMode::Disable => attempt(Wire::Disable),
            tls::SslMode::Allow => attempt(Wire::Disable).or_else(|plain| {
                if plain.server_refused() {
                    attempt(Wire::Require)
                } else {
                    Err(plain)
                }
            }),
            // libpq 15 retries without TLS after any failure of the TLS
            // attempt (a handshake, or a server that refuses TLS sessions
            // for this role), unless the settings could not be used at all.
            tls::SslMode::Prefer => attempt(Wire::Prefer).or_else(|over_tls| {
                if matches!(over_tls, Attempt::Setup(_)) {
                    Err(over_tls)
                } else {
                    attempt(Wire::Disable).map_err(|plain| over_tls.and_then(plain))
                }
            }),
            _ => attempt(Wire::Require),
        };
        result.map_err(|failure| self.connect_error(failure))
    }

    fn attempt<S>(
        &self,
        config: &tokio_postgres::Config,
        mode: postgres::config::SslMode,
        open: impl Fn(
            &tokio_postgres::Config,
            Option<rustls::ClientConfig>,
        ) -> std::result::Result<S, postgres::Error>,
    ) -> std::result::Result<S, Attempt> {
        let mut config = config.clone();
        config.ssl_mode(mode);
        let result = if mode == postgres::config::SslMode::Disable {
            open(&config, None)
        } else {
            let tls = self.tls.client_config().map_err(Attempt::Setup)?;
            open(&config, Some(tls))
        };
        result.map_err(|e| Attempt::Failed {
            server: e.as_db_error().map(|db| db.message().to_string()),
            chain: error_chain(&e),
            earlier: None,
        })
    }

    /// The driver's configuration for every parameter pgward's session
    /// honours.
    fn session_config(&self) -> Result<tokio_postgres::Config> {
        let mut config = tokio_postgres::Config::new();
        let hosts: Vec<&str> = self.host.split(',').collect();
        for host in &hosts {
            config.host(*host);
        }
        if let Some(addresses) = self.params.get("hostaddr") {
            let addresses: Vec<&str> = addresses.split(',').collect();
            if addresses.len() != hosts.len() {
                return Err(Error::config(format!(
                    "{} hostaddr values for {} hosts",
                    addresses.len(),
                    hosts.len()
                ))
                .with_hint("give one hostaddr per host, in the same order"));
            }
            for address in addresses {
                let ip = address.trim().parse().map_err(|_| {
                    Error::config(format!("invalid hostaddr {address:?}"))
                        .with_hint("hostaddr takes numeric IP addresses; put names in host")
                })?;
                config.hostaddr(ip);
            }
        }
        match self.params.get("port") {
            Some(ports) => {
                for port in parse_ports(ports)? {
                    config.port(port);
                }
            }
            None => {
                config.port(self.port);
            }
        }
        let seconds = |key: &str| -> Result<Option<std::time::Duration>> {
            self.params
                .get(key)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map(std::time::Duration::from_secs)
                        .map_err(|_| invalid_value(key, v, "a number of seconds"))
                })
                .transpose()
        };
        config
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(
                self.params
                    .get("application_name")
                    .map_or("pgward", String::as_str),
            )
            .connect_timeout(
                seconds("connect_timeout")?
                    .filter(|d| !d.is_zero())
                    .unwrap_or(std::time::Duration::from_secs(10)),
            );
        if let Some(options) = self.params.get("options") {
            config.options(options);
        }
        if let Some(on) = self.params.get("keepalives") {
            config.keepalives(on.trim() != "0");
        }
        if let Some(idle) = seconds("keepalives_idle")? {
            config.keepalives_idle(idle);
        }
        if let Some(interval) = seconds("keepalives_interval")? {
            config.keepalives_interval(interval);
        }
        if let Some(count) = self.params.get("keepalives_count") {
            config.keepalives_retries(
                count
                    .trim()
                    .parse()
                    .map_err(|_| invalid_value("keepalives_count", count, "a number"))?,
            );
        }
        if let Some(ms) = self.params.get("tcp_user_timeout") {
            let ms: u64 = ms
                .trim()
                .parse()
                .map_err(|_| invalid_value("tcp_user_timeout", ms, "milliseconds"))?;
            config.tcp_user_timeout(std::time::Duration::from_millis(ms));
        }
        if let Some(binding) = self.params.get("channel_binding") {
            use postgres::config::ChannelBinding;
            config.channel_binding(match binding.as_str() {
                "disable" => ChannelBinding::Disable,
                "prefer" => ChannelBinding::Prefer,
                "require" => ChannelBinding::Require,
                _ => {
                    return Err(invalid_value(
                        "channel_binding",
                        binding,
                        "disable, prefer or require",
                    ));
                }
            });
        }
        if let Some(attrs) = self.params.get("target_session_attrs") {
            use postgres::config::TargetSessionAttrs;
            config.target_session_attrs(match attrs.as_str() {
                "any" => TargetSessionAttrs::Any,
                "read-write" => TargetSessionAttrs::ReadWrite,
                "read-only" => TargetSessionAttrs::ReadOnly,
                "primary" | "standby" | "prefer-standby" => {
                    return Err(Error::config(format!(
                        "target_session_attrs={attrs} is not supported by pgward's own session"
                    ))
                    .with_hint("use read-write (a primary that takes writes) or read-only, or name the server you mean in host"));
                }
                _ => {
                    return Err(invalid_value(
                        "target_session_attrs",
                        attrs,
                        "any, read-write, read-only, primary, standby or prefer-standby",
                    ));
                }
            });
        }
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        Ok(config)
    }

    fn connect_error(&self, failure: Attempt) -> Error {
        let (server, chain, earlier) = match failure {
            Attempt::Setup(error) => return error,
            Attempt::Failed {
                server,
                chain,
                earlier,
            } => (server, chain, earlier),
        };
        let whole = match &earlier {
            Some(before) => format!("{before}; {chain}"),
            None => chain.clone(),
        };
        let host = self.host.split(',').next().unwrap_or(&self.host);
        if let Some((cause, hint)) = tls::explain_failure(&whole, host, &self.tls) {
            return Error::new(
                ErrorKind::Connection,
                format!("cannot connect to {}: {cause}", self.describe()),
            )
            .with_hint(hint);
        }
        let detail = match (&earlier, server) {
            (Some(before), Some(server)) => format!("over TLS: {before}; without TLS: {server}"),
            (None, Some(server)) => server,
            (_, None) => whole,
        };
        let hint = match self.ignored_passfile() {
            Some((file, mode)) if self.password.is_none() => format!(
                "the password file {} was ignored because group or others can read it (mode {mode:04o}): chmod 600 {}",
                file.display(),
                file.display()
            ),
            _ => "check --dbname / PGHOST, PGPORT, PGUSER, PGDATABASE and the password (PGPASSWORD, PGPASSFILE or connection.password-file)".to_string(),
        };
        Error::new(
            ErrorKind::Connection,
            format!("cannot connect to {}: {detail}", self.describe()),
        )
        .with_hint(hint)
    }
}

/// One failed attempt to connect (libpq's prefer and allow make two).
enum Attempt {
    /// The TLS settings could not be put together (a file, a key).
    Setup(Error),
    Failed {
        /// The server's own message, when the server answered.
        server: Option<String>,
        chain: String,
        /// The attempt before this one, when this is the second.
        earlier: Option<String>,
    },
}

impl Attempt {
    /// The server refused the session (pg_hba, authentication): libpq's
    /// allow then tries with TLS.
    fn server_refused(&self) -> bool {
        matches!(
            self,
            Attempt::Failed {
                server: Some(_),
                ..
            }
        )
    }

    /// This attempt's failure followed by `next`'s.
    fn and_then(self, next: Attempt) -> Attempt {
        match (self, next) {
            (
                Attempt::Failed { chain, .. },
                Attempt::Failed {
                    server,
                    chain: second,
                    ..
                },
            ) => Attempt::Failed {
                server,
                chain: second,
                earlier: Some(chain),
            },
            (_, next) => next,
        }
    }
}

fn parse_ports(text: &str) -> Result<Vec<u16>> {
    text.split(',')
        .map(|p| {
            p.trim().parse().map_err(|_| {
                Error::config("invalid port in the connection settings").with_hint(
                    "set a port number from 1 to 65535; in a URI, percent-encode / : @ in passwords",
                )
            })
        })
        .collect()
}

fn invalid_value(key: &str, value: &str, expected: &str) -> Error {
    Error::config(format!("invalid {key} value: {value:?}"))
        .with_hint(format!("expected {expected}"))
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

#[cfg(test)]
mod tests {
    use super::libpq::password_from_passfile;
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
    fn unknown_and_refused_parameters_are_refused() {
        let err = resolve(Some("host=x frobnicate=1"), &[]).unwrap_err();
        assert!(
            err.message()
                .contains("unknown connection parameter \"frobnicate\"")
        );
        let err = resolve(Some("host=x sslpassword=secret"), &[]).unwrap_err();
        assert!(err.message().contains("sslpassword") && !err.message().contains("secret\""));
        assert!(err.hint().unwrap_or_default().contains("sslkey"));
        let err = resolve(Some("host=x load_balance_hosts=random"), &[]).unwrap_err();
        assert!(err.message().contains("load_balance_hosts"));
    }

    #[test]
    fn the_libpq_vocabulary_reaches_the_tools() {
        let t = resolve(
            Some("host=db keepalives=1 keepalives_idle=30 options='-c statement_timeout=0' target_session_attrs=read-write sslmode=require"),
            &[("PGUSER", "u"), ("PGSSLCRL", "/nonexistent-crl"), ("PGCLIENTENCODING", "LATIN1")],
        )
        .unwrap();
        let conninfo = t.conninfo();
        for part in [
            "keepalives='1'",
            "keepalives_idle='30'",
            "options='-c statement_timeout=0'",
            "target_session_attrs='read-write'",
            "sslmode='require'",
            "sslcrl='/nonexistent-crl'",
        ] {
            assert!(conninfo.contains(part), "{part} in {conninfo}");
        }
        assert!(!conninfo.contains("LATIN1"), "{conninfo}");
        // pgward's own options come after the configured ones, and win.
        assert!(
            t.conninfo_with_options("-c datestyle=ISO")
                .contains("options='-c statement_timeout=0 -c datestyle=ISO'")
        );
        assert!(t.session_config().is_ok());
    }

    #[test]
    fn sslrootcert_system_means_verify_full_and_a_file_for_the_tools() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, "").unwrap();
        let bundle_text = bundle.to_str().unwrap();
        let t = resolve(
            Some("host=db.example sslrootcert=system"),
            &[("PGUSER", "u"), ("SSL_CERT_FILE", bundle_text)],
        )
        .unwrap();
        assert_eq!(t.tls.mode, tls::SslMode::VerifyFull);
        let conninfo = t.conninfo();
        assert!(
            conninfo.contains(&format!("sslrootcert='{bundle_text}'")),
            "{conninfo}"
        );
        assert!(conninfo.contains("sslmode='verify-full'"), "{conninfo}");
        let err = resolve(
            Some("host=db sslrootcert=system sslmode=require"),
            &[("PGUSER", "u"), ("SSL_CERT_FILE", bundle_text)],
        )
        .unwrap_err();
        assert!(
            err.message().contains("requires sslmode=verify-full"),
            "{}",
            err.message()
        );
        // verify-ca without any root certificate is refused before connecting.
        let err = resolve(
            Some("host=db sslmode=verify-ca"),
            &[("PGUSER", "u"), ("HOME", dir.path().to_str().unwrap())],
        )
        .unwrap_err();
        assert!(
            err.message().contains("needs a root certificate"),
            "{}",
            err.message()
        );
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
