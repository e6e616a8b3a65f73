//! The test harness: one throwaway PostgreSQL cluster per test binary, in a
//! temp dir, on a Unix socket only, run as the `postgres` OS user when the
//! tests run as root; each test makes its own databases, roles and
//! repository, so tests run in parallel. The cluster is stopped and removed
//! at process exit.
//!
//! Everything is real: initdb, postgres, pg_dump, psql. Fault injection is
//! done with small wrapper scripts around the real pg_dump, never by faking
//! the database.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Cluster {
    pub socket_dir: PathBuf,
    pub port: u16,
    /// For a TLS cluster: its certificates and keys.
    pub tls: Option<TlsFiles>,
}

/// A throwaway CA and what it signed, made with the `openssl` command: the
/// server's certificate (for `localhost` and 127.0.0.1), a client
/// certificate for [`CERT_ROLE`], and a second CA nobody trusts.
pub struct TlsFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// On the TLS cluster: the role that logs in with a client certificate,
/// and the one that logs in with a password (both superusers).
pub const CERT_ROLE: &str = "tls_cert_user";
pub const TLS_PASSWORD_ROLE: &str = "tls_pw_user";
pub const TLS_PASSWORD: &str = "tls pass w0rd";

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static SPARE: OnceLock<Cluster> = OnceLock::new();
static REGRESSION: OnceLock<Cluster> = OnceLock::new();
static TLS: OnceLock<Cluster> = OnceLock::new();
/// Server pid and directory of every cluster started, stopped at exit.
static CLEANUP: std::sync::Mutex<Vec<(u32, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// The role every test cluster has with password authentication
/// (scram-sha-256 over the socket), for the password tests.
pub const PASSWORD_ROLE: &str = "pw_backup";

pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| Cluster::start("", false))
}

/// A cluster that takes TCP connections on 127.0.0.1 over TLS only
/// (`hostssl` lines only, as managed services require): scram-sha-256 for
/// [`TLS_PASSWORD_ROLE`], client certificates for [`CERT_ROLE`].
pub fn tls_cluster() -> &'static Cluster {
    TLS.get_or_init(|| Cluster::start("-tls", true))
}

/// A second, independent cluster: a spare instance to restore and drill on.
pub fn spare_cluster() -> &'static Cluster {
    SPARE.get_or_init(|| Cluster::start("-spare", false))
}

/// A cluster of its own for PostgreSQL's regression suite, whose roles,
/// tablespaces and connections stay away from the other tests.
pub fn regression_cluster() -> &'static Cluster {
    REGRESSION.get_or_init(|| Cluster::start("-regression", false))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid/gid of the `postgres` OS user.
fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns static storage or null; fields copied at once.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "tests run as root need a `postgres` OS user (install postgresql)"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

fn find_server_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PGWARD_TEST_PGBIN") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin).expect(
        "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: run scripts/install-deps.sh or set PGWARD_TEST_PGBIN",
    )
}

extern "C" fn stop_cluster_at_exit() {
    let clusters = match CLEANUP.lock() {
        Ok(list) => list.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    for (pid, dir) in &clusters {
        // SIGQUIT: immediate shutdown, nothing to keep.
        unsafe {
            libc::kill(*pid as i32, libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        // Reap it (we are its parent); waitpid returns its pid once it exited.
        while Instant::now() < deadline
            && unsafe { libc::waitpid(*pid as i32, std::ptr::null_mut(), libc::WNOHANG) } == 0
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Cluster {
    fn start(suffix: &str, tls: bool) -> Cluster {
        let bin = find_server_bin();
        let dir = std::env::temp_dir().join(format!("pgward-test-{}{suffix}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("data");
        let socket_dir = dir.join("sock");
        std::fs::create_dir_all(&socket_dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Other test users (the unwritable-repository test runs as nobody)
        // must reach the socket.
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let as_server_user = |cmd: &mut Command| {
            if is_root() {
                let (uid, gid) = postgres_ids();
                cmd.uid(uid).gid(gid);
            }
        };
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid)).unwrap();
        }

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .env("TZ", "UTC")
            .current_dir(&dir);
        as_server_user(&mut initdb);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Password authentication for one role, trust for the rest.
        let hba = data.join("pg_hba.conf");
        let original = std::fs::read_to_string(&hba).unwrap();
        let tls_files = tls.then(|| make_tls_files(&dir.join("tls")));
        let hba_text = match &tls_files {
            // TCP over TLS only; the harness's own psql uses the socket.
            Some(_) => format!(
                "local all all trust\nhostssl all {CERT_ROLE} 127.0.0.1/32 cert\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
            ),
            None => format!("local all {PASSWORD_ROLE} scram-sha-256\n{original}"),
        };
        std::fs::write(&hba, hba_text).unwrap();
        let mut tcp = vec!["-c".to_string(), "listen_addresses=".to_string()];
        let port = match &tls_files {
            Some(files) => {
                let server_files = data.join("server-tls");
                std::fs::create_dir_all(&server_files).unwrap();
                for name in ["server.crt", "server.key", "ca.crt"] {
                    std::fs::copy(files.dir.join(name), server_files.join(name)).unwrap();
                    if is_root() {
                        let (uid, gid) = postgres_ids();
                        std::os::unix::fs::chown(server_files.join(name), Some(uid), Some(gid))
                            .unwrap();
                    }
                }
                if is_root() {
                    let (uid, gid) = postgres_ids();
                    std::os::unix::fs::chown(&server_files, Some(uid), Some(gid)).unwrap();
                }
                tcp = [
                    "listen_addresses=127.0.0.1".to_string(),
                    "ssl=on".to_string(),
                    format!(
                        "ssl_cert_file={}",
                        server_files.join("server.crt").display()
                    ),
                    format!("ssl_key_file={}", server_files.join("server.key").display()),
                    format!("ssl_ca_file={}", server_files.join("ca.crt").display()),
                ]
                .into_iter()
                .flat_map(|setting| ["-c".to_string(), setting])
                .collect();
                free_tcp_port()
            }
            None => 5432,
        };
        let log = std::fs::File::create(dir.join("postgres.log")).unwrap();
        let mut postgres = Command::new(bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&socket_dir)
            .args(["-p", &port.to_string(), "-c", "fsync=off"])
            .args(&tcp)
            .args([
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .current_dir(&dir)
            .process_group(0);
        as_server_user(&mut postgres);
        // Reaped with waitpid by stop_cluster_at_exit, not through `Child`.
        #[allow(clippy::zombie_processes)]
        let child = postgres.spawn().expect("start postgres");
        let cluster = Cluster {
            socket_dir,
            port,
            tls: tls_files,
        };
        let first = {
            let mut list = CLEANUP.lock().unwrap_or_else(|p| p.into_inner());
            list.push((child.id(), dir.clone()));
            list.len() == 1
        };
        if first {
            // SAFETY: registering a plain extern "C" function.
            unsafe {
                libc::atexit(stop_cluster_at_exit);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = cluster.psql_raw("postgres", "postgres", "SELECT 1");
            if ready.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.psql(
            "postgres",
            &format!("CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'Tr1cky pa$$ word'"),
        );
        if cluster.tls.is_some() {
            cluster.psql(
                "postgres",
                &format!(
                    "CREATE ROLE {CERT_ROLE} LOGIN SUPERUSER; \
                     CREATE ROLE {TLS_PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{TLS_PASSWORD}'"
                ),
            );
        }
        cluster
    }

    /// Environment that points libpq clients at this cluster.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", self.socket_dir.display().to_string()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", "postgres".to_string()),
        ]
    }

    fn psql_raw(&self, database: &str, user: &str, sql: &str) -> Output {
        Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                user,
                "-d",
                database,
                "-c",
                sql,
            ])
            .envs(self.env())
            .env_remove("PGPASSWORD")
            .env_remove("PGDATABASE")
            .output()
            .expect("run psql")
    }

    /// Runs SQL as the superuser and returns trimmed output; panics on error.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self.psql_raw(database, "postgres", sql);
        assert!(
            out.status.success(),
            "psql failed on {database}: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A fresh database with a unique name derived from `hint`.
    pub fn create_database(&self, hint: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!("{hint}_{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        name
    }
}

/// A temp dir for one test: repository, scripts, config files.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::Builder::new()
            .prefix("pgward-ws-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Workspace { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// Writes an executable script (a wrapper around a real tool).
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    pub fn file(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, body).unwrap();
        path
    }
}

/// The real pg_dump the wrappers call.
pub fn real_pg_dump() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v pg_dump"])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!path.is_empty(), "pg_dump is not on PATH");
    path
}

/// The result of one pgward run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    #[track_caller]
    pub fn assert_exit(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn assert_ok(&self) -> &Run {
        assert_eq!(
            self.code, 0,
            "pgward failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A `pgward` command pointed at the test cluster and a repository.
pub fn pgward(repo: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgward"));
    cmd.envs(cluster().env())
        .env("PGWARD_REPO", repo)
        .env_remove("PGPASSWORD")
        .env_remove("PGDATABASE")
        .env_remove("PGWARD_CONFIG")
        // No user configuration file of whoever runs the tests.
        .env("XDG_CONFIG_HOME", "/nonexistent/pgward-tests")
        .stdin(Stdio::null());
    cmd
}

pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run pgward");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `pgward --json backup --dbname DB ARGS...`
pub fn backup(repo: &Path, db: &str, args: &[&str]) -> Run {
    run(pgward(repo)
        .args(["--json", "backup", "--dbname", db])
        .args(args))
}

/// Every file under `dir` with its bytes, for "nothing was touched" checks.
/// The journal is left out: every run that proves or changes something
/// appends to it by design (its own tests check it).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "journal") {
                continue;
            }
            if path.is_dir() {
                files.extend(snapshot(&path));
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Loads a table with `rows` rows of ~100 bytes of poorly compressible text.
pub fn load_rows(db: &str, table: &str, rows: u32) {
    cluster().psql(
        db,
        &format!(
            "CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, body text); \
             INSERT INTO {table} SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) \
             FROM generate_series((SELECT coalesce(max(id), 0) + 1 FROM {table}), \
                                  (SELECT coalesce(max(id), 0) + {rows} FROM {table})) g"
        ),
    );
}

/// Starts `pgward --json backup --dbname DB --pg-dump WRAPPER` in the
/// background and returns once the wrapper has created `marker` (so the
/// run holds its lock and pg_dump is running).
pub fn spawn_backup_until(
    repo: &Path,
    db: &str,
    wrapper: &Path,
    marker: &Path,
) -> std::process::Child {
    let child = pgward(repo)
        .args(["--json", "backup", "--dbname", db, "--pg-dump"])
        .arg(wrapper)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the backup never reached {marker:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// `sha256sum FILE`: the stock tool's digest, independent of pgward's.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Stock `zstd ARGS -q -f -o OUTPUT INPUT` (`-d` to decompress).
pub fn zstd(args: &[&str], input: &Path, output: &Path) {
    let out = Command::new("zstd")
        .args(args)
        .args(["-q", "-f", "-o"])
        .arg(output)
        .arg(input)
        .output()
        .expect("run zstd");
    assert!(
        out.status.success(),
        "zstd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Recomputes a manifest's `manifest-digest` after a test edited it, as
/// someone who can write the repository could: what the digest cannot
/// catch then must be caught against the archive.
pub fn reseal(manifest: &mut serde_json::Value) {
    manifest["manifest-digest"] = pgward::repository::manifest::canonical_digest(manifest).into();
}

/// A TCP port nobody listens on right now.
fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `openssl ARGS` in `dir`; panics on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (install the openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost/127.0.0.1, a client
/// certificate for [`CERT_ROLE`] and an unrelated CA, in `dir`.
pub fn make_tls_files(dir: &Path) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let days = ["-days", "2"];
    for ca in ["ca", "other-ca"] {
        let subject = format!("/CN=pgward test {ca}");
        let mut args = vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        let key = format!("{ca}.key");
        let crt = format!("{ca}.crt");
        args.extend(["-keyout", &key, "-out", &crt]);
        args.extend(days);
        openssl(dir, &args);
    }
    let leaf = |name: &str, subject: &str, ext: &str| {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let extfile = format!("{name}.ext");
        std::fs::write(dir.join(&extfile), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &crt,
            ],
        );
        std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    leaf(
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    leaf(
        "client",
        &format!("/CN={CERT_ROLE}"),
        "extendedKeyUsage=clientAuth\n",
    );
    TlsFiles {
        dir: dir.to_path_buf(),
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

/// One request an [`HttpListener`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub body: String,
    /// What the listener's probe saw when the request arrived.
    pub seen: String,
}

/// How an [`HttpListener`] answers.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Ok,
    Status(u16),
    /// Read the request, then say nothing for this long.
    Hang(Duration),
}

/// A real HTTP listener on 127.0.0.1 that records every request (and,
/// through `probe`, what the world looked like when it arrived).
pub struct HttpListener {
    pub port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl HttpListener {
    pub fn start(
        answer: Answer,
        probe: impl Fn() -> String + Send + Sync + 'static,
    ) -> HttpListener {
        use std::io::{BufRead, BufReader, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = received.clone();
        let probe = std::sync::Arc::new(probe);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let record = record.clone();
                let probe = probe.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_string();
                    let target = parts.next().unwrap_or_default().to_string();
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    let _ = reader.read_exact(&mut body);
                    record.lock().unwrap().push(Received {
                        method,
                        target,
                        body: String::from_utf8_lossy(&body).into_owned(),
                        seen: probe(),
                    });
                    let mut stream = stream;
                    let status = match answer {
                        Answer::Ok => 200,
                        Answer::Status(code) => code,
                        Answer::Hang(d) => {
                            std::thread::sleep(d);
                            return;
                        }
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                });
            }
        });
        HttpListener { port, received }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The ids of the backups a `list --json` document lists, newest first.
pub fn listed_backup_ids(list: &serde_json::Value) -> Vec<String> {
    list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

/// The damaged files a `list --json` document names, with their causes.
pub fn damaged_files(list: &serde_json::Value) -> Vec<(String, String)> {
    list["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["file"].as_str().unwrap().to_string(),
                d["cause"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The row `id` of a `check --json` document's matrix; panics naming the
/// document when there is none.
pub fn check_row(report: &serde_json::Value, id: &str) -> serde_json::Value {
    report["matrix"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {id} row: {report}"))
}

/// Waits up to 20 s for `done` to hold (polling), or fails naming `what`.
pub fn wait_until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..800 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

/// The S3 access key pair the test server enforces (SigV4).
pub const S3_ACCESS_KEY: &str = "AKIAPGWARDTEST";
pub const S3_SECRET_KEY: &str = "pgward-test-secret-1";

/// A real S3-protocol server on 127.0.0.1 that checks SigV4 signatures
/// (tools/s3-test-server: s3s-fs, plus ListMultipartUploads and atomic
/// conditional writes), storing its objects as files under a temp dir.
pub struct S3Server {
    pub port: u16,
    pub data: tempfile::TempDir,
    child: Option<std::process::Child>,
    options: Vec<String>,
}

const S3_SERVER: &str = "pgward-s3-test-server";

/// The server binary: PGWARD_S3_TEST_SERVER, else on PATH, else cargo's
/// bin dir (scripts/install-deps.sh installs it there).
fn s3_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("PGWARD_S3_TEST_SERVER") {
        return PathBuf::from(path);
    }
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {S3_SERVER}")])
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !found.is_empty() {
        return PathBuf::from(found);
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let path = home.join("bin").join(S3_SERVER);
    assert!(
        path.is_file(),
        "{S3_SERVER} is not installed: run scripts/install-deps.sh (cargo install --path tools/s3-test-server)"
    );
    path
}

impl S3Server {
    /// Starts a server with one bucket, `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        S3Server::start_with(bucket, &[])
    }

    /// Starts a server with one bucket and the server's `options`.
    pub fn start_with(bucket: &str, options: &[&str]) -> S3Server {
        let data = tempfile::Builder::new()
            .prefix("pgward-s3-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(data.path().join(bucket)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = S3Server {
            port,
            data,
            child: None,
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        server.restart();
        server
    }

    /// Starts the server (again) on the same port and data.
    pub fn restart(&mut self) {
        let child = Command::new(s3_server_binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            // Two uploads per answer, so that listing them pages.
            .args(["--list-page", "2"])
            .args(&self.options)
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(self.data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the S3 test server");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "the S3 test server did not start listening on port {}",
            self.port
        );
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the server keeps object `key` of `bucket`.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.data.path().join(bucket).join(key)
    }

    /// Multipart uploads the server holds open (begun, neither completed
    /// nor aborted): the server keeps one `.upload-ID.json` file per upload.
    pub fn open_uploads(&self) -> Vec<String> {
        names_in(self.data.path())
            .into_iter()
            .filter(|n| n.starts_with(".upload-") && n.ends_with(".json"))
            .collect()
    }

    /// An AWS credentials file with the server's key pair (or `secret`).
    pub fn credentials_file(&self, ws: &Workspace, secret: &str) -> PathBuf {
        let path = ws.file(
            "s3-credentials",
            &format!(
                "[default]\naws_access_key_id = {S3_ACCESS_KEY}\naws_secret_access_key = {secret}\n"
            ),
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// A config file's `[s3]` section for this server.
    pub fn config_section(&self, credentials: &Path) -> String {
        format!(
            "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\ncredentials-file = \"{}\"\npart-size = \"5MiB\"\n",
            self.endpoint(),
            credentials.display()
        )
    }
}

/// The lock object a pgward run on `host` (pid 4242) would hold in a
/// bucket for `database`, its lease running until `expires_at`.
pub fn lock_record(database: &str, host: &str, expires_at: &str) -> String {
    serde_json::json!({
        "format": "pgward-lock",
        "database": database,
        "host": host,
        "pid": 4242,
        "token": "0123456789abcdef0123456789abcdef",
        "acquired-at": "2026-01-01T00:00:00Z",
        "expires-at": expires_at,
    })
    .to_string()
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of a server that forwards until `stall_after`
/// bytes have gone upstream, then holds every connection still (the
/// client blocks mid-request) until [`StallingProxy::cut`] drops them
/// all: a link or server that dies in the middle of an upload, at a byte
/// count the test chooses rather than at a moment it hopes for.
pub struct StallingProxy {
    pub port: u16,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallingProxy {
    pub fn start(upstream: u16, stall_after: u64) -> StallingProxy {
        use std::io::{Read as _, Write as _};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let forwarded = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let (count, stop) = (forwarded.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if stop.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (count, stop) = (count.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        while count.load(Ordering::SeqCst) >= stall_after {
                            if stop.load(Ordering::SeqCst) {
                                let _ = c_read.shutdown(std::net::Shutdown::Both);
                                let _ = s_write.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        let n = match c_read.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if s_write.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        count.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        StallingProxy {
            port,
            forwarded,
            cut,
        }
    }

    /// Waits until the proxy holds the connections still.
    pub fn wait_stalled(&self, stall_after: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.forwarded.load(Ordering::SeqCst) < stall_after {
            assert!(
                Instant::now() < deadline,
                "the upload never reached {stall_after} bytes"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Drops every connection, and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

/// A TCP proxy that forwards until `cut_after` bytes have come back from
/// the server, then drops every connection and refuses new ones: a
/// storage that stops delivering in the middle of a download.
pub struct CuttingProxy {
    pub port: u16,
}

impl CuttingProxy {
    pub fn start(upstream: u16, cut_after: u64) -> CuttingProxy {
        use std::io::{Read as _, Write as _};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let delivered = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                });
                let (delivered, cut) = (delivered.clone(), cut.clone());
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        let n = match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if cut.load(Ordering::SeqCst)
                            || delivered.fetch_add(n as u64, Ordering::SeqCst) + n as u64
                                > cut_after
                        {
                            cut.store(true, Ordering::SeqCst);
                            break;
                        }
                        if c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                    let _ = s_read.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy { port }
    }
}
