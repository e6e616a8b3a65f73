//! Drills you cannot get lucky with: backups scoped to `public` restore
//! and drill; a constraint whose outcome depends on the restore order gets
//! the same verdict on every drill; columns that come back in another
//! order are a named finding that the configuration can accept; a partial
//! restore that misses an object names it and what selects it; and
//! PostgreSQL's own regression database drills to the right verdict.

use crate::harness::*;
use serde_json::Value;
use std::path::Path;

/// name -> check, of a drill record's or restore report's checks.
fn check<'a>(checks: &'a Value, name: &str) -> &'a Value {
    checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {checks}"))
}

fn failing(checks: &Value) -> Vec<String> {
    checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false && c["finding"]["accepted"] != true)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// `pgward --json [--config C] drill latest`.
fn drill(repo: &Path, config: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = pgward(repo);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    run(cmd.args(["--json", "drill", "latest"]).args(args))
}

/// `pgward --json [--config C] restore latest --to DB`.
fn restore(repo: &Path, config: Option<&Path>, to: &str, args: &[&str]) -> Run {
    let mut cmd = pgward(repo);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    run(cmd
        .args(["--json", "restore", "latest", "--to", to])
        .args(args))
}

/// A database name no other test uses.
fn unique(hint: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{hint}_{}_{n}", std::process::id())
}

/// `public` with a table, a serial, a comment of its own, an owner of its
/// own and a grant; and a second schema.
fn public_database(hint: &str) -> (String, String) {
    let db = cluster().create_database(hint);
    let owner = unique("v_owner");
    cluster().psql(
        "postgres",
        &format!("CREATE ROLE {owner}; CREATE ROLE {owner}_reader"),
    );
    cluster().psql(
        &db,
        &format!(
            "ALTER SCHEMA public OWNER TO {owner}; \
             COMMENT ON SCHEMA public IS 'the application''s tables'; \
             GRANT USAGE ON SCHEMA public TO {owner}_reader; \
             CREATE TABLE public.t (id serial PRIMARY KEY, v text); \
             INSERT INTO public.t (v) SELECT 'row ' || g FROM generate_series(1, 300) g; \
             CREATE TABLE public.u (id int REFERENCES public.t); \
             INSERT INTO public.u VALUES (1), (2); \
             CREATE SCHEMA other; CREATE TABLE other.o (x int); \
             INSERT INTO other.o VALUES (1), (2), (3)"
        ),
    );
    (db, owner)
}

/// What a restored `public` must share with the source's.
fn public_schema_facts(db: &str) -> String {
    cluster().psql(
        db,
        "SELECT pg_catalog.pg_get_userbyid(nspowner) || ' ' || \
                COALESCE(nspacl::text, 'default') || ' ' || \
                COALESCE(pg_catalog.obj_description(oid, 'pg_namespace'), '') \
           FROM pg_catalog.pg_namespace WHERE nspname = 'public'",
    )
}

#[test]
fn backups_scoped_to_public_restore_and_drill() {
    let (db, _owner) = public_database("v_public");
    let source_public = public_schema_facts(&db);
    let source_rows = cluster().psql(&db, "SELECT count(*), sum(id) FROM public.t");
    // Each scope also as [scope]: `latest` means the newest backup of the
    // configured scope.
    let scopes: [(&[&str], &str); 3] = [
        (&["--schema", "public"], "schemas = [\"public\"]"),
        (
            &["--schema", "public", "--schema", "other"],
            "schemas = [\"public\", \"other\"]",
        ),
        (&["--table", "public.t"], "tables = [\"public.t\"]"),
    ];
    for (scope, scope_toml) in scopes {
        let ws = Workspace::new();
        backup(&ws.repo(), &db, scope).assert_ok();
        let config = ws.file("scope.toml", &format!("[scope]\n{scope_toml}\n"));
        let config = Some(config.as_path());

        let res = drill(&ws.repo(), config, &[]);
        res.assert_ok();
        let record = &res.json()["record"];
        assert_eq!(record["verdict"], "pass", "{scope:?}: {record}");
        assert_eq!(check(&record["checks"], "schema")["ok"], true, "{record}");
        assert_eq!(
            check(&record["checks"], "table public.t")["detail"]
                .as_str()
                .unwrap()
                .split(',')
                .next(),
            Some("300 rows"),
            "{record}"
        );

        let streamed = drill(&ws.repo(), config, &["--jobs", "1"]);
        streamed.assert_ok();
        assert_eq!(streamed.json()["record"]["verdict"], "pass");

        let to = unique("v_public_to");
        let res = restore(&ws.repo(), config, &to, &[]);
        res.assert_ok();
        assert_eq!(res.json()["ok"], true, "{}", res.stdout);
        assert_eq!(
            cluster().psql(&to, "SELECT count(*), sum(id) FROM public.t"),
            source_rows
        );
        // The schema pg_dump created is the source's, not template0's:
        // owner, grants and comment as they were.
        if scope.contains(&"public") {
            assert_eq!(public_schema_facts(&to), source_public, "{scope:?}");
        }
        let other = cluster().psql(
            &to,
            "SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = 'other'",
        );
        assert_eq!(other, if scope.contains(&"other") { "1" } else { "0" });

        // A partial restore that leaves public out compares what it restored.
        if scope.contains(&"other") {
            let to = unique("v_public_other");
            let res = restore(&ws.repo(), config, &to, &["--schema", "other"]);
            res.assert_ok();
            assert_eq!(cluster().psql(&to, "SELECT count(*) FROM other.o"), "3");
        }
    }

    // A public with no comment of its own gets none of template0's.
    let plain = cluster().create_database("v_public_plain");
    cluster().psql(
        &plain,
        "COMMENT ON SCHEMA public IS NULL; CREATE TABLE public.p (x int); INSERT INTO public.p VALUES (1)",
    );
    let ws = Workspace::new();
    backup(&ws.repo(), &plain, &["--schema", "public"]).assert_ok();
    // Not of the configured (whole-database) scope: `latest` refuses it
    // and says what is there.
    let res = drill(&ws.repo(), None, &[]);
    res.assert_exit(2);
    assert!(
        res.stderr.contains("backup(s) of other scopes"),
        "{}",
        res.stderr
    );
    let config = ws.file("scope.toml", "[scope]\nschemas = [\"public\"]\n");
    let res = drill(&ws.repo(), Some(&config), &[]);
    res.assert_ok();
    let to = unique("v_public_plain_to");
    restore(&ws.repo(), Some(&config), &to, &[]).assert_ok();
    assert_eq!(public_schema_facts(&to), public_schema_facts(&plain));
}

/// A table whose CHECK calls a function reading another table: pg_dump
/// loads `a_checked` before `z_keys`, so a serial restore always fails.
const ORDER_HAZARD: &str = "CREATE TABLE public.z_keys (k int); \
    INSERT INTO public.z_keys VALUES (1), (2), (3); \
    CREATE FUNCTION public.key_exists(int) RETURNS boolean LANGUAGE sql STABLE \
      AS $$ SELECT EXISTS (SELECT 1 FROM public.z_keys WHERE k = $1) $$; \
    CREATE TABLE public.a_checked (k int CONSTRAINT a_checked_known CHECK (public.key_exists(k))); \
    INSERT INTO public.a_checked VALUES (1), (2)";

#[test]
fn a_restore_order_hazard_gets_the_same_verdict_on_every_drill() {
    let db = cluster().create_database("v_hazard");
    cluster().psql(&db, ORDER_HAZARD);
    let ws = Workspace::new();

    let res = run(pgward(&ws.repo()).args(["--json", "check", "--dbname", &db]));
    res.assert_ok();
    let items = res.json()["matrix"]["items"].clone();
    let hazard = items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "restore.order-hazard")
        .unwrap_or_else(|| panic!("no hazard row: {items}"));
    assert_eq!(hazard["status"], "WARN");
    let evidence = hazard["evidence"].as_str().unwrap();
    for named in [
        "table public.a_checked",
        "CHECK constraint a_checked_known",
        "public.key_exists(integer) (stable)",
    ] {
        assert!(evidence.contains(named), "{named}: {evidence}");
    }

    // Constraints PostgreSQL does not check while loading are none.
    cluster().psql(
        &db,
        "CREATE TABLE public.later (k int); \
         ALTER TABLE public.later ADD CONSTRAINT later_known CHECK (public.key_exists(k)) NOT VALID",
    );
    let res = backup(&ws.repo(), &db, &[]);
    res.assert_ok();
    let warnings = res.json()["warnings"].clone();
    assert_eq!(warnings.as_array().unwrap().len(), 1, "{warnings}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("table public.a_checked: CHECK constraint a_checked_known"),
        "{warnings}"
    );
    let recorded = &res.json()["manifest"]["content"]["restore-hazards"];
    assert_eq!(recorded[0]["constraint"], "a_checked_known", "{recorded}");

    let mut verdicts = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let res = drill(&ws.repo(), None, &[]);
        res.assert_exit(1);
        let record = &res.json()["record"];
        assert_eq!(record["verdict"], "fail");
        verdicts.insert(record["first-failure"].as_str().unwrap().to_string());
    }
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    let verdict = verdicts.pop_first().unwrap();
    for named in [
        "restore: ",
        "\"a_checked_known\"",
        "cause: restore-order hazard: table public.a_checked",
        "calls public.key_exists(integer) (stable)",
    ] {
        assert!(verdict.contains(named), "{named}: {verdict}");
    }

    // Named the other way round, the same hazard restores in archive
    // order every time, and the drill says it was serial and why.
    // A SQL-standard body shows what it reads; a domain's constraint on a
    // column counts as the table's.
    cluster().psql(
        &db,
        "ALTER TABLE public.a_checked RENAME TO zz_checked; ALTER TABLE public.z_keys RENAME TO b_keys; \
         CREATE OR REPLACE FUNCTION public.key_exists(int) RETURNS boolean LANGUAGE sql STABLE \
           AS $$ SELECT EXISTS (SELECT 1 FROM public.b_keys WHERE k = $1) $$; \
         CREATE FUNCTION public.key_known(k int) RETURNS boolean LANGUAGE sql STABLE \
           BEGIN ATOMIC SELECT EXISTS (SELECT 1 FROM public.b_keys WHERE b_keys.k = key_known.k); END; \
         ALTER TABLE public.zz_checked DROP CONSTRAINT a_checked_known, \
           ADD CONSTRAINT zz_known CHECK (public.key_known(k)); \
         CREATE DOMAIN public.known_key AS int CONSTRAINT known CHECK (public.key_exists(VALUE)); \
         CREATE TABLE public.zz_typed (k public.known_key); INSERT INTO public.zz_typed VALUES (3)",
    );
    let res = backup(&ws.repo(), &db, &[]);
    res.assert_ok();
    let warnings: Vec<String> = res.json()["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains(
            "table public.zz_checked: CHECK constraint zz_known calls public.key_known(k integer) (stable), which reads public.b_keys"
        ),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains(
            "table public.zz_typed: domain public.known_key's constraint known calls public.key_exists(integer) (stable)"
        ),
        "{warnings:?}"
    );
    for _ in 0..3 {
        let res = drill(&ws.repo(), None, &[]);
        res.assert_ok();
        let out = res.json();
        assert_eq!(
            out["restore"]["feed"],
            "spooled, serial pg_restore (restore-order hazards)"
        );
        let order = check(&out["record"]["checks"], "restore order public.zz_checked");
        assert_eq!(order["ok"], true);
        assert!(
            order["detail"]
                .as_str()
                .unwrap()
                .starts_with("restored serially in archive order"),
            "{order}"
        );
    }
}

/// Two inheritance children whose column order pg_dump cannot keep: one
/// attached with ALTER TABLE ... INHERIT, one whose parent gained a column
/// after it was created.
const INHERITANCE: &str = "CREATE TABLE public.parent (a int, b int); \
    CREATE TABLE public.attached (b int, a int, c int); \
    ALTER TABLE public.attached INHERIT public.parent; \
    CREATE TABLE public.older (x int) INHERITS (public.parent); \
    ALTER TABLE public.parent ADD COLUMN z int; \
    INSERT INTO public.attached VALUES (1, 2, 3); \
    INSERT INTO public.older (a, b, x, z) VALUES (1, 2, 3, 4)";

#[test]
fn columns_that_come_back_in_another_order_are_a_named_finding() {
    let db = cluster().create_database("v_columns");
    cluster().psql(&db, INHERITANCE);
    let ws = Workspace::new();
    backup(&ws.repo(), &db, &[]).assert_ok();

    let res = drill(&ws.repo(), None, &[]);
    res.assert_exit(1);
    let record = &res.json()["record"];
    let expected = [
        ("public.attached", "(b, a, c, z)", "(a, b, z, c)"),
        ("public.older", "(a, b, x, z)", "(a, b, z, x)"),
    ];
    for (table, source, restored) in expected {
        let finding = check(&record["checks"], &format!("column order {table}"));
        assert_eq!(finding["ok"], false, "{finding}");
        assert_eq!(finding["finding"]["class"], "column-order");
        assert_eq!(finding["finding"]["object"], table);
        assert_eq!(finding["finding"]["accepted"], false);
        let detail = finding["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!(
                "backup has {source}, restored table has {restored}; why: {table} inherits from public.parent"
            )),
            "{detail}"
        );
        assert!(
            detail.contains(&format!("[drill] accept = [\"column-order {table}\"]")),
            "{detail}"
        );
    }
    // The one whose definition text changed is named as a table, and
    // explained by the finding rather than shown as a raw line diff.
    let schema = check(&record["checks"], "schema TABLE public.attached");
    assert!(
        schema["detail"]
            .as_str()
            .unwrap()
            .contains("(explained by finding column-order public.attached)"),
        "{schema}"
    );
    assert_eq!(check(&record["checks"], "schema")["ok"], true);
    let mut failed = failing(&record["checks"]);
    failed.sort();
    assert_eq!(
        failed,
        [
            "column order public.attached",
            "column order public.older",
            "schema TABLE public.attached"
        ],
        "{record}"
    );

    // Accepting one of the two still fails on the other.
    let one = ws.file(
        "one.toml",
        "[drill]\naccept = [\"column-order public.attached\"]\n",
    );
    let res = drill(&ws.repo(), Some(&one), &[]);
    res.assert_exit(1);
    let record = &res.json()["record"];
    assert_eq!(
        failing(&record["checks"]),
        ["column order public.older"],
        "{record}"
    );

    let both = ws.file(
        "both.toml",
        "[drill]\naccept = [\"column-order public.attached\", \"column-order public.older\"]\n",
    );
    let res = drill(&ws.repo(), Some(&both), &[]);
    res.assert_ok();
    let record = &res.json()["record"];
    assert_eq!(record["verdict"], "pass");
    assert_eq!(
        record["accepted-findings"],
        serde_json::json!(["column-order public.attached", "column-order public.older"])
    );
    assert_eq!(
        check(&record["checks"], "column order public.older")["finding"]["accepted"],
        true
    );
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(ws.repo().join("backups").join(format!(
            "{}.drill.json",
            record["backup-id"].as_str().unwrap()
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(&on_disk, record);

    // A restore verifies the same way and honours the same acceptance.
    let to = unique("v_columns_to");
    let res = restore(&ws.repo(), Some(&both), &to, &[]);
    res.assert_ok();
    assert_eq!(res.json()["ok"], true);

    // An entry that names no object is refused before anything runs.
    let bad = ws.file("bad.toml", "[drill]\naccept = [\"column-order\"]\n");
    let res = drill(&ws.repo(), Some(&bad), &[]);
    res.assert_exit(2);
    assert!(
        res.stderr
            .contains("drill.accept entry \"column-order\": it names no object"),
        "{}",
        res.stderr
    );
}

#[test]
fn a_partial_restore_names_the_object_it_misses_and_what_selects_it() {
    let db = cluster().create_database("v_partial");
    cluster().psql(
        &db,
        "CREATE SCHEMA kinds; CREATE TYPE kinds.mood AS ENUM ('ok', 'sad'); \
         CREATE TYPE public.colour AS ENUM ('red'); \
         CREATE SCHEMA app; CREATE TABLE app.t (m kinds.mood); INSERT INTO app.t VALUES ('ok'); \
         CREATE TABLE app.c (c public.colour); INSERT INTO app.c VALUES ('red'); \
         CREATE FUNCTION public.start_value() RETURNS int LANGUAGE sql AS 'SELECT 1'; \
         CREATE TABLE app.d (x int DEFAULT public.start_value()); \
         CREATE ACCESS METHOD heap_copy TYPE TABLE HANDLER heap_tableam_handler; \
         CREATE TABLE app.h (x int) USING heap_copy; INSERT INTO app.h VALUES (7)",
    );
    let ws = Workspace::new();
    backup(&ws.repo(), &db, &[]).assert_ok();
    let to = unique("v_partial_to");
    let res = restore(&ws.repo(), None, &to, &["--table", "app.t"]);
    res.assert_exit(1);
    assert!(
        res.stderr.contains(
            "(hint: schema kinds is in the backup: add --schema kinds, or restore the whole backup)"
        ),
        "{}",
        res.stderr
    );
    // public exists in every new database, so here the type is missing.
    let res = restore(&ws.repo(), None, &to, &["--table", "app.c"]);
    res.assert_exit(1);
    assert!(
        res.stderr
            .contains("(hint: type public.colour is in the backup: add --schema public, or restore the whole backup)"),
        "{}",
        res.stderr
    );
    let res = restore(&ws.repo(), None, &to, &["--table", "app.d"]);
    res.assert_exit(1);
    assert!(
        res.stderr.contains(
            "(hint: function public.start_value() is in the backup: add --schema public, or restore the whole backup)"
        ),
        "{}",
        res.stderr
    );
    let res = restore(
        &ws.repo(),
        None,
        &to,
        &["--table", "app.t", "--schema", "kinds"],
    );
    res.assert_ok();
    assert_eq!(cluster().psql(&to, "SELECT m FROM app.t"), "ok");

    // Nothing can name an access method, so a table brings its own.
    let to = unique("v_partial_am");
    let res = restore(&ws.repo(), None, &to, &["--table", "app.h"]);
    res.assert_ok();
    assert_eq!(
        cluster().psql(
            &to,
            "SELECT a.amname || ' ' || (SELECT x FROM app.h) FROM pg_class c \
             JOIN pg_am a ON a.oid = c.relam WHERE c.oid = 'app.h'::regclass"
        ),
        "heap_copy 7"
    );
}

/// PostgreSQL's regression database (616 tables: inheritance, partitions,
/// rules, RLS, a table access method, large objects), built by
/// scripts/regression-db.sh in a cluster of its own. Opt-in
/// (PGWARD_REGRESSION_DB=1; scripts/test.sh sets it), because the first
/// run installs Debian's PostgreSQL sources.
#[test]
fn the_regression_database_drills_to_the_right_verdict() {
    if std::env::var("PGWARD_REGRESSION_DB").as_deref() != Ok("1") {
        eprintln!("skipped: set PGWARD_REGRESSION_DB=1 to drill PostgreSQL's regression database");
        return;
    }
    let on = regression_cluster();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/regression-db.sh"
    );
    let built = std::process::Command::new(script)
        .arg("regression")
        .envs(on.env())
        .output()
        .expect("run scripts/regression-db.sh");
    assert!(
        built.status.success(),
        "regression-db.sh failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ws = Workspace::new();
    let pgward_on = |args: &[&str]| {
        let mut cmd = pgward(&ws.repo());
        cmd.envs(on.env());
        run(cmd.args(args))
    };
    let res = pgward_on(&["--json", "backup", "--dbname", "regression"]);
    res.assert_ok();
    let manifest = &res.json()["manifest"];
    assert!(manifest["tables"].as_array().unwrap().len() > 500);

    // Eleven inheritance children come back with another column order;
    // nothing else differs.
    let changed = [
        "public.b_star",
        "public.c_star",
        "public.d_star",
        "public.e_star",
        "public.f_star",
        "public.gtestxx_4",
        "public.renamecolumnanother",
        "public.renamecolumnchild",
        "public.test_type_diff2_c1",
        "public.test_type_diff2_c2",
        "public.test_type_diff_c",
    ];
    let res = pgward_on(&["--json", "drill", "latest"]);
    res.assert_exit(1);
    let record = &res.json()["record"];
    let findings: Vec<String> = record["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| {
            assert_eq!(c["finding"]["class"], "column-order", "{c}");
            c["finding"]["object"].as_str().unwrap().to_string()
        })
        .collect();
    let mut objects = findings.clone();
    objects.sort();
    objects.dedup();
    assert_eq!(objects, changed, "{findings:?}");
    assert_eq!(
        check(&record["checks"], "schema")["ok"],
        true,
        "{}",
        check(&record["checks"], "schema")
    );

    let accept: Vec<String> = changed
        .iter()
        .map(|t| format!("\"column-order {t}\""))
        .collect();
    let config = ws.file(
        "regression.toml",
        &format!("[drill]\naccept = [{}]\n", accept.join(", ")),
    );
    let res = pgward_on(&[
        "--json",
        "--config",
        config.to_str().unwrap(),
        "drill",
        "latest",
    ]);
    res.assert_ok();
    let record = &res.json()["record"];
    assert_eq!(record["verdict"], "pass");
    assert_eq!(
        record["accepted-findings"].as_array().unwrap().len(),
        changed.len()
    );
    let large_objects = check(&record["checks"], "large objects");
    assert_eq!(large_objects["ok"], true);
}
