//! Every way a backup can fail, each asserting the same contract: non-zero
//! exit, the cause in one line, the partial file in quarantine with its
//! reason, nothing new in `list`, earlier backups byte-identical, nothing
//! left in staging.

use crate::harness::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A repository with one good backup, and what it looked like.
struct Baseline {
    ws: Workspace,
    db: String,
    backups: BTreeMap<PathBuf, Vec<u8>>,
    ids: Vec<String>,
}

fn listed_ids(repo: &Path) -> Vec<String> {
    let list = run(pgward(repo).args(["--json", "list"]));
    list.assert_ok();
    list.json()["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

fn quarantine_records(repo: &Path) -> Vec<serde_json::Value> {
    let list = run(pgward(repo).args(["--json", "list"]));
    list.assert_ok();
    list.json()["quarantine"].as_array().unwrap().clone()
}

fn baseline(hint: &str, rows: u32) -> Baseline {
    let ws = Workspace::new();
    let db = cluster().create_database(hint);
    load_rows(&db, "public.items", rows);
    backup(&ws.repo(), &db, &[]).assert_ok();
    let backups = snapshot(&ws.repo().join("backups"));
    let ids = listed_ids(&ws.repo());
    assert_eq!(ids.len(), 1);
    Baseline {
        ws,
        db,
        backups,
        ids,
    }
}

impl Baseline {
    fn repo(&self) -> PathBuf {
        self.ws.repo()
    }

    /// The failure contract. Returns the new quarantine record.
    #[track_caller]
    fn assert_failed_cleanly(&self, res: &Run, code: i32, cause: &str) -> serde_json::Value {
        assert_eq!(res.code, code, "exit code; stderr: {}", res.stderr);
        assert_eq!(
            res.stderr.lines().count(),
            1,
            "one line on stderr: {}",
            res.stderr
        );
        assert!(res.stderr.starts_with("pgward: error: "), "{}", res.stderr);
        assert!(
            res.stderr.contains(cause),
            "cause {cause:?} missing from: {}",
            res.stderr
        );
        assert_eq!(listed_ids(&self.repo()), self.ids, "list changed");
        assert_eq!(
            snapshot(&self.repo().join("backups")),
            self.backups,
            "earlier backups touched"
        );
        assert!(
            names_in(&self.repo().join("tmp")).is_empty(),
            "staging left: {:?}",
            names_in(&self.repo().join("tmp"))
        );
        let records = quarantine_records(&self.repo());
        assert_eq!(records.len(), 1, "one quarantine record: {records:?}");
        let record = records[0].clone();
        assert!(
            record["error"]["message"].as_str().unwrap().contains(cause),
            "{record}"
        );
        assert_eq!(record["error"]["exit-code"], code);
        let partial = self
            .repo()
            .join("quarantine")
            .join(record["file"].as_str().unwrap());
        assert!(partial.is_file(), "partial file missing: {partial:?}");
        assert!(partial.to_string_lossy().ends_with(".dump.zst.partial"));
        record
    }
}

fn pg_dump_wrapper(ws: &Workspace, name: &str, dump_pipeline: &str) -> PathBuf {
    ws.script(
        name,
        &format!(
            "REAL='{}'\nif [ \"$1\" = --version ]; then exec \"$REAL\" --version; fi\n{dump_pipeline}",
            real_pg_dump()
        ),
    )
}

#[test]
fn pg_dump_killed_at_any_point_is_quarantined() {
    let base = baseline("killed", 3000);
    // Inside toc.dat, inside a data member, near the end.
    for (i, cut) in [700u32, 20_000, 250_000].into_iter().enumerate() {
        let wrapper = pg_dump_wrapper(
            &base.ws,
            &format!("pg_dump_killed_{i}"),
            &format!("\"$REAL\" \"$@\" | head -c {cut}\nkill -KILL $$"),
        );
        let res = backup(
            &base.repo(),
            &base.db,
            &["--pg-dump", wrapper.to_str().unwrap()],
        );
        assert_eq!(res.code, 1, "cut at {cut}: {}", res.stderr);
        assert!(
            res.stderr
                .contains("pg_dump was killed by signal 9 (SIGKILL)"),
            "{}",
            res.stderr
        );
        assert_eq!(res.json()["error"]["kind"], "dump");
        // Clear the quarantine between cuts so the contract check sees one record.
        if i < 2 {
            for name in names_in(&base.repo().join("quarantine")) {
                std::fs::remove_file(base.repo().join("quarantine").join(name)).unwrap();
            }
        } else {
            base.assert_failed_cleanly(&res, 1, "pg_dump was killed by signal 9");
        }
    }
}

/// ripgrep's lesson made strict: a stream that ends early fails even when
/// the producer exits 0 and says nothing.
#[test]
fn a_truncated_stream_with_exit_status_zero_fails_validation() {
    let base = baseline("truncated", 3000);
    let wrapper = pg_dump_wrapper(
        &base.ws,
        "pg_dump_truncating",
        "\"$REAL\" \"$@\" | head -c 100000\nexit 0",
    );
    let res = backup(
        &base.repo(),
        &base.db,
        &["--pg-dump", wrapper.to_str().unwrap()],
    );
    let record = base.assert_failed_cleanly(
        &res,
        1,
        "pg_dump's output is not a complete archive: archive is truncated",
    );
    assert_eq!(record["error"]["kind"], "validation");
}

/// Episode 1: a new schema the backup role cannot read.
#[test]
fn a_schema_the_role_cannot_read_names_the_schema() {
    let base = baseline("noread", 200);
    let role = format!("backup_{}", base.db);
    cluster().psql(
        &base.db,
        &format!(
            "CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; \
             CREATE SCHEMA sandbox_tac; CREATE TABLE sandbox_tac.proposals (id int); INSERT INTO sandbox_tac.proposals VALUES (1);"
        ),
    );
    // The first backup was taken by the superuser, so scope and size match.
    let res = run(pgward(&base.repo())
        .env("PGUSER", &role)
        .args(["--json", "backup", "--dbname", &base.db]));
    base.assert_failed_cleanly(&res, 1, "permission denied for schema sandbox_tac");
    assert!(
        res.stderr
            .contains("hint: grant the backup role USAGE on the schema"),
        "{}",
        res.stderr
    );
}

#[test]
fn a_concurrent_run_exits_at_once_and_touches_nothing() {
    let base = baseline("concurrent", 200);
    let started = base.ws.path("dump-started");
    let wrapper = pg_dump_wrapper(
        &base.ws,
        "pg_dump_slow",
        &format!(
            "touch '{}'\nsleep 3\nexec \"$REAL\" \"$@\"",
            started.display()
        ),
    );
    let first = spawn_backup_until(&base.repo(), &base.db, &wrapper, &started);
    let t = Instant::now();
    let second = backup(&base.repo(), &base.db, &[]);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "second run waited {:?}",
        t.elapsed()
    );
    assert_eq!(second.code, 3, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("another pgward run is backing up database"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains(&format!("pid {}", first.id())),
        "{}",
        second.stderr
    );
    assert_eq!(second.json()["error"]["kind"], "busy");
    assert!(
        names_in(&base.repo().join("quarantine")).is_empty(),
        "a refused run quarantined something"
    );

    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(listed_ids(&base.repo()).len(), 2);
}

fn interrupt_mid_dump(signal: i32, expected_code: i32, name: &str) {
    let base = baseline(name, 3000);
    let marker = base.ws.path("paused");
    let sleeper_pid = base.ws.path("sleeper.pid");
    let wrapper = pg_dump_wrapper(
        &base.ws,
        "pg_dump_pausing",
        &format!(
            "\"$REAL\" \"$@\" | {{ head -c 30000; sh -c 'echo $$ > {p}; touch {m}; exec sleep 60'; cat; }}",
            m = marker.display(),
            p = sleeper_pid.display()
        ),
    );
    let child = spawn_backup_until(&base.repo(), &base.db, &wrapper, &marker);
    std::thread::sleep(Duration::from_millis(300));
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "pgward took {:?} to stop",
        t.elapsed()
    );
    let res = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let signal_name = if signal == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    let record = base.assert_failed_cleanly(
        &res,
        expected_code,
        &format!("backup interrupted by {signal_name}"),
    );
    assert_eq!(record["error"]["kind"], "interrupted");

    // The dump's whole process group is gone, not only its leader.
    let pid: i32 = std::fs::read_to_string(&sleeper_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains("State:\tZ"),
        "grandchild {pid} still alive: {state}"
    );
}

#[test]
fn sigterm_during_the_dump_quarantines_and_exits_143() {
    interrupt_mid_dump(libc::SIGTERM, 143, "sigterm");
}

#[test]
fn sigint_during_the_dump_quarantines_and_exits_130() {
    interrupt_mid_dump(libc::SIGINT, 130, "sigint");
}

#[test]
fn a_shrink_beyond_the_limit_is_refused_unless_allowed() {
    let base = baseline("shrink", 20_000);
    cluster().psql(&base.db, "DELETE FROM public.items WHERE id > 2000");
    let res = backup(&base.repo(), &base.db, &[]);
    let record = base.assert_failed_cleanly(&res, 1, "smaller than the previous backup");
    assert!(
        record["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the limit is 50%")
    );
    assert!(res.stderr.contains("--allow-shrink"), "{}", res.stderr);

    let res = backup(&base.repo(), &base.db, &["--allow-shrink"]);
    res.assert_ok();
    assert_eq!(listed_ids(&base.repo()).len(), 2);
}

#[test]
fn an_archive_below_the_size_floor_is_refused() {
    let base = baseline("floor", 100);
    let res = backup(&base.repo(), &base.db, &["--min-size", "1 GiB"]);
    base.assert_failed_cleanly(&res, 1, "below the minimum of 1073741824 bytes");
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Nothing can be written: the run fails before pg_dump starts, and the
/// earlier backup is untouched.
#[test]
fn an_unwritable_repository_fails_before_dumping() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let base = baseline("unwritable", 100);
    let mut cmd = pgward(&base.repo());
    cmd.args(["backup", "--dbname", &base.db]);
    if is_root() {
        // Root ignores permissions; run as nobody against root's 0700 repository.
        cmd.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(
            base.repo().join("tmp"),
            std::fs::Permissions::from_mode(0o500),
        )
        .unwrap();
    }
    let res = run(&mut cmd);
    if !is_root() {
        std::fs::set_permissions(
            base.repo().join("tmp"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
    }
    assert_eq!(res.code, 1, "{}", res.stderr);
    assert!(res.stderr.contains("Permission denied"), "{}", res.stderr);
    assert!(
        res.stderr
            .contains("hint: make the repository directory writable"),
        "{}",
        res.stderr
    );
    assert_eq!(snapshot(&base.repo().join("backups")), base.backups);
    assert_eq!(listed_ids(&base.repo()), base.ids);
    assert!(quarantine_records(&base.repo()).is_empty());
}

/// A small filesystem fills up in the middle of the dump.
#[test]
fn a_full_disk_is_quarantined_with_its_reason() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    struct Mount(PathBuf);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let ws = Workspace::new();
    let mount = Mount(ws.path("small"));
    std::fs::create_dir(&mount.0).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"])
        .arg(&mount.0)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs failed");
    let repo = mount.0.join("repo");
    let db = cluster().create_database("diskfull");
    load_rows(&db, "public.items", 100);
    backup(&repo, &db, &[]).assert_ok();
    let before = snapshot(&repo.join("backups"));
    load_rows(&db, "public.items", 60_000);

    let res = backup(&repo, &db, &[]);
    assert_eq!(res.code, 1, "{}", res.stderr);
    assert!(
        res.stderr.contains("No space left on device"),
        "{}",
        res.stderr
    );
    assert_eq!(snapshot(&repo.join("backups")), before);
    let records = quarantine_records(&repo);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(
        records[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No space left on device")
    );
    assert!(
        names_in(&repo.join("tmp")).is_empty(),
        "{:?}",
        names_in(&repo.join("tmp"))
    );
}

/// A run that died without cleaning up (SIGKILL) leaves a staging file; the
/// next run of that database moves it to quarantine.
#[test]
fn leftovers_of_a_killed_run_are_quarantined_by_the_next_run() {
    let base = baseline("leftover", 3000);
    let marker = base.ws.path("paused");
    let wrapper = pg_dump_wrapper(
        &base.ws,
        "pg_dump_pausing",
        &format!(
            "\"$REAL\" \"$@\" | {{ head -c 30000; touch '{}'; sleep 60; cat; }}",
            marker.display()
        ),
    );
    let mut child = spawn_backup_until(&base.repo(), &base.db, &wrapper, &marker);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        names_in(&base.repo().join("tmp")).len(),
        2,
        "staging file and reserved reason expected"
    );
    assert!(
        listed_ids(&base.repo()) == base.ids,
        "a killed run's file is listed"
    );

    let res = backup(&base.repo(), &base.db, &[]);
    res.assert_ok();
    let records = quarantine_records(&base.repo());
    assert_eq!(records.len(), 1);
    assert!(
        records[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("left behind by a run that died")
    );
    assert!(names_in(&base.repo().join("tmp")).is_empty());
}

/// Review finding: a pg_dump that reaches another database or server than
/// the one pgward checked (PGHOSTADDR, a service file, a container's own
/// settings) must fail, not produce a "complete" backup of the wrong data.
/// The exported snapshot makes PostgreSQL refuse it.
#[test]
fn a_pg_dump_that_reaches_another_database_fails_loudly() {
    let base = baseline("redirect", 100);
    let other = cluster().create_database("redirect_target");
    load_rows(&other, "public.items", 100);
    let socket = cluster().socket_dir.display().to_string();
    let wrapper = pg_dump_wrapper(
        &base.ws,
        "pg_dump_elsewhere",
        &format!(
            "exec \"$REAL\" \"$@\" \"--dbname=host={socket} port={} user=postgres dbname={other}\"",
            cluster().port
        ),
    );
    let res = backup(
        &base.repo(),
        &base.db,
        &["--pg-dump", wrapper.to_str().unwrap()],
    );
    let record = base.assert_failed_cleanly(&res, 1, "snapshot");
    assert_eq!(record["error"]["kind"], "dump");
}

/// A run that died between the two renames of its commit leaves an
/// artifact without a manifest: never listed or verifiable as a backup,
/// and moved to quarantine by the next run of that database.
#[test]
fn an_artifact_without_its_manifest_is_quarantined_by_the_next_run() {
    let base = baseline("orphan", 200);
    let id = &base.ids[0];
    let manifest = base
        .repo()
        .join("backups")
        .join(format!("{id}.manifest.json"));
    std::fs::remove_file(&manifest).unwrap();
    let list = run(pgward(&base.repo()).args(["--json", "list"]));
    list.assert_ok();
    assert!(list.json()["backups"].as_array().unwrap().is_empty());
    assert_eq!(
        list.json()["orphans"],
        serde_json::json!([format!("{id}.dump.zst")])
    );
    assert_eq!(run(pgward(&base.repo()).args(["verify", id])).code, 2);

    backup(&base.repo(), &base.db, &[]).assert_ok();
    let records = quarantine_records(&base.repo());
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(
        records[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("artifact without a manifest")
    );
    assert!(
        base.repo()
            .join("quarantine")
            .join(format!("{id}.dump.zst.partial"))
            .is_file()
    );
    assert_eq!(listed_ids(&base.repo()).len(), 1);
}

/// Review finding: a wrapper that leaves a descendant (in its own session,
/// out of reach of the process group) holding pg_dump's stdout must not
/// hang pgward: the run fails within seconds and is quarantined.
#[test]
fn a_descendant_holding_the_output_open_fails_instead_of_hanging() {
    let base = baseline("heldopen", 200);
    let wrapper = pg_dump_wrapper(
        &base.ws,
        "pg_dump_leaky",
        "\"$REAL\" \"$@\"\nsetsid sleep 60 &\nexit 0",
    );
    let started = Instant::now();
    let res = backup(
        &base.repo(),
        &base.db,
        &["--pg-dump", wrapper.to_str().unwrap()],
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    base.assert_failed_cleanly(&res, 1, "still held open by another process");
}
