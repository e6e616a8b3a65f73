//! The repository's journal, `status` and metrics: a history that shows
//! when it was edited, objectives that go LATE with the clock, and a
//! metrics file a Prometheus parser reads, with no secret anywhere.

use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn pgward_with(ws: &Workspace, config: &Path, args: &[&str]) -> Run {
    run(pgward(&ws.repo()).arg("--config").arg(config).args(args))
}

fn record_path(ws: &Workspace, sequence: u64) -> PathBuf {
    ws.repo()
        .join("journal")
        .join(format!("{sequence:010}.json"))
}

fn logged(ws: &Workspace, config: &Path) -> Vec<Value> {
    let log = pgward_with(ws, config, &["--json", "log"]);
    log.assert_ok();
    log.json()["records"].as_array().unwrap().clone()
}

/// A pg_dump that pauses (after a marker file appears) until killed.
fn pausing_pg_dump(ws: &Workspace, marker: &Path) -> PathBuf {
    ws.script(
        "pg_dump_pausing",
        &format!(
            "REAL='{}'\nif [ \"$1\" = --version ]; then exec \"$REAL\" --version; fi\n\
             \"$REAL\" \"$@\" | {{ head -c 20000; touch '{}'; sleep 60; cat; }}",
            real_pg_dump(),
            marker.display()
        ),
    )
}

#[test]
fn a_mixed_history_verifies_and_an_edit_a_deletion_or_a_swap_is_named() {
    let ws = Workspace::new();
    let db = cluster().create_database("journal_mixed");
    load_rows(&db, "public.items", 3000);
    let config = ws.file("pgward.toml", &format!("[connection]\ndbname = \"{db}\"\n"));

    // A success, a permission failure, a killed run, a verify, a drill.
    pgward_with(&ws, &config, &["backup"]).assert_ok();
    cluster().psql(
        "postgres",
        "DROP ROLE IF EXISTS journal_nopriv; CREATE ROLE journal_nopriv LOGIN",
    );
    pgward_with(&ws, &config, &["backup", "-U", "journal_nopriv"]).assert_exit(1);
    let marker = ws.path("paused");
    let wrapper = pausing_pg_dump(&ws, &marker);
    let child = spawn_backup_until(&ws.repo(), &db, &wrapper, &marker);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let killed = child.wait_with_output().unwrap();
    assert_eq!(killed.status.code(), Some(143));
    pgward_with(&ws, &config, &["verify", "latest"]).assert_ok();
    pgward_with(&ws, &config, &["drill", "latest"]).assert_ok();
    // A drill that fails: a second backup whose manifest claims one row
    // more than pg_dump wrote (resealed, as a forger would).
    let second = pgward_with(&ws, &config, &["--json", "backup"]);
    second.assert_ok();
    let second_id = second.json()["id"].as_str().unwrap().to_string();
    let second_manifest = ws
        .repo()
        .join("backups")
        .join(format!("{second_id}.manifest.json"));
    let mut forged: Value =
        serde_json::from_str(&std::fs::read_to_string(&second_manifest).unwrap()).unwrap();
    let rows = forged["tables"][0]["rows"].as_u64().unwrap();
    forged["tables"][0]["rows"] = (rows + 1).into();
    reseal(&mut forged);
    std::fs::write(&second_manifest, forged.to_string()).unwrap();
    pgward_with(&ws, &config, &["drill", &second_id]).assert_exit(1);
    // Its journal record no longer agrees with the manifest: verify says so.
    let verify = pgward_with(&ws, &config, &["--json", "verify", &second_id]);
    verify.assert_exit(1);
    assert!(
        verify.stdout.contains("recorded manifest digest"),
        "{}",
        verify.stdout
    );
    std::fs::remove_file(&second_manifest).unwrap();
    std::fs::remove_file(
        ws.repo()
            .join("backups")
            .join(format!("{second_id}.dump.zst")),
    )
    .unwrap();
    let _ = std::fs::remove_file(
        ws.repo()
            .join("backups")
            .join(format!("{second_id}.drill.json")),
    );

    let records = logged(&ws, &config);
    let summary: Vec<(String, String, i64)> = records
        .iter()
        .map(|r| {
            (
                r["command"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
                r["exit-code"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("journal-start", "ok", 0),
        ("backup", "ok", 0),
        ("backup", "failed", 1),
        ("backup", "failed", 143),
        ("verify", "ok", 0),
        ("drill", "ok", 0),
        ("backup", "ok", 0),
        ("drill", "failed", 1),
        ("verify", "failed", 1),
    ];
    assert_eq!(
        summary,
        expected
            .iter()
            .map(|(c, o, e)| (c.to_string(), o.to_string(), *e))
            .collect::<Vec<_>>()
    );
    assert!(
        records[2]["cause"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{}",
        records[2]
    );
    // The first backup's record holds its manifest's and artifact's digests.
    let backup_id = records[1]["run-id"].as_str().unwrap();
    // The journal's first record (written when that backup was journaled)
    // inventoried the repository as it was: that backup's manifest.
    assert_eq!(
        records[0]["artifacts"][0]["path"],
        format!("backups/{backup_id}.manifest.json")
    );
    let files: Vec<&str> = records[1]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            format!("backups/{backup_id}.dump.zst"),
            format!("backups/{backup_id}.manifest.json")
        ]
    );
    let filtered = pgward_with(&ws, &config, &["--json", "log", "--outcome", "failed"]);
    assert_eq!(filtered.json()["records"].as_array().unwrap().len(), 4);

    let verified = pgward_with(&ws, &config, &["log", "--verify"]);
    verified.assert_ok();
    assert!(
        verified.stdout.contains("journal intact: 9 records"),
        "{}",
        verified.stdout
    );
    let head = pgward_with(&ws, &config, &["log", "--head"]);
    let head = head.stdout.trim().to_string();
    assert!(head.starts_with("9:"), "{head}");

    let broken = |what: &str| -> String {
        let res = pgward_with(&ws, &config, &["log", "--verify"]);
        assert_eq!(res.code, 1, "{what}: {}", res.stdout);
        res.stdout.clone()
    };
    // One byte of record 3 (the permission failure): its outcome.
    let original = std::fs::read(record_path(&ws, 3)).unwrap();
    let mut edited = original.clone();
    let at = edited.windows(6).position(|w| w == b"failed").unwrap();
    edited[at] = b'F';
    std::fs::write(record_path(&ws, 3), &edited).unwrap();
    assert!(broken("edit").contains("record 3 was edited"));
    // Status fails while the chain is broken; log still lists the rest.
    pgward_with(&ws, &config, &["status"]).assert_exit(1);
    std::fs::write(record_path(&ws, 3), b"garbage").unwrap();
    assert_eq!(
        logged(&ws, &config).len(),
        8,
        "one bad record hides no other"
    );
    std::fs::write(record_path(&ws, 3), &original).unwrap();
    pgward_with(&ws, &config, &["log", "--verify"]).assert_ok();
    let original = std::fs::read(record_path(&ws, 2)).unwrap();

    // Record 3 deleted.
    let third = std::fs::read(record_path(&ws, 3)).unwrap();
    std::fs::remove_file(record_path(&ws, 3)).unwrap();
    assert!(broken("delete").contains("record 3 is missing (deleted)"));
    std::fs::write(record_path(&ws, 3), &third).unwrap();

    // Records 2 and 3 swapped.
    std::fs::write(record_path(&ws, 2), &third).unwrap();
    std::fs::write(record_path(&ws, 3), &original).unwrap();
    assert!(broken("swap").contains("record 2 (0000000002.json) holds record 3"));
    std::fs::write(record_path(&ws, 2), &original).unwrap();
    std::fs::write(record_path(&ws, 3), &third).unwrap();

    // The newest record rewritten whole: only the anchor tells.
    let last = std::fs::read_to_string(record_path(&ws, 9)).unwrap();
    std::fs::write(record_path(&ws, 9), last.replace("\"failed\"", "\"ok\"")).unwrap();
    pgward_with(&ws, &config, &["log", "--verify"]).assert_ok();
    let anchored = pgward_with(&ws, &config, &["log", "--verify", "--anchor", &head]);
    anchored.assert_exit(1);
    assert!(
        anchored.stdout.contains("not the one anchored"),
        "{}",
        anchored.stdout
    );

    // A backup's journal record is part of verifying it.
    let manifest = ws
        .repo()
        .join("backups")
        .join(format!("{backup_id}.manifest.json"));
    let text = std::fs::read_to_string(&manifest).unwrap();
    let verify = pgward_with(&ws, &config, &["--json", "verify", backup_id]);
    verify.assert_ok();
    assert!(
        verify.stdout.contains("holds the manifest's digest"),
        "{}",
        verify.stdout
    );
    // Re-formatted, the same manifest is still the one the journal holds.
    let value: Value = serde_json::from_str(&text).unwrap();
    std::fs::write(&manifest, serde_json::to_string(&value).unwrap()).unwrap();
    pgward_with(&ws, &config, &["verify", backup_id]).assert_ok();

    // A journal started anew inventories what is there: the backup is
    // vouched for by that first record.
    std::fs::rename(ws.repo().join("journal"), ws.path("journal-away")).unwrap();
    pgward_with(&ws, &config, &["backup"]).assert_ok();
    let verify = pgward_with(&ws, &config, &["--json", "verify", backup_id]);
    verify.assert_ok();
    assert!(
        verify.stdout.contains("record 1 (journal-start"),
        "{}",
        verify.stdout
    );

    // A forged backup dated before the journal is vouched for by nothing.
    let old_id = format!("20200101T000000Z{}", &backup_id[16..]);
    let mut forged: Value = value.clone();
    forged["id"] = old_id.clone().into();
    forged["started-at"] = "2020-01-01T00:00:00.000Z".into();
    forged["finished-at"] = "2020-01-01T00:00:01.000Z".into();
    forged["artifact"]["file"] = format!("{old_id}.dump.zst").into();
    reseal(&mut forged);
    let backups = ws.repo().join("backups");
    std::fs::copy(
        backups.join(format!("{backup_id}.dump.zst")),
        backups.join(format!("{old_id}.dump.zst")),
    )
    .unwrap();
    std::fs::write(
        backups.join(format!("{old_id}.manifest.json")),
        forged.to_string(),
    )
    .unwrap();
    let ids = listed_backup_ids(&pgward_with(&ws, &config, &["--json", "list"]).json());
    assert!(
        ids.contains(&old_id),
        "the forgery passes as a backup: {ids:?}"
    );
    let verify = pgward_with(&ws, &config, &["--json", "verify", &old_id]);
    verify.assert_exit(1);
    assert!(
        verify
            .stdout
            .contains("the journal does not vouch for this backup"),
        "{}",
        verify.stdout
    );

    // Commands that only read are not journaled.
    let before = logged(&ws, &config).len();
    for args in [
        &["check"][..],
        &["backup", "--dry-run"],
        &["list"],
        &["status"],
        &["log", "--verify"],
        &["report", "latest"],
        &["prune", "--dry-run"],
        &["grants"],
    ] {
        pgward_with(&ws, &config, args);
    }
    assert_eq!(logged(&ws, &config).len(), before);
}

#[test]
fn concurrent_backups_of_two_databases_make_one_unbroken_chain() {
    let ws = Workspace::new();
    let (a, b) = (
        cluster().create_database("journal_race_a"),
        cluster().create_database("journal_race_b"),
    );
    for db in [&a, &b] {
        load_rows(db, "public.items", 200);
    }
    let rounds = 6;
    for _ in 0..rounds {
        let children: Vec<_> = [&a, &b]
            .iter()
            .map(|db| {
                pgward(&ws.repo())
                    .args(["--json", "backup", "--dbname", db])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success());
        }
    }
    let verified = run(pgward(&ws.repo()).args(["--json", "log", "--verify"]));
    verified.assert_ok();
    let verified = verified.json();
    assert_eq!(verified["intact"], true);
    assert_eq!(verified["records"], 2 * rounds + 1);
    let log = run(pgward(&ws.repo()).args(["--json", "log", "--database", &a]));
    assert_eq!(
        log.json()["records"].as_array().unwrap().len(),
        rounds as usize
    );
    // Every backup is vouched for by its own record.
    for id in listed_backup_ids(&run(pgward(&ws.repo()).args(["--json", "list"])).json()) {
        let verify = run(pgward(&ws.repo()).args(["--json", "verify", &id]));
        verify.assert_ok();
        assert!(verify.stdout.contains("holds the manifest's digest"));
    }
}

#[test]
fn status_goes_late_with_the_clock_and_metrics_parse_without_secrets() {
    let ws = Workspace::new();
    let db = cluster().create_database("journal_status");
    load_rows(&db, "public.items", 100);
    cluster().psql(
        &db,
        &format!("GRANT SELECT ON public.items TO {PASSWORD_ROLE}"),
    );
    let secret = "Tr1cky pa$$ word";
    let password = ws.file("password", &format!("{secret}\n"));
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let textfile = ws.path("pgward.prom");
    let config = ws.file(
        "pgward.toml",
        &format!(
            "[connection]\ndbname = \"{db}\"\nuser = \"{PASSWORD_ROLE}\"\npassword-file = \"{}\"\n\
             [policy]\nmax-backup-age = \"1h\"\n[metrics]\ntextfile = \"{}\"\n",
            password.display(),
            textfile.display()
        ),
    );
    pgward_with(&ws, &config, &["backup"]).assert_ok();
    let status = pgward_with(&ws, &config, &["--json", "status"]);
    status.assert_ok();
    let report = status.json();
    assert_eq!(report["verdict"], "OK");
    assert_eq!(report["databases"][0]["objectives"][0]["verdict"], "OK");

    // The textfile: written after the run, replaced whole, parseable.
    let metrics = |text: &str| -> Vec<(String, String, f64)> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines)
            .expect("Prometheus text format")
            .samples
            .into_iter()
            .map(|s| {
                let value = match s.value {
                    prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                    other => panic!("{other:?}"),
                };
                (
                    s.metric,
                    s.labels.get("database").unwrap_or_default().to_string(),
                    value,
                )
            })
            .collect()
    };
    let file = std::fs::read_to_string(&textfile).unwrap();
    let samples = metrics(&file);
    assert!(
        samples.contains(&("pgward_objective_ok".into(), db.clone(), 1.0)),
        "{file}"
    );
    assert!(samples.contains(&("pgward_backup_last_attempt_success".into(), db.clone(), 1.0)));
    assert!(samples.contains(&("pgward_journal_intact".into(), String::new(), 1.0)));
    let rows = samples
        .iter()
        .find(|(name, database, _)| name == "pgward_backup_rows" && *database == db)
        .unwrap();
    assert_eq!(rows.2, 100.0);
    let names: Vec<String> = std::fs::read_dir(ws.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("prom"))
        .collect();
    assert_eq!(names, ["pgward.prom"], "no staging file is left beside it");

    // The clock passes the objective: LATE, exit 1, and the metrics say so.
    let strict = ws.file(
        "strict.toml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace("max-backup-age = \"1h\"", "max-backup-age = \"2s\""),
    );
    std::thread::sleep(Duration::from_secs(3));
    let config = strict;
    let late = pgward_with(&ws, &config, &["status"]);
    late.assert_exit(1);
    assert!(
        late.stdout.contains(&format!("LATE   {db}")),
        "{}",
        late.stdout
    );
    let exposition = pgward_with(&ws, &config, &["status", "--format", "prometheus"]);
    assert!(metrics(&exposition.stdout).contains(&("pgward_objective_ok".into(), db.clone(), 0.0)));

    // A conninfo whose unquoted password has a space: libpq-style parsing
    // reads a fragment of it as a parameter name; the journal masks it.
    pgward_with(
        &ws,
        &config,
        &[
            "backup",
            "--dbname",
            "host=/nonexistent password=Tr1cky s3cr3tfragment=x dbname=y",
        ],
    )
    .assert_exit(2);
    // A failed run is recorded too, and nothing anywhere holds the password.
    pgward_with(
        &ws,
        &config,
        &["backup", "--dbname", "no_such_database_here"],
    )
    .assert_exit(1);
    pgward_with(&ws, &config, &["report", "latest"]).assert_ok();
    let mut everything = String::new();
    for path in snapshot_all(&ws.repo()) {
        everything.push_str(&String::from_utf8_lossy(&std::fs::read(path).unwrap()));
    }
    everything.push_str(&std::fs::read_to_string(&textfile).unwrap());
    for args in [
        &["log"][..],
        &["status"],
        &["report", "latest"],
        &["--json", "log"],
    ] {
        everything.push_str(&pgward_with(&ws, &config, args).stdout);
    }
    assert!(everything.contains("no_such_database_here"));
    assert!(!everything.contains(secret), "the password leaked");
    assert!(!everything.contains("Tr1cky"), "the password leaked");
    assert!(
        !everything.contains("s3cr3tfragment"),
        "a fragment of a password leaked"
    );
}

/// Every file under `dir`, the journal included.
fn snapshot_all(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(snapshot_all(&path));
        } else if path.is_file() {
            files.push(path);
        }
    }
    files
}
