//! Backups written straight into a bucket (`repository = "s3://..."`),
//! against a real S3 server (SigV4 enforced) on 127.0.0.1: the
//! commit protocol (artifact uploaded, validated, read back, manifest
//! last), nothing on local disk, the lease lock that keeps two runs of
//! one database apart across hosts, failures recorded in the bucket's
//! quarantine, and a killed run cleaned up by the next.

use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

const BUCKET: &str = "pgward-direct";

fn configured(server: &S3Server, ws: &Workspace, name: &str, extra: &str) -> PathBuf {
    let credentials = server.credentials_file(ws, S3_SECRET_KEY);
    let config = ws.file(
        name,
        &format!("{}{extra}", server.config_section(&credentials)),
    );
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    config
}

/// pgward with `config`, on the bucket repository `s3://BUCKET/prefix`.
fn on_bucket(ws: &Workspace, config: &Path, prefix: &str) -> std::process::Command {
    let mut cmd = pgward(&ws.repo());
    cmd.arg("--config")
        .arg(config)
        .arg("--repo")
        .arg(format!("s3://{BUCKET}/{prefix}"));
    cmd
}

fn objects(server: &S3Server, key: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(server.object_path(BUCKET, key))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_backup_straight_into_a_bucket_restores_and_leaves_nothing_on_local_disk() {
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let config = configured(&server, &ws, "pgward.toml", "");
    let db = cluster().create_database("direct");
    load_rows(&db, "public.items", 3000);

    let res = run(on_bucket(&ws, &config, "prod").args(["--json", "backup", "--dbname", &db]));
    res.assert_ok();
    let manifest = res.json()["manifest"].clone();
    let id = manifest["id"].as_str().unwrap().to_string();
    let artifact = manifest["artifact"]["file"].as_str().unwrap();
    // The artifact is in the bucket, byte for byte what the manifest says,
    // and the manifest beside it; nothing else is left in flight.
    let stored =
        std::fs::read(server.object_path(BUCKET, &format!("prod/backups/{artifact}"))).unwrap();
    assert_eq!(stored.len() as u64, manifest["artifact"]["bytes"]);
    assert_eq!(
        pgward::pipeline::hash::digest_reader(&stored[..])
            .unwrap()
            .sha256,
        manifest["artifact"]["sha256"].as_str().unwrap()
    );
    assert_eq!(
        objects(&server, "prod/backups"),
        [artifact.to_string(), format!("{id}.manifest.json")]
    );
    assert_eq!(objects(&server, "prod/tmp"), Vec::<String>::new());
    assert_eq!(objects(&server, "prod/locks"), Vec::<String>::new());
    assert!(server.open_uploads().is_empty());
    // No local repository, no spool: the dump went straight up.
    assert!(!ws.repo().exists());

    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    listed.assert_ok();
    assert_eq!(listed_backup_ids(&listed.json()), [id.as_str()]);
    run(on_bucket(&ws, &config, "prod").args(["verify", &id])).assert_ok();
    let target = format!("{db}_back");
    run(on_bucket(&ws, &config, "prod").args(["restore", &id, "--to", &target])).assert_ok();
    assert_eq!(
        cluster().psql(&target, "SELECT count(*) FROM public.items"),
        "3000"
    );

    // A run of this database on another host holds the lock: refused,
    // naming the holder, and nothing is written.
    let lock = server.object_path(
        BUCKET,
        &format!("prod/locks/{}.lock", pgward::repository::database_key(&db)),
    );
    let held = lock_record(&db, "other-host", "2999-01-01T00:00:00Z");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, &held).unwrap();
    let busy = run(on_bucket(&ws, &config, "prod").args(["backup", "--dbname", &db]));
    assert_eq!(busy.code, 3, "{}", busy.stderr);
    assert!(
        busy.stderr
            .contains("another pgward run is backing up database")
            && busy.stderr.contains("host other-host, pid 4242"),
        "{}",
        busy.stderr
    );
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), held);
    assert_eq!(objects(&server, "prod/backups").len(), 2);

    // Its lease ran out (the holder died): the next run takes the lock
    // over, backs up, and releases it.
    std::fs::write(
        &lock,
        lock_record(&db, "other-host", "2020-01-01T00:00:00Z"),
    )
    .unwrap();
    let second = run(on_bucket(&ws, &config, "prod").args(["--json", "backup", "--dbname", &db]));
    second.assert_ok();
    assert!(!lock.exists(), "the lock was not released");
    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    assert_eq!(listed_backup_ids(&listed.json()).len(), 2);

    // `check` proves the bucket as the repository, finds the previous
    // backup there, and sees a lock that is held.
    let checked = run(on_bucket(&ws, &config, "prod").args(["--json", "check", "--dbname", &db]));
    let report = checked.json();
    for row in [
        "repository",
        "repository.bucket",
        "repository.bucket.conditional-writes",
        "repository.bucket.open-uploads",
        "repository.lock",
    ] {
        assert_eq!(check_row(&report, row)["status"], "PASS", "{row}: {report}");
    }
    assert!(
        check_row(&report, "repository.bucket")["evidence"]
            .as_str()
            .unwrap()
            .contains("a probe object was written"),
        "{report}"
    );
    std::fs::write(&lock, &held).unwrap();
    let checked = run(on_bucket(&ws, &config, "prod").args(["--json", "check", "--dbname", &db]));
    let report = checked.json();
    assert_eq!(
        check_row(&report, "repository.lock")["status"],
        "FAIL",
        "{report}"
    );
    assert!(
        check_row(&report, "repository.lock")["evidence"]
            .as_str()
            .unwrap()
            .contains("host other-host, pid 4242"),
        "{report}"
    );
    std::fs::remove_file(&lock).unwrap();

    // The nightly `run` works on the bucket: backup, verify, drill, prune.
    let nightly = configured(
        &server,
        &ws,
        "nightly.toml",
        "\n[policy]\nkeep-last = 2\ndrill-every = \"1d\"\n",
    );
    let ran = run(on_bucket(&ws, &nightly, "prod").args(["--json", "run", "--dbname", &db]));
    ran.assert_ok();
    let out = ran.json();
    let third = out["backup-id"].as_str().unwrap();
    let steps: Vec<(String, String)> = out["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        steps.contains(&("backup".into(), "ok".into()))
            && steps.contains(&("verify".into(), "ok".into()))
            && steps.contains(&("drill".into(), "ok".into()))
            && steps.contains(&("prune".into(), "ok".into())),
        "{out}"
    );
    // keep-last 2: the oldest of the three backups is gone from the bucket.
    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    let ids = listed_backup_ids(&listed.json());
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&id), "{ids:?}");
    assert!(
        server
            .object_path(BUCKET, &format!("prod/backups/{third}.drill.json"))
            .is_file()
    );
    assert!(!ws.repo().exists());

    // The journal is kept in the bucket: every backup and the run are
    // recorded there, the chain verifies, a backup's verify checks its
    // record, and `status` and its metrics answer from the bucket.
    let journal = objects(&server, "prod/journal");
    assert!(journal.len() >= 5, "{journal:?}");
    let log = run(on_bucket(&ws, &config, "prod").args(["--json", "log"]));
    log.assert_ok();
    let records = log.json()["records"].as_array().unwrap().clone();
    let commands: Vec<&str> = records
        .iter()
        .map(|r| r["command"].as_str().unwrap())
        .collect();
    assert_eq!(commands[0], "journal-start", "{commands:?}");
    assert!(commands.contains(&"run"), "{commands:?}");
    assert_eq!(
        commands.iter().filter(|c| **c == "backup").count(),
        3,
        "{commands:?}"
    );
    let failed: Vec<&Value> = records
        .iter()
        .filter(|r| r["command"] == "backup" && r["outcome"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "the refused run is journaled: {records:?}");
    run(on_bucket(&ws, &config, "prod").args(["log", "--verify"])).assert_ok();
    let verified = run(on_bucket(&ws, &config, "prod").args(["--json", "verify", third]));
    verified.assert_ok();
    let checks = verified.json()["checks"].clone();
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "journal record" && c["ok"] == true),
        "{checks}"
    );
    let textfile = ws.path("pgward.prom");
    let watched = configured(
        &server,
        &ws,
        "watched.toml",
        &format!(
            "\n[policy]\nmax-backup-age = \"1h\"\n[metrics]\ntextfile = \"{}\"\n",
            textfile.display()
        ),
    );
    let status = run(on_bucket(&ws, &watched, "prod").args(["--json", "status"]));
    status.assert_ok();
    assert_eq!(status.json()["verdict"], "OK", "{}", status.stdout);
    run(on_bucket(&ws, &watched, "prod").args(["verify", third])).assert_ok();
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    assert!(metrics.contains(&format!("database=\"{db}\"")), "{metrics}");
    // Someone who can write the bucket deletes a record: the chain says so.
    std::fs::remove_file(server.object_path(BUCKET, "prod/journal/0000000002.json")).unwrap();
    let broken = run(on_bucket(&ws, &config, "prod").args(["log", "--verify"]));
    assert_eq!(broken.code, 1, "{}", broken.stderr);
    assert!(
        broken.stderr.contains("record 2 is missing"),
        "{}",
        broken.stderr
    );
}

#[test]
fn a_failed_backup_into_a_bucket_is_recorded_and_a_killed_one_is_cleaned_up_by_the_next() {
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let lease = "lock-lease = \"3s\"\n";
    let config = configured(&server, &ws, "pgward.toml", lease);
    let db = cluster().create_database("directfail");
    load_rows(&db, "public.items", 300);
    // Several parts' worth of data that does not compress away.
    cluster().psql(
        &db,
        "CREATE TABLE noise AS SELECT g, md5(random()::text) || md5(random()::text) AS a, \
         md5(random()::text) || md5(random()::text) AS b FROM generate_series(1, 250000) g",
    );
    let first = run(on_bucket(&ws, &config, "prod").args(["--json", "backup", "--dbname", &db]));
    first.assert_ok();
    let first = first.json()["manifest"].clone();
    let first_id = first["id"].as_str().unwrap().to_string();
    assert!(
        first["artifact"]["bytes"].as_u64().unwrap() > 12 << 20,
        "{first}"
    );

    // A backup that streams every part and then fails validation: its
    // multipart upload is aborted, and the failure recorded.
    let strict = configured(
        &server,
        &ws,
        "strict.toml",
        &format!("{lease}\n[validation]\nmin-size = \"1GiB\"\n"),
    );
    let refused = run(on_bucket(&ws, &strict, "prod").args(["backup", "--dbname", &db]));
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("below the minimum")
            && refused.stderr.contains("nothing was kept in the bucket"),
        "{}",
        refused.stderr
    );
    assert!(
        server.open_uploads().is_empty(),
        "{:?}",
        server.open_uploads()
    );
    assert_eq!(objects(&server, "prod/backups").len(), 2);
    assert_eq!(objects(&server, "prod/tmp"), Vec::<String>::new());
    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    listed.assert_ok();
    let listing = listed.json();
    assert_eq!(listed_backup_ids(&listing), [first_id.as_str()]);
    let quarantine = listing["quarantine"].as_array().unwrap().clone();
    assert_eq!(quarantine.len(), 1, "{listing}");
    assert!(
        quarantine[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("below the minimum"),
        "{listing}"
    );
    assert!(quarantine[0]["partial-bytes"].as_u64().unwrap() > 12 << 20);

    // A run whose link stalls mid-upload holds the lock: a second run of
    // the same database is refused while it lives.
    let stall = 7 << 20;
    let proxy = StallingProxy::start(server.port, stall);
    let via_proxy = ws.file(
        "via-proxy.toml",
        &std::fs::read_to_string(&config).unwrap().replace(
            &server.endpoint(),
            &format!("http://127.0.0.1:{}", proxy.port),
        ),
    );
    let mut stalled = on_bucket(&ws, &via_proxy, "prod")
        .args(["backup", "--dbname", &db])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    proxy.wait_stalled(stall);
    let busy = run(on_bucket(&ws, &config, "prod").args(["backup", "--dbname", &db]));
    assert_eq!(busy.code, 3, "{}", busy.stderr);
    assert!(
        busy.stderr.contains(&format!("pid {}", stalled.id())),
        "{}",
        busy.stderr
    );
    // Its open upload is a run's in progress, not one left behind.
    let checked = run(on_bucket(&ws, &config, "prod").args(["--json", "check", "--dbname", &db]));
    let row = check_row(&checked.json(), "repository.bucket.open-uploads");
    assert_eq!(row["status"], "PASS", "{row}");
    assert!(
        row["evidence"]
            .as_str()
            .unwrap()
            .contains("1 of a run in progress"),
        "{row}"
    );
    // Killed outright: it cleans up nothing.
    stalled.kill().unwrap();
    stalled.wait().unwrap();
    proxy.cut();
    let running = objects(&server, "prod/tmp");
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(running[0].ends_with(".running.json"), "{running:?}");
    let dead_id = running[0].trim_end_matches(".running.json").to_string();
    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    assert_eq!(listed_backup_ids(&listed.json()), [first_id.as_str()]);
    // Killed, it could not abort its multipart upload.
    assert_eq!(server.open_uploads().len(), 1);
    // Nor can another database's run abort it.
    let other_db = cluster().create_database("directfail_other");
    load_rows(&other_db, "public.items", 300);
    let other =
        run(on_bucket(&ws, &config, "prod").args(["--json", "backup", "--dbname", &other_db]));
    other.assert_ok();
    let other_id = other.json()["manifest"]["id"].as_str().unwrap().to_string();
    assert_eq!(server.open_uploads().len(), 1);

    // Once its lease has run out, the next run takes the lock, aborts
    // the dead run's upload, records the dead run in quarantine, and
    // backs up.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    // `check` names the upload it left open (its lease is over).
    let checked = run(on_bucket(&ws, &config, "prod").args(["--json", "check", "--dbname", &db]));
    let row = check_row(&checked.json(), "repository.bucket.open-uploads");
    assert_eq!(row["status"], "WARN", "{row}");
    assert!(
        row["evidence"].as_str().unwrap().contains(&dead_id),
        "{row}"
    );
    let next = run(on_bucket(&ws, &config, "prod").args(["--json", "backup", "--dbname", &db]));
    next.assert_ok();
    let next_id = next.json()["manifest"]["id"].as_str().unwrap().to_string();
    assert_eq!(objects(&server, "prod/tmp"), Vec::<String>::new());
    assert_eq!(server.open_uploads(), Vec::<String>::new());
    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    let listing = listed.json();
    let mut ids = listed_backup_ids(&listing);
    ids.sort();
    let mut expected = vec![first_id.clone(), other_id, next_id];
    expected.sort();
    assert_eq!(ids, expected);
    let dead: Vec<&Value> = listing["quarantine"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["id"] == dead_id.as_str())
        .collect();
    assert_eq!(dead.len(), 1, "{listing}");
    assert!(
        dead[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("left behind by a run that died"),
        "{listing}"
    );
    assert!(
        dead[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("its open upload was aborted now"),
        "{listing}"
    );
    run(on_bucket(&ws, &config, "prod").args(["verify", &first_id])).assert_ok();
}

/// A pg_dump that says when it starts and then takes `seconds` before
/// dumping: time for the test to act while the run holds its lock.
fn slow_pg_dump(ws: &Workspace, started: &Path, seconds: u32) -> PathBuf {
    ws.script(
        "pg_dump_slow",
        &format!(
            "REAL='{}'\nif [ \"$1\" = --version ]; then exec \"$REAL\" --version; fi\ntouch '{}'\nsleep {seconds}\nexec \"$REAL\" \"$@\"",
            real_pg_dump(),
            started.display()
        ),
    )
}

/// A backup into `s3://BUCKET/prod` whose pg_dump waits `seconds` before
/// dumping, returned once pg_dump has started (the run holds its lock).
fn backup_with_slow_pg_dump(
    ws: &Workspace,
    config: &Path,
    db: &str,
    marker: &str,
    seconds: u32,
) -> std::process::Child {
    let started = ws.path(marker);
    let wrapper = slow_pg_dump(ws, &started, seconds);
    let child = on_bucket(ws, config, "prod")
        .args(["backup", "--dbname", db, "--pg-dump"])
        .arg(&wrapper)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&started);
    child
}

fn wait_for(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_bucket_backup_that_is_interrupted_or_loses_its_lock_commits_nothing_and_lets_go() {
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let config = configured(&server, &ws, "pgward.toml", "lock-lease = \"2s\"\n");
    let db = cluster().create_database("directlost");
    load_rows(&db, "public.items", 300);
    let lock = server.object_path(
        BUCKET,
        &format!("prod/locks/{}.lock", pgward::repository::database_key(&db)),
    );

    // SIGTERM while pg_dump runs: exit 143, the upload aborted, the run
    // recorded, and the lock released at once (no lease left to wait out).
    let child = backup_with_slow_pg_dump(&ws, &config, &db, "started-1", 3);
    assert!(lock.exists(), "the run holds no lock");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!lock.exists(), "the lock outlived the run");
    assert!(server.open_uploads().is_empty());
    assert_eq!(objects(&server, "prod/tmp"), Vec::<String>::new());
    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    let listing = listed.json();
    assert!(listed_backup_ids(&listing).is_empty(), "{listing}");
    assert_eq!(
        listing["quarantine"].as_array().unwrap().len(),
        1,
        "{listing}"
    );
    assert!(
        listing["quarantine"][0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{listing}"
    );

    // Another run takes the lock over while this one's pg_dump is slow
    // (as if its lease had run out): its next renewal finds the lock
    // replaced, and the run stops and commits nothing, exit 3, leaving the
    // other run's lock alone.
    let child = backup_with_slow_pg_dump(&ws, &config, &db, "started-2", 2);
    let credentials = server.credentials_file(&ws, S3_SECRET_KEY);
    let parsed = pgward::Config::parse(&server.config_section(&credentials)).unwrap();
    let location = pgward::storage::s3::S3Location::parse(&format!("s3://{BUCKET}/prod"))
        .unwrap()
        .unwrap();
    let bucket =
        pgward::storage::s3::S3Storage::new(&location, &parsed.s3, &pgward::process_env).unwrap();
    let theirs = lock_record(&db, "new-holder", "2999-01-01T00:00:00Z");
    pgward::storage::Storage::put_replacing(
        &bucket,
        &format!("locks/{}.lock", pgward::repository::database_key(&db)),
        theirs.as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("lost the lock"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), theirs);
    assert!(server.open_uploads().is_empty());
    let backups = objects(&server, "prod/backups");
    assert!(backups.is_empty(), "{backups:?}");
    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    assert_eq!(listed.json()["quarantine"].as_array().unwrap().len(), 2);
    std::fs::remove_file(&lock).unwrap();

    // The link dies after the upload was completed, while the artifact is
    // read back: nothing can be cleaned up through it. The artifact is
    // never a backup (no manifest), and the next run removes it.
    cluster().psql(
        &db,
        "CREATE TABLE noise AS SELECT g, md5(g::text) || md5((g + 1)::text) AS a \
         FROM generate_series(1, 40000) g",
    );
    let proxy = CuttingProxy::start(server.port, 256 << 10);
    let via_proxy = ws.file(
        "via-proxy.toml",
        &std::fs::read_to_string(&config).unwrap().replace(
            &server.endpoint(),
            &format!("http://127.0.0.1:{}", proxy.port),
        ),
    );
    let cut = run(on_bucket(&ws, &via_proxy, "prod").args(["backup", "--dbname", &db]));
    assert_eq!(cut.code, 1, "{}", cut.stderr);
    let left = objects(&server, "prod/backups");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(".dump.zst"), "{left:?}");
    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    assert!(listed_backup_ids(&listed.json()).is_empty());
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let next = run(on_bucket(&ws, &config, "prod").args(["--json", "backup", "--dbname", &db]));
    next.assert_ok();
    let next_id = next.json()["manifest"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        objects(&server, "prod/backups"),
        [
            format!("{next_id}.dump.zst"),
            format!("{next_id}.manifest.json")
        ]
    );
    assert_eq!(objects(&server, "prod/tmp"), Vec::<String>::new());
    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    assert_eq!(listed.json()["quarantine"].as_array().unwrap().len(), 3);
}

#[test]
fn runs_started_at_the_same_instant_take_the_lock_one_at_a_time() {
    // Four hosts' runs of one database, started together: the lock
    // object's conditional create lets exactly one in (the test server's
    // conditional writes are atomic, as S3's are), and the journal, which
    // all four append to at about the same time, stays one unbroken chain.
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let config = configured(&server, &ws, "pgward.toml", "");
    let db = cluster().create_database("samemoment");
    load_rows(&db, "public.items", 300);
    let wrapper = slow_pg_dump(&ws, &ws.path("started"), 2);
    let gate = ws.path("go");
    let runs: Vec<std::process::Child> = (0..4)
        .map(|_| {
            let mut cmd = on_bucket(&ws, &config, "prod");
            cmd.args(["backup", "--dbname", &db, "--pg-dump"])
                .arg(&wrapper)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            // Each waits for the gate, so that all four ask at once.
            let program = cmd.get_program().to_owned();
            let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
            let mut gated = std::process::Command::new("sh");
            gated
                .arg("-c")
                .arg("while [ ! -e \"$0\" ]; do sleep 0.01; done; exec \"$@\"")
                .arg(&gate)
                .arg(program)
                .args(args)
                .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            gated.spawn().unwrap()
        })
        .collect();
    std::fs::write(&gate, "").unwrap();
    let outcomes: Vec<(Option<i32>, String)> = runs
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .collect();
    let succeeded = outcomes.iter().filter(|(code, _)| *code == Some(0)).count();
    assert_eq!(succeeded, 1, "{outcomes:?}");
    for (code, stderr) in outcomes.iter().filter(|(code, _)| *code != Some(0)) {
        assert_eq!(*code, Some(3), "{stderr}");
        assert!(stderr.contains("lock"), "{stderr}");
    }
    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    assert_eq!(listed_backup_ids(&listed.json()).len(), 1);
    assert_eq!(objects(&server, "prod/locks"), Vec::<String>::new());
    assert_eq!(server.open_uploads(), Vec::<String>::new());
    let chain = run(on_bucket(&ws, &config, "prod").args(["log", "--verify"]));
    chain.assert_ok();
    // Every run is on record once: the winner and the three refused.
    let log = run(on_bucket(&ws, &config, "prod").args(["log"]));
    log.assert_ok();
    let runs: Vec<&str> = log.stdout.lines().filter(|l| l.contains(&db)).collect();
    assert_eq!(runs.len(), 4, "{}", log.stdout);
    assert_eq!(
        runs.iter().filter(|l| l.contains("FAILED")).count(),
        3,
        "{}",
        log.stdout
    );
}

#[test]
fn a_service_that_cannot_list_open_uploads_is_warned_of_and_backups_go_on() {
    // A service that does not answer ListMultipartUploads (503 on every
    // try) neither holds a run up nor keeps a dead run out of quarantine:
    // the record says the sweep failed, and the next run tries again.
    let ws = Workspace::new();
    let server = S3Server::start_with(BUCKET, &["--busy-list-uploads"]);
    let config = configured(&server, &ws, "pgward.toml", "lock-lease = \"2s\"\n");
    let db = cluster().create_database("nolisting");
    load_rows(&db, "public.items", 300);
    // A run killed while it holds the lock: the next one records it, and
    // says that open uploads could not be swept.
    let mut killed = backup_with_slow_pg_dump(&ws, &config, &db, "killed-started", 30);
    killed.kill().unwrap();
    killed.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    run(on_bucket(&ws, &config, "prod").args(["backup", "--dbname", &db])).assert_ok();
    let listed = run(on_bucket(&ws, &config, "prod").args(["--json", "list"]));
    let listing = listed.json();
    let quarantine = listing["quarantine"].as_array().unwrap();
    assert_eq!(quarantine.len(), 1, "{listing}");
    let hint = quarantine[0]["error"]["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("could not be swept")
            && hint.contains("SlowDown")
            && hint.contains("AbortIncompleteMultipartUpload"),
        "{listing}"
    );
    let checked = run(on_bucket(&ws, &config, "prod").args(["--json", "check", "--dbname", &db]));
    let row = check_row(&checked.json(), "repository.bucket.open-uploads");
    assert_eq!(row["status"], "WARN", "{row}");
    assert!(
        row["evidence"].as_str().unwrap().contains("SlowDown"),
        "{row}"
    );

    // Some services (and s3s-fs) answer NotImplemented: `check` says the
    // sweep is left to the lifecycle rule.
    let server = S3Server::start_with(BUCKET, &["--without-list-uploads"]);
    let config = configured(&server, &ws, "other.toml", "");
    let checked = run(on_bucket(&ws, &config, "prod").args(["--json", "check", "--dbname", &db]));
    let row = check_row(&checked.json(), "repository.bucket.open-uploads");
    assert_eq!(row["status"], "WARN", "{row}");
    assert!(
        row["evidence"]
            .as_str()
            .unwrap()
            .contains("the service does not support it"),
        "{row}"
    );
    assert!(
        row["hint"]
            .as_str()
            .unwrap()
            .contains("AbortIncompleteMultipartUpload"),
        "{row}"
    );
}

#[test]
fn credentials_from_the_environment_do_not_reach_pg_dump() {
    // pgward reads the S3 key pair from AWS_* variables; pg_dump, which
    // needs none of it, gets an environment without them.
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let config = ws.file(
        "env-credentials.toml",
        &format!(
            "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\npart-size = \"5MiB\"\n",
            server.endpoint()
        ),
    );
    let db = cluster().create_database("envcreds");
    load_rows(&db, "public.items", 300);
    let seen = ws.path("pg_dump-environment");
    let wrapper = ws.script(
        "pg_dump_env",
        &format!(
            "env > '{}'\nexec '{}' \"$@\"",
            seen.display(),
            real_pg_dump()
        ),
    );
    let res = run(on_bucket(&ws, &config, "prod")
        .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
        .env("AWS_SESSION_TOKEN", "session-token-1234")
        .args(["--json", "backup", "--dbname", &db, "--pg-dump"])
        .arg(&wrapper));
    res.assert_ok();
    // The key pair did reach pgward: the backup is in the bucket.
    assert_eq!(objects(&server, "prod/backups").len(), 2);
    let environment = std::fs::read_to_string(&seen).unwrap();
    assert!(environment.contains("PGPASSWORD") || environment.contains("LC_ALL=C"));
    for secret in [S3_SECRET_KEY, "session-token-1234", "AWS_ACCESS_KEY_ID"] {
        assert!(
            !environment.contains(secret),
            "an S3 credential reached pg_dump"
        );
    }
}
