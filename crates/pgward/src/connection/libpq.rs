//! How libpq reads its settings: conninfo strings, URIs, service files,
//! password files and its defaults, reproduced so that pgward's own
//! sessions and the pg_dump it starts read the same settings the same way.

use super::Env;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Debian's libpq default socket directory.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// libpq's default: the first of its socket directories that has a socket
/// for the port, else /var/run/postgresql (Debian's default).
pub(super) fn default_socket_dir(port: u16) -> String {
    for dir in [DEFAULT_SOCKET_DIR, "/tmp"] {
        if Path::new(dir).join(format!(".s.PGSQL.{port}")).exists() {
            return dir.to_string();
        }
    }
    DEFAULT_SOCKET_DIR.to_string()
}

/// The effective user's name and home directory from the user database.
pub(super) fn os_user() -> Option<(String, String)> {
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
pub(super) fn parse_dbname(text: &str) -> Result<BTreeMap<String, String>> {
    let params = if text.starts_with("postgresql://") || text.starts_with("postgres://") {
        parse_uri(text)?
    } else if text.contains('=') {
        parse_conninfo(text)?
    } else {
        BTreeMap::from([("dbname".to_string(), text.to_string())])
    };
    for key in params.keys() {
        super::check_key(key, "the connection string")?;
    }
    Ok(params)
}

pub(super) fn parse_conninfo(text: &str) -> Result<BTreeMap<String, String>> {
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

pub(super) fn percent_decode(text: &str) -> Result<String> {
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

pub(super) fn parse_uri(text: &str) -> Result<BTreeMap<String, String>> {
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
    // Several hosts, each with its own port or none: host=a,b port=p,q.
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for hostport in hostport.split(',') {
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
        hosts.push(percent_decode(&host)?);
        ports.push(port);
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        params.insert("host".into(), hosts.join(","));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        params.insert("port".into(), ports.join(","));
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

pub(super) fn read_password_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!("cannot read password file {}: {e}", path.display()))
            .with_hint("check connection.password-file")
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// A `[service]` section of pg_service.conf, as key/value pairs.
pub(super) fn read_service(name: &str, env: Env) -> Result<Vec<(String, String)>> {
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
            for (key, _) in &entries {
                super::check_key(key, &format!("service {name:?} in {}", file.display()))?;
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
pub(super) fn password_from_passfile(
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

pub(super) fn split_passfile_line(line: &str) -> Vec<String> {
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
