//! A server that accepts only TLS (`hostssl` lines only, as managed
//! services require), reached the way psql and pg_dump reach it: every
//! sslmode, verified chains and host names, client certificates, a service
//! file shared with psql. pgward's own sessions and the pg_dump and
//! pg_restore it starts must both get through: the server takes nothing
//! else over TCP.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn files() -> &'static TlsFiles {
    tls_cluster().tls.as_ref().unwrap()
}

/// A database on the TLS cluster with a table of rows in it.
fn tls_database(hint: &str) -> String {
    let c = tls_cluster();
    let db = c.create_database(hint);
    c.psql(
        &db,
        "CREATE TABLE items AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 500) g; \
         ALTER TABLE items ADD PRIMARY KEY (id)",
    );
    db
}

/// A conninfo for the password role over TCP to `host`, with `extra`.
fn conninfo(host: &str, db: &str, extra: &str) -> String {
    format!(
        "host={host} port={} user={TLS_PASSWORD_ROLE} dbname={db} {extra}",
        tls_cluster().port
    )
}

/// `pgward` with the TLS role's password and a HOME without
/// ~/.postgresql, so that only what a test sets is used.
fn tls_pgward(ws: &Workspace) -> std::process::Command {
    let home = ws.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = pgward(&ws.repo());
    cmd.env("PGPASSWORD", TLS_PASSWORD)
        .env("HOME", &home)
        .env_remove("SSL_CERT_FILE");
    cmd
}

fn backup_over(ws: &Workspace, conninfo: &str) -> Run {
    run(tls_pgward(ws).args(["--json", "backup", "--dbname", conninfo]))
}

#[test]
fn every_sslmode_reaches_a_tls_only_server_for_pgward_and_its_tools() {
    let ws = Workspace::new();
    let db = tls_database("tls_modes");
    let ca = files().ca.display().to_string();
    for extra in [
        String::new(),
        "sslmode=prefer".to_string(),
        "sslmode=allow".to_string(),
        "sslmode=require".to_string(),
        format!("sslmode=verify-ca sslrootcert={ca}"),
        format!("sslmode=verify-full sslrootcert={ca}"),
    ] {
        let res = backup_over(&ws, &conninfo("localhost", &db, &extra));
        res.assert_ok();
        assert_eq!(res.json()["manifest"]["tables"][0]["rows"], 500, "{extra}");
    }
    // sslrootcert=system: the OS trust store (here SSL_CERT_FILE, the test
    // CA), verify-full implied; pg_dump 15 gets the file in its place.
    let res = run(tls_pgward(&ws).env("SSL_CERT_FILE", &files().ca).args([
        "--json",
        "backup",
        "--dbname",
        &conninfo("localhost", &db, "sslrootcert=system"),
    ]));
    res.assert_ok();

    // The readiness check, a drill and a restore over verify-full, from a
    // configuration file that uses libpq's names.
    let config = ws.file(
        "pgward.toml",
        &format!(
            "[connection]\ndbname = \"{}\"\nsslmode = \"verify-full\"\nsslrootcert = \"{ca}\"\n",
            conninfo("localhost", &db, "")
        ),
    );
    let with_config = |args: &[&str]| run(tls_pgward(&ws).arg("--config").arg(&config).args(args));
    let check = with_config(&["--json", "check"]);
    check.assert_ok();
    let connection = check_row(&check.json(), "connection");
    let evidence = connection["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("TLSv1.") && evidence.contains("host name verified"),
        "{evidence}"
    );
    let drill = with_config(&["--json", "drill", "latest"]);
    drill.assert_ok();
    assert_eq!(
        drill.json()["record"]["verdict"],
        "pass",
        "{}",
        drill.stdout
    );
    let target = format!("{db}_restored");
    with_config(&["--json", "restore", "latest", "--to", &target]).assert_ok();
    assert_eq!(
        tls_cluster().psql(&target, "SELECT count(*) FROM items"),
        "500"
    );

    // Without TLS the server takes nothing, and pgward says why.
    let res = backup_over(&ws, &conninfo("localhost", &db, "sslmode=disable"));
    res.assert_exit(1);
    assert!(
        res.stderr.contains("accepts only TLS") && res.stderr.contains("sslmode=require"),
        "{}",
        res.stderr
    );
}

#[test]
fn tls_failures_are_named_with_their_fix() {
    let ws = Workspace::new();
    let db = tls_database("tls_fail");
    let ca = files().ca.display().to_string();
    let other = files().other_ca.display().to_string();
    let before = names_in(&ws.repo());
    for (what, host, extra, code, message) in [
        (
            "a host name the certificate does not carry",
            "wrong.example",
            format!("hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"),
            1,
            "not valid for the host name \"wrong.example\"",
        ),
        (
            "a CA that did not sign it",
            "localhost",
            format!("sslmode=verify-ca sslrootcert={other}"),
            1,
            "not signed by a CA in sslrootcert",
        ),
        (
            "verify-full with nothing to verify with",
            "localhost",
            "sslmode=verify-full".to_string(),
            2,
            "needs a root certificate",
        ),
        (
            "a root file that is not there",
            "localhost",
            "sslmode=require sslrootcert=/nonexistent/root.crt".to_string(),
            2,
            "/nonexistent/root.crt does not exist",
        ),
        (
            "a parameter libpq does not know",
            "localhost",
            "sslmode=require sslfrobnicate=1".to_string(),
            2,
            "unknown connection parameter \"sslfrobnicate\"",
        ),
    ] {
        let res = backup_over(&ws, &conninfo(host, &db, &extra));
        assert_eq!(res.code, code, "{what}: {}", res.stderr);
        assert!(res.stderr.contains(message), "{what}: {}", res.stderr);
        assert!(res.stderr.contains("hint:"), "{what}: {}", res.stderr);
        assert_eq!(
            res.stderr.trim().lines().count(),
            1,
            "{what}: one line: {}",
            res.stderr
        );
    }
    // Nothing that looks like a backup was left.
    let backups = ws.repo().join("backups");
    assert!(
        !backups.exists() || names_in(&backups).is_empty(),
        "{before:?}"
    );
}

/// The client key at `mode`, in a copy of its own.
fn key_with_mode(ws: &Workspace, mode: u32) -> PathBuf {
    let key = ws.path(&format!("client-{mode:o}.key"));
    std::fs::copy(&files().client_key, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
    key
}

fn cert_conninfo(db: &str, cert: &Path, key: &Path) -> String {
    format!(
        "host=localhost port={} user={CERT_ROLE} dbname={db} sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        tls_cluster().port,
        files().ca.display(),
        cert.display(),
        key.display()
    )
}

#[test]
fn client_certificate_login_works_and_a_bad_key_is_named() {
    let ws = Workspace::new();
    let db = tls_database("tls_cert");
    let key = key_with_mode(&ws, 0o600);
    let good = cert_conninfo(&db, &files().client_cert, &key);
    // No password anywhere: the certificate is the login.
    let res = run(tls_pgward(&ws)
        .env_remove("PGPASSWORD")
        .args(["--json", "backup", "--dbname", &good]));
    res.assert_ok();
    let res = run(tls_pgward(&ws)
        .env_remove("PGPASSWORD")
        .args(["--json", "check", "--dbname", &good]));
    res.assert_ok();

    let open_key = key_with_mode(&ws, 0o644);
    let res = backup_over(&ws, &cert_conninfo(&db, &files().client_cert, &open_key));
    res.assert_exit(2);
    assert!(
        // libpq's rule: 0600, or 0640 when root owns the key.
        res.stderr.contains("group or world access") && res.stderr.contains("chmod 6"),
        "{}",
        res.stderr
    );
    let res = backup_over(
        &ws,
        &cert_conninfo(
            &db,
            &files().client_cert,
            Path::new("/nonexistent/client.key"),
        ),
    );
    res.assert_exit(2);
    assert!(
        res.stderr.contains("not its private key file"),
        "{}",
        res.stderr
    );
    // Without a certificate the server refuses, and pgward says what it wants.
    let res = backup_over(
        &ws,
        &format!(
            "host=localhost port={} user={CERT_ROLE} dbname={db} sslmode=verify-full sslrootcert={}",
            tls_cluster().port,
            files().ca.display()
        ),
    );
    res.assert_exit(1);
    assert!(res.stderr.contains("client certificate"), "{}", res.stderr);
}

#[test]
fn a_service_file_shared_with_psql_works_for_pgward_and_pg_dump() {
    let ws = Workspace::new();
    let db = tls_database("tls_service");
    let services = ws.file(
        "pg_service.conf",
        &format!(
            "# shared with psql\n[tlsprod]\nhost=localhost\nport={}\nuser={TLS_PASSWORD_ROLE}\ndbname={db}\n\
             sslmode=verify-full\nsslrootcert={}\nkeepalives=1\nkeepalives_idle=30\n\
             options=-c statement_timeout=0\ntarget_session_attrs=read-write\nconnect_timeout=10\n\
             application_name=nightly-backup\n",
            tls_cluster().port,
            files().ca.display()
        ),
    );
    // psql takes it ...
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .env("PGSERVICEFILE", &services)
        .env("PGSERVICE", "tlsprod")
        .env("PGPASSWORD", TLS_PASSWORD)
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    // ... and so do pgward and the pg_dump it starts.
    let res = run(tls_pgward(&ws)
        .env("PGSERVICEFILE", &services)
        .env("PGSERVICE", "tlsprod")
        .args(["--json", "backup"]));
    res.assert_ok();
    assert_eq!(res.json()["manifest"]["database"], db.as_str());
    let res = run(tls_pgward(&ws)
        .env("PGSERVICEFILE", &services)
        .env("PGSERVICE", "tlsprod")
        .args(["--json", "check"]));
    res.assert_ok();
}

#[test]
fn a_password_file_libpq_ignores_is_named_instead_of_a_missing_password() {
    let ws = Workspace::new();
    let db = tls_database("tls_passfile");
    let passfile = ws.file(
        "pgpass",
        &format!("localhost:*:*:{TLS_PASSWORD_ROLE}:{TLS_PASSWORD}\n"),
    );
    let ca = files().ca.display().to_string();
    let target = conninfo(
        "localhost",
        &db,
        &format!("sslmode=verify-full sslrootcert={ca}"),
    );
    let check = |mode: u32| {
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(mode)).unwrap();
        run(tls_pgward(&ws)
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", &passfile)
            .args(["--json", "check", "--dbname", &target]))
    };
    let res = check(0o644);
    res.assert_exit(1);
    let report = res.json();
    let row = |id: &str| check_row(&report, id);
    assert_eq!(row("connection.passfile")["status"], "WARN");
    assert!(
        row("connection.passfile")["hint"]
            .as_str()
            .unwrap()
            .contains("chmod 600")
    );
    assert_eq!(row("connection")["status"], "FAIL");
    assert!(
        row("connection")["hint"]
            .as_str()
            .unwrap()
            .contains("was ignored"),
        "{}",
        row("connection")
    );
    // Private, it is read, and nothing is said about it.
    let res = check(0o600);
    res.assert_ok();
    assert!(
        !res.stdout.contains("connection.passfile"),
        "{}",
        res.stdout
    );
    // The secret never shows.
    assert!(!res.stdout.contains(TLS_PASSWORD) && !res.stderr.contains(TLS_PASSWORD));
}

#[test]
fn libpq_default_files_and_several_hosts_work_as_for_psql() {
    let ws = Workspace::new();
    let db = tls_database("tls_defaults");
    // ~/.postgresql/root.crt, postgresql.crt and postgresql.key, found
    // without being named, as libpq finds them.
    let home = ws.path("home");
    let dot = home.join(".postgresql");
    std::fs::create_dir_all(&dot).unwrap();
    std::fs::copy(&files().ca, dot.join("root.crt")).unwrap();
    std::fs::copy(&files().client_cert, dot.join("postgresql.crt")).unwrap();
    std::fs::copy(&files().client_key, dot.join("postgresql.key")).unwrap();
    std::fs::set_permissions(
        dot.join("postgresql.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // The first host has nobody listening: libpq (and pgward) go on to
    // the next.
    let target = format!(
        "host=127.0.0.1,localhost port=1,{} user={CERT_ROLE} dbname={db} sslmode=verify-full",
        tls_cluster().port
    );
    let res = run(tls_pgward(&ws)
        .env_remove("PGPASSWORD")
        .args(["--json", "backup", "--dbname", &target]));
    res.assert_ok();
    assert_eq!(res.json()["manifest"]["tables"][0]["rows"], 500);
    // Without the default root certificate, verify-full has nothing to
    // verify with, and says so before connecting.
    std::fs::remove_file(dot.join("root.crt")).unwrap();
    let res = run(tls_pgward(&ws)
        .env_remove("PGPASSWORD")
        .args(["--json", "backup", "--dbname", &target]));
    res.assert_exit(2);
    assert!(
        res.stderr.contains("root.crt does not exist"),
        "{}",
        res.stderr
    );
}

#[test]
fn restore_and_admin_sessions_are_verified_at_least_as_the_backups() {
    let ws = Workspace::new();
    let db = tls_database("tls_inherit");
    let ca = files().ca.display().to_string();
    backup_over(
        &ws,
        &conninfo(
            "localhost",
            &db,
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
    )
    .assert_ok();
    // [connection] verifies against the wrong CA; [restore-connection]
    // says nothing about TLS: it inherits verify-full and that CA, and
    // refuses the server, where `prefer` would have gone ahead.
    let restore_section = format!(
        "[restore-connection]\nhost = \"localhost\"\nport = {}\nuser = \"{TLS_PASSWORD_ROLE}\"\ndbname = \"postgres\"\n",
        tls_cluster().port
    );
    let config = |name: &str, root: &str, restore_extra: &str| {
        ws.file(
            name,
            &format!(
                "[connection]\ndbname = \"{}\"\nsslmode = \"verify-full\"\nsslrootcert = \"{root}\"\n\n{restore_section}{restore_extra}",
                conninfo("localhost", &db, "")
            ),
        )
    };
    let wrong = config("wrong.toml", &files().other_ca.display().to_string(), "");
    let target = format!("{db}_inherit");
    let res = run(tls_pgward(&ws)
        .arg("--config")
        .arg(&wrong)
        .args(["--json", "restore", "latest", "--to", &target]));
    res.assert_exit(1);
    assert!(
        res.stderr.contains("not signed by a CA in sslrootcert"),
        "{}",
        res.stderr
    );
    // Its own sslrootcert wins over the inherited one.
    let own = config(
        "own.toml",
        &files().other_ca.display().to_string(),
        &format!("sslrootcert = \"{ca}\"\n"),
    );
    let res = run(tls_pgward(&ws).arg("--config").arg(&own).args([
        "--json",
        "restore",
        "latest",
        "--to",
        &target,
        "--database",
        &db,
    ]));
    res.assert_ok();
}

/// A CRL of the test CA, made with `openssl ca`: empty, or revoking the
/// server's certificate.
fn crl(ws: &Workspace, revoke_server: bool) -> PathBuf {
    let dir = ws.path(if revoke_server {
        "crl-revoked"
    } else {
        "crl-empty"
    });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = test\n[test]\ndatabase = {0}/index.txt\ncrlnumber = {0}/crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n",
            dir.display()
        ),
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca_key = files().dir.join("ca.key");
    let ca_crt = files().dir.join("ca.crt");
    let server = files().dir.join("server.crt");
    let key = ca_key.to_str().unwrap();
    let crt = ca_crt.to_str().unwrap();
    if revoke_server {
        openssl(&[
            "ca",
            "-config",
            "ca.cnf",
            "-keyfile",
            key,
            "-cert",
            crt,
            "-revoke",
            server.to_str().unwrap(),
        ]);
    }
    openssl(&[
        "ca", "-config", "ca.cnf", "-keyfile", key, "-cert", crt, "-gencrl", "-out", "root.crl",
    ]);
    dir.join("root.crl")
}

#[test]
fn revocation_protocol_bounds_and_the_rest_of_verification_work_as_in_libpq() {
    let ws = Workspace::new();
    let db = tls_database("tls_more");
    let ca = files().ca.display().to_string();
    let other = files().other_ca.display().to_string();
    let ok = |extra: String| {
        let res = backup_over(&ws, &conninfo("localhost", &db, &extra));
        assert_eq!(res.code, 0, "{extra}: {}", res.stderr);
    };
    // verify-ca checks the chain, not the name: a name the certificate
    // does not carry is fine; a wrong CA with it is not.
    ok(format!(
        "hostaddr=127.0.0.1 sslmode=verify-ca sslrootcert={ca}"
    ));
    let res = backup_over(
        &ws,
        &format!(
            "host=wrong.example hostaddr=127.0.0.1 port={} user={TLS_PASSWORD_ROLE} dbname={db} sslmode=verify-ca sslrootcert={other}",
            tls_cluster().port
        ),
    );
    res.assert_exit(1);
    assert!(res.stderr.contains("not signed by a CA"), "{}", res.stderr);
    // Protocol bounds, SNI off and SCRAM channel binding (over TLS only).
    ok(format!(
        "sslmode=verify-full sslrootcert={ca} ssl_min_protocol_version=TLSv1.3"
    ));
    ok(format!(
        "sslmode=verify-full sslrootcert={ca} ssl_max_protocol_version=TLSv1.2"
    ));
    ok(format!(
        "sslmode=verify-full sslrootcert={ca} sslsni=0 channel_binding=require"
    ));
    // A CRL that revokes nothing passes; one that revokes the server's
    // certificate stops the session, for pgward as for pg_dump.
    ok(format!(
        "sslmode=verify-full sslrootcert={ca} sslcrl={}",
        crl(&ws, false).display()
    ));
    let revoked = crl(&ws, true);
    let res = backup_over(
        &ws,
        &conninfo(
            "localhost",
            &db,
            &format!(
                "sslmode=verify-full sslrootcert={ca} sslcrl={}",
                revoked.display()
            ),
        ),
    );
    res.assert_exit(1);
    assert!(res.stderr.contains("revoked"), "{}", res.stderr);
}
