//! Backups that succeed: what they write, what the manifest says, and that
//! stock tools read the artifact.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn create_sample(db: &str) {
    cluster().psql(
        db,
        r#"
        CREATE SCHEMA cutter_governance;
        CREATE TABLE public.orders (id bigserial PRIMARY KEY, placed timestamptz, total numeric(20,6), note text);
        INSERT INTO public.orders (placed, total, note)
            SELECT '2026-01-01'::timestamptz + g * interval '1 minute', g / 7.0, E'tab\there\nnewline \\ backslash ü'
            FROM generate_series(1, 2500) g;
        CREATE TABLE public.empty_one (a int);
        CREATE TABLE cutter_governance."Decisions" (id int PRIMARY KEY, payload jsonb, tags text[], blob bytea);
        INSERT INTO cutter_governance."Decisions"
            SELECT g, jsonb_build_object('n', g, 'nested', jsonb_build_array(g, 'x')), ARRAY['a', NULL, 'c'], '\xdeadbeef'
            FROM generate_series(1, 300) g;
        "#,
    );
}

#[test]
fn backup_list_verify_and_stock_tools_read_the_artifact() {
    let ws = Workspace::new();
    let db = cluster().create_database("happy");
    create_sample(&db);

    let res = backup(&ws.repo(), &db, &[]);
    res.assert_ok();
    let out = res.json();
    assert_eq!(out["message-type"], "backup");
    let manifest = &out["manifest"];
    let id = manifest["id"].as_str().unwrap().to_string();
    assert_eq!(manifest["format"], "pgward-backup-manifest");
    assert_eq!(manifest["format-version"], 7);
    assert_eq!(manifest["status"], "complete");
    assert_eq!(manifest["database"], db.as_str());
    assert_eq!(manifest["archive"]["format"], "custom");
    let sysid = cluster().psql(&db, "SELECT system_identifier FROM pg_control_system()");
    assert_eq!(manifest["server"]["system-identifier"], sysid.as_str());
    let server_num: u64 = cluster()
        .psql(&db, "SHOW server_version_num")
        .parse()
        .unwrap();
    assert_eq!(manifest["server"]["version-num"], server_num);
    assert!(
        manifest["pg-dump"]["version"]
            .as_str()
            .unwrap()
            .starts_with(|c: char| c.is_ascii_digit())
    );

    // Per-table entries with the real row counts.
    let tables: Vec<(String, String, u64)> = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["data"], true);
            (
                t["schema"].as_str().unwrap().to_string(),
                t["table"].as_str().unwrap().to_string(),
                t["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut tables_sorted = tables.clone();
    tables_sorted.sort();
    assert_eq!(
        tables_sorted,
        vec![
            ("cutter_governance".into(), "Decisions".into(), 300),
            ("public".into(), "empty_one".into(), 0),
            ("public".into(), "orders".into(), 2500),
        ]
    );

    // The artifact's recorded digest is the file's digest; files are private.
    let artifact = ws
        .repo()
        .join("backups")
        .join(manifest["artifact"]["file"].as_str().unwrap());
    let bytes = std::fs::read(&artifact).unwrap();
    assert_eq!(
        bytes.len() as u64,
        manifest["artifact"]["bytes"].as_u64().unwrap()
    );
    let sha = Command::new("sha256sum").arg(&artifact).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout);
    assert_eq!(
        sha.split_whitespace().next().unwrap(),
        manifest["artifact"]["sha256"].as_str().unwrap()
    );
    for path in [
        artifact.clone(),
        ws.repo()
            .join("backups")
            .join(format!("{id}.manifest.json")),
    ] {
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "{path:?}"
        );
    }
    for dir in ["", "backups", "quarantine", "tmp", "locks"] {
        let mode = std::fs::metadata(ws.repo().join(dir))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "{dir}");
    }
    assert!(
        names_in(&ws.repo().join("tmp")).is_empty(),
        "staging left behind"
    );

    // list shows it; verify proves it.
    let list = run_list(&ws);
    assert_eq!(list["backups"][0]["id"], id.as_str());
    assert!(list["quarantine"].as_array().unwrap().is_empty());
    let verify = run(pgward(&ws.repo()).args(["--json", "verify", "latest"]));
    verify.assert_ok();
    assert_eq!(verify.json()["ok"], true);

    // Stock tools: zstd -d | pg_restore restores it into a new database
    // with the same rows.
    let restored = restore_with_stock_tools(&artifact, "restored");
    let checksum =
        "SELECT count(*) || ':' || md5(string_agg(o::text, ',' ORDER BY id)) FROM public.orders o";
    assert_eq!(
        cluster().psql(&restored, checksum),
        cluster().psql(&db, checksum)
    );
    let decisions =
        "SELECT md5(string_agg(d::text, ',' ORDER BY id)) FROM cutter_governance.\"Decisions\" d";
    assert_eq!(
        cluster().psql(&restored, decisions),
        cluster().psql(&db, decisions)
    );

    // Human output names the backup.
    let text = run(pgward(&ws.repo()).arg("list"));
    text.assert_ok();
    assert!(text.stdout.contains(&id), "{}", text.stdout);
}

/// `zstd -dc ARTIFACT | pg_restore --exit-on-error --no-owner` into a new
/// database (named from `hint`), which is returned; panics on any error.
fn restore_with_stock_tools(artifact: &std::path::Path, hint: &str) -> String {
    let target = cluster().create_database(hint);
    let script = format!(
        "zstd -dc '{}' | pg_restore --exit-on-error --no-owner -d '{target}'",
        artifact.display()
    );
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", &script])
        .envs(cluster().env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    target
}

fn run_list(ws: &Workspace) -> serde_json::Value {
    let list = run(pgward(&ws.repo()).args(["--json", "list"]));
    list.assert_ok();
    list.json()
}

/// Episode 2: exactly 9 tables across two schemas, named in a config file.
#[test]
fn a_narrow_scope_of_nine_tables_across_two_schemas() {
    let ws = Workspace::new();
    let db = cluster().create_database("narrow");
    let mut sql = String::from("CREATE SCHEMA cutter_governance;");
    for i in 1..=6 {
        sql.push_str(&format!(
            "CREATE TABLE public.p{i} (id int); INSERT INTO public.p{i} VALUES ({i});"
        ));
        sql.push_str(&format!(
            "CREATE TABLE cutter_governance.g{i} (id int); INSERT INTO cutter_governance.g{i} VALUES ({i});"
        ));
    }
    cluster().psql(&db, &sql);
    let wanted: Vec<String> = (1..=5)
        .map(|i| format!("public.p{i}"))
        .chain((1..=4).map(|i| format!("cutter_governance.g{i}")))
        .collect();
    let config = ws.file(
        "pgward.toml",
        &format!(
            "repository = \"{}\"\n[connection]\ndbname = \"{db}\"\n[scope]\ntables = {:?}\n",
            ws.repo().display(),
            wanted
        ),
    );
    let res = run(pgward(&ws.path("unused"))
        .env_remove("PGWARD_REPO")
        .arg("--config")
        .arg(&config)
        .args(["--json", "backup"]));
    res.assert_ok();
    let manifest = &res.json()["manifest"];
    let mut got: Vec<String> = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}.{}",
                t["schema"].as_str().unwrap(),
                t["table"].as_str().unwrap()
            )
        })
        .collect();
    got.sort();
    let mut wanted_sorted = wanted.clone();
    wanted_sorted.sort();
    assert_eq!(got, wanted_sorted);
    assert_eq!(manifest["scope"]["tables"].as_array().unwrap().len(), 9);

    // A table that does not exist is refused before anything is dumped.
    let res = backup(
        &ws.repo(),
        &db,
        &["--table", "public.p1", "--table", "public.nope"],
    );
    assert_eq!(res.code, 2, "{}", res.stderr);
    assert!(
        res.stderr
            .contains("table public.nope in scope does not exist"),
        "{}",
        res.stderr
    );
    assert!(names_in(&ws.repo().join("quarantine")).is_empty());
}

/// PostgreSQL in a container: pg_dump runs behind `docker exec -i NAME`.
/// A wrapper script stands in for docker and records how it was called.
#[test]
fn a_command_prefix_runs_pg_dump_as_in_a_container() {
    let ws = Workspace::new();
    let db = cluster().create_database("docker");
    load_rows(&db, "public.t", 100);
    let log = ws.path("docker.log");
    let docker = ws.script(
        "docker",
        &format!(
            "echo \"$*\" >> '{}'\n[ \"$1\" = exec ] && [ \"$2\" = -i ] || exit 64\nshift 3\nexec \"$@\"",
            log.display()
        ),
    );
    let config = ws.file(
        "pgward.toml",
        &format!(
            "[pg-dump]\ncommand-prefix = [\"{}\", \"exec\", \"-i\", \"pgcontainer\"]\n",
            docker.display()
        ),
    );
    let res = run(pgward(&ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["--json", "backup", "--dbname", &db]));
    res.assert_ok();
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines[0], "exec -i pgcontainer pg_dump --version");
    assert!(
        lines[1].starts_with(
            "exec -i pgcontainer pg_dump --format=custom --compress=0 --no-password --dbname="
        ),
        "{calls}"
    );
    assert!(
        res.json()["manifest"]["pg-dump"]["program"]
            .as_str()
            .unwrap()
            .ends_with("exec -i pgcontainer pg_dump")
    );
}

/// The password reaches pg_dump through its environment only: not argv,
/// not the manifest, not pgward's output.
#[test]
fn the_password_never_reaches_argv_or_records() {
    let ws = Workspace::new();
    let db = cluster().create_database("secret");
    load_rows(&db, "public.t", 50);
    cluster().psql(&db, &format!("GRANT SELECT ON public.t TO {PASSWORD_ROLE}"));
    let password = "Tr1cky pa$$ word";
    let password_file = ws.file("password", &format!("{password}\n"));
    let argv_log = ws.path("argv.log");
    let wrapper = ws.script(
        "pg_dump",
        &format!(
            "printf '%s\\n' \"$@\" >> '{log}'\n[ -n \"$PGPASSWORD\" ] && echo PGPASSWORD-present >> '{log}'\n[ -n \"$PGHOSTADDR\" ] && echo PGHOSTADDR-present >> '{log}'\nexec '{real}' \"$@\"",
            log = argv_log.display(),
            real = real_pg_dump()
        ),
    );
    let config = ws.file(
        "pgward.toml",
        &format!(
            "[connection]\nuser = \"{PASSWORD_ROLE}\"\npassword-file = \"{}\"\n[pg-dump]\npath = \"{}\"\n",
            password_file.display(),
            wrapper.display()
        ),
    );
    let res = run(pgward(&ws.repo())
        .arg("--config")
        .arg(&config)
        .env_remove("PGUSER")
        .args(["--json", "backup", "--dbname", &db]));
    res.assert_ok();
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert!(
        argv.contains("PGPASSWORD-present"),
        "pg_dump got no password: {argv}"
    );
    assert!(!argv.contains("pa$$"), "password in pg_dump's argv: {argv}");
    assert!(!res.stdout.contains("pa$$") && !res.stderr.contains("pa$$"));
    for (path, bytes) in snapshot(&ws.repo()) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("pa$$"),
            "password written to {path:?}"
        );
    }

    // Without the password the same backup fails, loudly.
    let config = ws.file(
        "nopass.toml",
        &format!(
            "[connection]\nuser = \"{PASSWORD_ROLE}\"\n[pg-dump]\npath = \"{}\"\n",
            wrapper.display()
        ),
    );
    let res = run(pgward(&ws.repo())
        .arg("--config")
        .arg(&config)
        .env_remove("PGUSER")
        .args(["backup", "--dbname", &db]));
    assert_eq!(res.code, 1);
    assert!(res.stderr.contains("cannot connect"), "{}", res.stderr);
}

#[test]
fn configuration_errors_are_usage_errors_that_write_nothing() {
    let ws = Workspace::new();
    let config = ws.file("bad.toml", "[scope]\nexclude-schema = [\"x\"]\n");
    let res = run(pgward(&ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["backup", "--dbname", "postgres"]));
    assert_eq!(res.code, 2);
    assert!(
        res.stderr
            .contains("line 2: unknown field `exclude-schema`"),
        "{}",
        res.stderr
    );
    assert_eq!(res.stderr.lines().count(), 1, "one line: {}", res.stderr);
    assert!(!ws.repo().exists(), "a usage error created the repository");

    let res = run(pgward(&ws.repo()).args(["--json", "list"]));
    assert_eq!(res.code, 2);
    assert_eq!(res.json()["error"]["kind"], "not-found");

    let res = run(pgward(&ws.repo())
        .env_remove("PGWARD_REPO")
        .args(["backup", "--dbname", "postgres"]));
    assert_eq!(res.code, 2);
    assert!(
        res.stderr.contains("no repository configured"),
        "{}",
        res.stderr
    );
}

/// Review finding: naming a partitioned table in the scope brings its
/// partitions along, so both kinds of backup restore without errors.
#[test]
fn partitioned_tables_in_scope_bring_their_partitions() {
    let ws = Workspace::new();
    let db = cluster().create_database("parts");
    cluster().psql(
        &db,
        "CREATE TABLE public.meas (id int, k int) PARTITION BY RANGE (k); \
         CREATE TABLE public.meas_low PARTITION OF public.meas FOR VALUES FROM (0) TO (10); \
         CREATE TABLE public.meas_high PARTITION OF public.meas FOR VALUES FROM (10) TO (20) PARTITION BY RANGE (k); \
         CREATE TABLE public.meas_high_a PARTITION OF public.meas_high FOR VALUES FROM (10) TO (15); \
         INSERT INTO public.meas SELECT g, g % 15 FROM generate_series(1, 100) g; \
         CREATE TABLE public.other (id int); INSERT INTO public.other VALUES (1);",
    );
    let restore_cleanly = |manifest: &serde_json::Value| {
        let artifact = ws
            .repo()
            .join("backups")
            .join(manifest["artifact"]["file"].as_str().unwrap());
        restore_with_stock_tools(&artifact, "parts_restored")
    };
    let table_names = |manifest: &serde_json::Value| -> Vec<String> {
        let mut names: Vec<String> = manifest["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["table"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };

    let res = backup(&ws.repo(), &db, &["--exclude-table", "public.meas"]);
    res.assert_ok();
    let manifest = res.json()["manifest"].clone();
    assert_eq!(table_names(&manifest), vec!["other"]);
    restore_cleanly(&manifest);

    let res = backup(&ws.repo(), &db, &["--table", "public.meas"]);
    res.assert_ok();
    let manifest = res.json()["manifest"].clone();
    assert_eq!(table_names(&manifest), vec!["meas_high_a", "meas_low"]);
    let rows: u64 = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 100);
    let restored = restore_cleanly(&manifest);
    assert_eq!(
        cluster().psql(&restored, "SELECT count(*) FROM public.meas"),
        "100"
    );
}

/// Thousands of TOC entries (one per large object before pg_dump 17) make
/// a TOC far longer than pg_dump's first write, and a large object with an
/// oid of 2^31 or more is written as a negative int: both are a normal
/// archive, backed up, verified and restorable.
#[test]
fn many_toc_entries_and_high_large_object_oids_are_a_normal_archive() {
    let ws = Workspace::new();
    let db = cluster().create_database("many_los");
    cluster().psql(
        &db,
        "SELECT count(lo_from_bytea(0, convert_to('lo ' || g, 'UTF8'))) FROM generate_series(1, 5000) g; \
         SELECT lo_from_bytea(3000000000, 'high oid');",
    );
    load_rows(&db, "public.items", 100);
    let res = backup(&ws.repo(), &db, &[]);
    res.assert_ok();
    let manifest = res.json()["manifest"].clone();
    assert!(manifest["archive"]["toc-entries"].as_u64().unwrap() > 5000);
    let id = manifest["id"].as_str().unwrap();
    run(pgward(&ws.repo()).args(["--json", "verify", id])).assert_ok();
    let artifact = ws
        .repo()
        .join("backups")
        .join(manifest["artifact"]["file"].as_str().unwrap());
    let restored = restore_with_stock_tools(&artifact, "many_los_restored");
    assert_eq!(
        cluster().psql(&restored, "SELECT count(*) FROM pg_largeobject_metadata"),
        "5001"
    );
    assert_eq!(
        cluster().psql(&restored, "SELECT convert_from(lo_get(3000000000), 'UTF8')"),
        "high oid"
    );
}
