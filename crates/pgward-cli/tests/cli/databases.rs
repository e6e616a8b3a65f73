//! One repository, the backups of several databases: `latest` means the
//! newest backup of the database given (`--database`) or configured, in
//! every command, never another database's; an id of another database is
//! refused; a restore never lands in the server's own databases; pg_dump's
//! short flags and a default configuration file work as users expect.

use crate::harness::*;

struct TwoDatabases {
    ws: Workspace,
    a: String,
    b: String,
    a_id: String,
    b_id: String,
}

/// Database A (100 rows), then B (200 rows), backed up in that order into
/// one repository: B's backup is the newest in it.
fn two_databases(hint: &str) -> TwoDatabases {
    let ws = Workspace::new();
    let a = cluster().create_database(&format!("{hint}_a"));
    let b = cluster().create_database(&format!("{hint}_b"));
    load_rows(&a, "public.items", 100);
    load_rows(&b, "public.items", 200);
    let a_id = backup(&ws.repo(), &a, &[]).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_id = backup(&ws.repo(), &b, &[]).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    TwoDatabases {
        ws,
        a,
        b,
        a_id,
        b_id,
    }
}

impl TwoDatabases {
    fn pgward(&self, args: &[&str]) -> Run {
        run(pgward(&self.ws.repo()).args(args))
    }
}

#[test]
fn latest_is_the_newest_backup_of_the_database_meant_in_every_command() {
    let t = two_databases("latest");
    // Without a database, `latest` is ambiguous here: refused, naming both.
    let res = t.pgward(&["--json", "verify", "latest"]);
    res.assert_exit(2);
    assert!(
        res.stderr.contains("ambiguous") && res.stderr.contains(&t.a) && res.stderr.contains(&t.b),
        "{}",
        res.stderr
    );
    // --database, PGDATABASE, -d and the configuration all mean A.
    let res = t.pgward(&["--json", "verify", "latest", "--database", &t.a]);
    res.assert_ok();
    assert_eq!(res.json()["id"], t.a_id.as_str());
    let res = run(pgward(&t.ws.repo())
        .env("PGDATABASE", &t.a)
        .args(["--json", "verify", "latest"]));
    res.assert_ok();
    assert_eq!(res.json()["id"], t.a_id.as_str());
    let res = t.pgward(&["--json", "drill", "latest", "-d", &t.a]);
    res.assert_ok();
    assert_eq!(res.json()["record"]["backup-id"], t.a_id.as_str());
    let config =
        t.ws.file("a.toml", &format!("[connection]\ndbname = \"{}\"\n", t.a));
    let target = format!("{}_restored", t.a);
    let res = run(pgward(&t.ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["--json", "restore", "latest", "--to", &target]));
    res.assert_ok();
    assert_eq!(res.json()["backup-id"], t.a_id.as_str());
    assert_eq!(
        cluster().psql(&target, "SELECT count(*) FROM public.items"),
        "100"
    );

    // An id of another database than the one meant is refused.
    let res = t.pgward(&["--json", "verify", &t.b_id, "--database", &t.a]);
    res.assert_exit(2);
    assert!(
        res.stderr
            .contains(&format!("is a backup of database {}", t.b)),
        "{}",
        res.stderr
    );
    // list --database shows that database's backups only.
    let res = t.pgward(&["--json", "list", "--database", &t.a]);
    res.assert_ok();
    let ids = listed_backup_ids(&res.json());
    assert_eq!(ids, vec![t.a_id.clone()]);
    // A database with no backup here: not found, never another's.
    let res = t.pgward(&["--json", "verify", "latest", "--database", "nosuchdb"]);
    res.assert_exit(2);
    assert!(
        res.stderr.contains("no backup of database nosuchdb"),
        "{}",
        res.stderr
    );
}

#[test]
fn a_restore_never_lands_in_the_servers_own_databases() {
    let t = two_databases("sysdb");
    for target in ["postgres", "template1", "template0"] {
        let res = t.pgward(&["--json", "restore", &t.a_id, "--to", target]);
        res.assert_exit(2);
        assert!(
            res.stderr.contains("relies on") && res.stderr.contains("--allow-system-database"),
            "{target}: {}",
            res.stderr
        );
    }
    // postgres is untouched.
    assert_eq!(
        cluster().psql(
            "postgres",
            "SELECT count(*) FROM pg_class WHERE relname = 'items'"
        ),
        "0"
    );
}

#[test]
fn short_flags_and_a_default_configuration_file() {
    let ws = Workspace::new();
    let db = cluster().create_database("flags");
    load_rows(&db, "public.items", 50);
    let c = cluster();
    // pg_dump's -h -p -U -d, with nothing in the environment.
    let res = run(pgward(&ws.repo())
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .args(["--json", "backup", "-h"])
        .arg(&c.socket_dir)
        .args(["-p", &c.port.to_string(), "-U", "postgres", "-d", &db]));
    res.assert_ok();
    assert_eq!(res.json()["manifest"]["database"], db.as_str());

    // $XDG_CONFIG_HOME/pgward/pgward.toml is read when no --config is
    // given, and check says which file it used.
    let xdg = ws.path("xdg");
    std::fs::create_dir_all(xdg.join("pgward")).unwrap();
    std::fs::write(
        xdg.join("pgward").join("pgward.toml"),
        format!("[connection]\ndbname = \"{db}\"\n"),
    )
    .unwrap();
    let res = run(pgward(&ws.repo())
        .env("XDG_CONFIG_HOME", &xdg)
        .args(["--json", "check"]));
    res.assert_ok();
    let report = res.json();
    let config_row = check_row(&report, "config");
    assert!(
        config_row["evidence"]
            .as_str()
            .unwrap()
            .contains("xdg/pgward/pgward.toml"),
        "{config_row}"
    );
    assert_eq!(report["server"]["database"], db.as_str());
    // A command line that is wrong: with --json, a JSON error too.
    let res = run(pgward(&ws.repo()).args(["--json", "backup", "--frobnicate"]));
    res.assert_exit(2);
    assert_eq!(res.json()["error"]["kind"], "config", "{}", res.stdout);
    assert!(res.stderr.contains("--frobnicate"), "{}", res.stderr);
    // --help still works, -h is the host.
    let res = run(pgward(&ws.repo()).args(["backup", "--help"]));
    res.assert_ok();
    assert!(res.stdout.contains("-h, --host"), "{}", res.stdout);
}

#[test]
fn the_command_line_wins_and_sockets_never_do_tls() {
    let ws = Workspace::new();
    let db = cluster().create_database("cmdline");
    load_rows(&db, "public.items", 20);
    let c = cluster();
    // A conninfo in the configuration names a socket directory that does
    // not exist; -h on the command line wins over it.
    let config = ws.file(
        "pgward.toml",
        &format!("[connection]\ndbname = \"host=/nonexistent-socket-dir dbname={db}\"\n"),
    );
    let res = run(pgward(&ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["--json", "backup", "-h"])
        .arg(&c.socket_dir));
    res.assert_ok();
    // libpq never uses TLS over a Unix socket, whatever sslmode says.
    let res = run(pgward(&ws.repo())
        .env("PGSSLMODE", "require")
        .args(["--json", "backup", "--dbname", &db]));
    res.assert_ok();
    // Settings that cannot be read never mean "no database named": latest
    // is refused rather than taken from another database.
    let other = cluster().create_database("cmdline_other");
    load_rows(&other, "public.items", 10);
    let only_other = Workspace::new();
    backup(&only_other.repo(), &other, &[]).assert_ok();
    let broken = ws.file(
        "broken.toml",
        &format!("[connection]\ndbname = \"{db}\"\nsslmode = \"verify-full\"\nsslrootcert = \"/nonexistent/root.crt\"\n"),
    );
    let res = run(pgward(&only_other.repo())
        .arg("--config")
        .arg(&broken)
        .args(["--json", "verify", "latest"]));
    res.assert_exit(2);
    assert!(
        res.stderr.contains("cannot tell which database"),
        "{}",
        res.stderr
    );
}
