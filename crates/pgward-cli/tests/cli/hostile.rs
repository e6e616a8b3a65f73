//! A repository that defends itself: names read back from it are checked
//! against the grammar pgward writes, paths never leave it, links, FIFOs
//! and devices are refused before anything blocks on them, one damaged
//! file never stops the rest, the files a drill writes are private, and a
//! repository other users can write is refused.

use crate::harness::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A database with one backup in its own repository.
struct Backed {
    ws: Workspace,
    db: String,
    id: String,
}

fn backed(hint: &str) -> Backed {
    let ws = Workspace::new();
    let db = cluster().create_database(hint);
    load_rows(&db, "public.items", 300);
    let res = backup(&ws.repo(), &db, &[]);
    res.assert_ok();
    let id = res.json()["id"].as_str().unwrap().to_string();
    Backed { ws, db, id }
}

impl Backed {
    fn backups(&self) -> PathBuf {
        self.ws.repo().join("backups")
    }

    fn manifest_path(&self) -> PathBuf {
        self.backups().join(format!("{}.manifest.json", self.id))
    }

    fn manifest(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.manifest_path()).unwrap()).unwrap()
    }

    fn artifact(&self) -> PathBuf {
        self.backups().join(format!("{}.dump.zst", self.id))
    }

    fn pgward(&self, args: &[&str]) -> Run {
        run(pgward(&self.ws.repo()).args(args))
    }

    fn list(&self) -> Value {
        let res = self.pgward(&["--json", "list"]);
        res.assert_ok();
        res.json()
    }
}

/// Runs `cmd`, killing it after `limit`: (exit code, stderr, elapsed).
fn run_with_limit(cmd: &mut std::process::Command, limit: Duration) -> (i32, String, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.code().unwrap_or(-1), stderr, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn paths_read_from_the_repository_never_leave_it() {
    let b = backed("hs_paths");
    let outside = b.ws.path("outside.dump.zst");
    std::fs::copy(b.artifact(), &outside).unwrap();

    // An artifact name that climbs out: the manifest is damaged, nothing
    // is read from outside, and the backup is no longer listed.
    let mut manifest = b.manifest();
    manifest["artifact"]["file"] = Value::from("../../outside.dump.zst");
    std::fs::write(b.manifest_path(), manifest.to_string()).unwrap();
    let list = b.list();
    assert!(listed_backup_ids(&list).is_empty(), "{list}");
    let found = damaged_files(&list);
    assert_eq!(found.len(), 1, "{list}");
    assert!(
        found[0]
            .1
            .contains("its artifact file \"../../outside.dump.zst\" is not"),
        "{found:?}"
    );
    let res = b.pgward(&["verify", &b.id]);
    res.assert_exit(1);
    assert!(
        res.stderr.contains(&format!("backup {} is damaged", b.id)),
        "{}",
        res.stderr
    );
    let res = b.pgward(&["restore", &b.id, "--to", "hs_paths_never"]);
    res.assert_exit(1);
    assert!(res.stderr.contains("is damaged"), "{}", res.stderr);

    // An id that is a path: damaged too.
    let mut manifest = b.manifest();
    manifest["artifact"]["file"] = Value::from(format!("{}.dump.zst", b.id));
    manifest["id"] = Value::from("../../outside/evil");
    std::fs::write(b.manifest_path(), manifest.to_string()).unwrap();
    let list = b.list();
    assert!(listed_backup_ids(&list).is_empty(), "{list}");
    assert!(
        damaged_files(&list)[0].1.contains("\"../../outside/evil\""),
        "{list}"
    );

    // A manifest whose name is no backup id at all is never a backup.
    manifest["id"] = Value::from(b.id.as_str());
    std::fs::write(b.manifest_path(), manifest.to_string()).unwrap();
    std::fs::write(b.backups().join("evil.manifest.json"), manifest.to_string()).unwrap();
    let list = b.list();
    assert_eq!(listed_backup_ids(&list), vec![b.id.as_str()], "{list}");
    assert_eq!(damaged_files(&list)[0].0, "backups/evil.manifest.json");

    // The artifact a link: refused even though the file it points at is
    // the real artifact, byte for byte.
    std::fs::remove_file(b.artifact()).unwrap();
    std::os::unix::fs::symlink(&outside, b.artifact()).unwrap();
    let res = b.pgward(&["--json", "verify", &b.id]);
    res.assert_exit(1);
    assert!(
        res.stdout
            .contains("a symbolic link, which pgward does not follow in its repository"),
        "{}",
        res.stdout
    );
    let res = b.pgward(&["restore", &b.id, "--to", "hs_paths_link"]);
    res.assert_exit(1);
    assert!(res.stderr.contains("a symbolic link"), "{}", res.stderr);
}

#[test]
fn a_fifo_or_a_device_in_place_of_the_artifact_does_not_hang() {
    let b = backed("hs_fifo");
    std::fs::remove_file(b.artifact()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", b.artifact()).unwrap();
    let (code, stderr, took) = run_with_limit(
        pgward(&b.ws.repo()).args(["verify", &b.id]),
        Duration::from_secs(20),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    std::fs::remove_file(b.artifact()).unwrap();
    let fifo = std::ffi::CString::new(b.artifact().to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    for args in [vec!["verify", b.id.as_str()], vec!["drill", b.id.as_str()]] {
        let (code, stderr, _) =
            run_with_limit(pgward(&b.ws.repo()).args(&args), Duration::from_secs(20));
        assert_ne!(code, 0, "{args:?}: {stderr}");
        assert!(stderr.contains("not a regular file"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_manifest_or_artifact_others_can_write_is_not_trusted() {
    let b = backed("hs_filemode");
    // pgward writes them private.
    for path in [b.manifest_path(), b.artifact()] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    set_mode(&b.manifest_path(), 0o666);
    let list = b.list();
    assert!(listed_backup_ids(&list).is_empty(), "{list}");
    let causes = damaged_files(&list);
    assert!(
        causes
            .iter()
            .any(|(_, c)| c.contains("writable by group or others")),
        "{causes:?}"
    );
    b.pgward(&["verify", &b.id]).assert_exit(1);
    set_mode(&b.manifest_path(), 0o644);
    assert_eq!(
        listed_backup_ids(&b.list()),
        vec![b.id.clone()],
        "read-only for others is fine"
    );

    set_mode(&b.artifact(), 0o620);
    let res = b.pgward(&["--json", "verify", &b.id]);
    res.assert_exit(1);
    assert!(
        res.stdout.contains("writable by group or others"),
        "{}",
        res.stdout
    );
    let res = run(pgward(&b.ws.repo())
        .env("PGWARD_SHARED_REPOSITORY", "1")
        .args(["verify", &b.id]));
    res.assert_ok();
    set_mode(&b.artifact(), 0o600);
    b.pgward(&["verify", &b.id]).assert_ok();
}

#[test]
fn one_damaged_file_cannot_stop_the_rest() {
    let b = backed("hs_damaged");
    let other = backed("hs_damaged_other");
    // A second backup of the same database, then its manifest turns to junk.
    let res = backup(&b.ws.repo(), &b.db, &[]);
    res.assert_ok();
    let newer = res.json()["id"].as_str().unwrap().to_string();
    let junk = b.backups().join(format!("{newer}.manifest.json"));
    std::fs::write(&junk, "{ not json").unwrap();
    // And a drill record and a quarantine record that cannot be read.
    std::fs::write(b.backups().join(format!("{}.drill.json", b.id)), "junk").unwrap();
    std::fs::write(b.ws.repo().join("quarantine").join("x.reason.json"), "junk").unwrap();

    let list = b.list();
    assert_eq!(listed_backup_ids(&list), vec![b.id.as_str()], "{list}");
    let files: Vec<String> = damaged_files(&list).into_iter().map(|(f, _)| f).collect();
    for file in [
        format!("backups/{newer}.manifest.json"),
        format!("backups/{}.drill.json", b.id),
        "quarantine/x.reason.json".to_string(),
    ] {
        assert!(files.contains(&file), "{file}: {files:?}");
    }
    let text = b.pgward(&["list"]);
    assert!(
        text.stdout
            .contains(&format!("DAMAGED backups/{newer}.manifest.json")),
        "{}",
        text.stdout
    );
    // The artifact of the damaged manifest is no orphan and stays.
    assert!(b.backups().join(format!("{newer}.dump.zst")).is_file());

    // latest is the newest intact backup; the damaged one by name is an
    // integrity error that says why.
    let res = b.pgward(&["--json", "verify", "latest"]);
    res.assert_ok();
    assert_eq!(res.json()["id"], b.id.as_str());
    let res = b.pgward(&["verify", &newer]);
    res.assert_exit(1);
    assert!(res.stderr.contains("is damaged"), "{}", res.stderr);

    // A backup of the same database goes on, compared with the newest
    // intact backup, and says so; another database's is not bothered.
    let res = backup(&b.ws.repo(), &b.db, &[]);
    res.assert_ok();
    let warnings = res.json()["warnings"].to_string();
    assert!(
        warnings.contains(&format!(
            "{newer}.manifest.json is damaged (not a readable manifest"
        )) && warnings.contains(&format!("compared with the newest intact backup {}", b.id)),
        "{warnings}"
    );
    let res = backup(&b.ws.repo(), &other.db, &[]);
    res.assert_ok();
    assert_eq!(res.json()["warnings"], serde_json::json!([]));

    // check: FAIL for the database whose manifest is damaged, WARN for
    // another database's.
    let row = |db: &str| -> Value {
        let res = b.pgward(&["--json", "check", "--dbname", db]);
        res.json()["matrix"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == "repository.catalog")
            .cloned()
            .unwrap_or_else(|| panic!("no catalog row: {}", res.stdout))
    };
    assert_eq!(row(&b.db)["status"], "FAIL");
    assert_eq!(row(&other.db)["status"], "WARN");
}

#[test]
fn every_file_a_drill_writes_is_private() {
    let b = backed("hs_modes");
    // pg_dump runs for the schema comparison while the drill's files are
    // all in tmp/: the wrapper writes down their modes.
    let modes = b.ws.path("modes");
    let wrapper = b.ws.script(
        "pg_dump",
        &format!(
            "stat -c '%a %n' {}/* >> {} 2>/dev/null\nexec {} \"$@\"",
            b.ws.repo().join("tmp").display(),
            modes.display(),
            real_pg_dump()
        ),
    );
    let config = b.ws.file(
        "pgward.toml",
        &format!("[pg-dump]\npath = \"{}\"\n", wrapper.display()),
    );
    for jobs in ["2", "1"] {
        let res = run(pgward(&b.ws.repo())
            .arg("--config")
            .arg(&config)
            .args(["drill", "latest", "--jobs", jobs]));
        res.assert_ok();
    }
    let seen = std::fs::read_to_string(&modes).unwrap();
    assert!(seen.contains("schema.list"), "{seen}");
    for line in seen.lines() {
        assert!(line.starts_with("600 "), "{line}");
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_repository_other_users_can_write_is_refused() {
    let b = backed("hs_perms");
    let before = snapshot(&b.backups());
    for (dir, mode) in [("", 0o777), ("backups", 0o770), ("tmp", 0o722)] {
        let path = b.ws.repo().join(dir);
        set_mode(&path, mode);
        for args in [
            vec!["backup", "--dbname", b.db.as_str()],
            vec!["verify", "latest"],
            vec!["list"],
        ] {
            let res = b.pgward(&args);
            res.assert_exit(2);
            assert!(
                res.stderr.contains("is writable by")
                    && res.stderr.contains("chmod go-w")
                    && res.stderr.contains("PGWARD_SHARED_REPOSITORY=1"),
                "{args:?}: {}",
                res.stderr
            );
        }
        let res = b.pgward(&["--json", "check", "--dbname", &b.db]);
        res.assert_exit(1);
        let row = check_row(&res.json(), "repository.permissions");
        assert_eq!(row["status"], "FAIL");
        // The documented override for shared setups: others may write,
        // as in /tmp only with the sticky bit.
        let shared = |args: &[&str]| {
            run(pgward(&b.ws.repo())
                .env("PGWARD_SHARED_REPOSITORY", "1")
                .args(args))
        };
        let res = shared(&["verify", "latest"]);
        res.assert_exit(2);
        assert!(
            res.stderr.contains("without the sticky bit") && res.stderr.contains("chmod +t"),
            "{}",
            res.stderr
        );
        set_mode(&path, mode | 0o1000);
        shared(&["verify", "latest"]).assert_ok();
        set_mode(&path, 0o700);
    }
    assert_eq!(snapshot(&b.backups()), before);

    // Owned by someone else (not root): refused.
    if unsafe { libc::geteuid() } == 0 {
        let backups = std::ffi::CString::new(b.backups().to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::chown(backups.as_ptr(), 65534, 65534) }, 0);
        let res = b.pgward(&["list"]);
        res.assert_exit(2);
        assert!(
            res.stderr.contains("is owned by uid 65534"),
            "{}",
            res.stderr
        );
        assert_eq!(unsafe { libc::chown(backups.as_ptr(), 0, 0) }, 0);
        b.pgward(&["list"]).assert_ok();
    }
}

#[test]
fn leftovers_of_dead_runs_are_cleaned_up_by_the_next_run_of_any_database() {
    let b = backed("hs_left");
    let tmp = b.ws.repo().join("tmp");
    let quarantine = b.ws.repo().join("quarantine");
    let id = |db: &str, n: u32| format!("20260101T00000{n}Z-{db}-000{n}");
    let other = "hs_left_other";
    let busy = "hs_left_busy";
    // What kills left behind (the states a killed run leaves at each
    // point of its commit), for this database, another whose lock is
    // free, and one whose run holds its lock.
    let write = |name: String, body: &[u8]| std::fs::write(tmp.join(name), body).unwrap();
    write(
        format!("{}.reason.json.reserved", id(&b.db, 1)),
        &[b' '; 8192],
    );
    write(format!("{}.reason.json.reserved", id(&b.db, 2)), b"");
    write(
        format!("{}.manifest.json.tmp", id(&b.db, 3)),
        b"{\"id\": 3}\n",
    );
    let mut partial = b"{\"id\": \"x\", \"err".to_vec();
    partial.extend([b' '; 100]);
    write(format!("{}.reason.json.reserved", id(&b.db, 4)), &partial);
    write("pgward-repository.json.2147483646.tmp".to_string(), b"{");
    write(format!("{}.manifest.json.tmp", id(other, 5)), b"{}\n");
    write(
        format!("{}.reason.json.reserved", id(other, 6)),
        &[b' '; 10],
    );
    write(format!("{}.manifest.json.tmp", id(busy, 7)), b"{}\n");
    let lock = b.ws.repo().join("locks").join(format!("{busy}.lock"));
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));

    let res = backup(&b.ws.repo(), &b.db, &[]);
    let _ = holder.kill();
    let _ = holder.wait();
    res.assert_ok();

    let mut left = names_in(&tmp);
    left.sort();
    assert_eq!(left, [format!("{}.manifest.json.tmp", id(busy, 7))]);
    let kept = names_in(&quarantine);
    for name in [
        format!("{}.manifest.json.partial", id(&b.db, 3)),
        format!("{}.reason.json.partial", id(&b.db, 4)),
        format!("{}.manifest.json.partial", id(other, 5)),
    ] {
        assert!(kept.contains(&name), "{name}: {kept:?}");
    }
    assert_eq!(kept.len(), 3, "{kept:?}");
    // Evidence is kept as it was.
    assert_eq!(
        std::fs::read(quarantine.join(format!("{}.reason.json.partial", id(&b.db, 4)))).unwrap(),
        partial
    );
    // None of it is a backup.
    assert_eq!(listed_backup_ids(&b.list()).len(), 2);
}

/// Every leaf of a manifest as a JSON pointer, with its value.
fn leaves(value: &Value, at: String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                leaves(
                    child,
                    format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, child) in items.iter().enumerate() {
                leaves(child, format!("{at}/{i}"), out);
            }
        }
        other => out.push((at, other.clone())),
    }
}

/// The value one step away: a number plus one, a string with its last
/// character changed, a boolean negated, an empty list with one entry.
fn one_step(value: &Value) -> Value {
    match value {
        Value::Number(n) => Value::from(n.as_u64().map_or(1, |n| n + 1)),
        Value::String(s) => {
            let mut changed: Vec<char> = s.chars().collect();
            match changed.last_mut() {
                Some(c) => *c = if *c == '0' { '1' } else { '0' },
                None => changed.push('x'),
            }
            Value::from(changed.into_iter().collect::<String>())
        }
        Value::Bool(b) => Value::from(!b),
        Value::Array(_) => serde_json::json!(["x"]),
        Value::Null => Value::from("x"),
        Value::Object(_) => serde_json::json!({"x": 1}),
    }
}

#[test]
fn every_manifest_field_changed_by_one_step_is_detected() {
    let b = backed("hs_fields");
    let original = std::fs::read(b.manifest_path()).unwrap();
    let manifest = b.manifest();
    let mut fields = Vec::new();
    leaves(&manifest, String::new(), &mut fields);
    assert!(fields.len() > 50, "{}", fields.len());
    // Changed and left as it is: the manifest digest shows every one.
    for (pointer, value) in &fields {
        let mut edited = manifest.clone();
        *edited.pointer_mut(pointer).unwrap() = one_step(value);
        std::fs::write(b.manifest_path(), edited.to_string()).unwrap();
        let res = b.pgward(&["verify", &b.id]);
        assert_eq!(
            res.code, 1,
            "{pointer} changed and not detected: {}",
            res.stderr
        );
    }
    // Changed and the digest recomputed, as anyone who can write the
    // repository could: what the archive holds is still caught.
    for pointer in [
        "/database",
        "/server/version",
        "/archive/version",
        "/archive/toc-entries",
        "/archive/bytes",
        "/archive/sha256",
        "/artifact/bytes",
        "/artifact/sha256",
        "/content/encoding",
        "/tables/0/rows",
        "/tables/0/bytes",
        "/tables/0/fingerprint",
        "/tables/0/table",
    ] {
        let mut edited = manifest.clone();
        let value = edited.pointer(pointer).unwrap().clone();
        *edited.pointer_mut(pointer).unwrap() = one_step(&value);
        reseal(&mut edited);
        std::fs::write(b.manifest_path(), edited.to_string()).unwrap();
        let res = b.pgward(&["verify", &b.id]);
        assert_eq!(
            res.code, 1,
            "{pointer} resealed and not detected: {}",
            res.stderr
        );
    }
    std::fs::write(b.manifest_path(), &original).unwrap();
    b.pgward(&["verify", &b.id]).assert_ok();
}

#[test]
fn random_bit_flips_in_a_manifest_are_always_detected() {
    let b = backed("hs_flips");
    let original = std::fs::read(b.manifest_path()).unwrap();
    // A fixed xorshift sequence: the same flips on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..150 {
        let mut flipped = original.clone();
        let bit = (next() % (flipped.len() as u64 * 8)) as usize;
        flipped[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(b.manifest_path(), &flipped).unwrap();
        let list = b.list();
        assert!(
            listed_backup_ids(&list).is_empty(),
            "bit {bit} flipped and still a backup: {}",
            String::from_utf8_lossy(&flipped)
        );
    }
    std::fs::write(b.manifest_path(), &original).unwrap();
    assert_eq!(listed_backup_ids(&b.list()), vec![b.id.as_str()]);
}

#[test]
fn hostile_files_in_tmp_backups_and_a_fresh_root_change_nothing_outside() {
    let b = backed("hs_planted");
    let tmp = b.ws.repo().join("tmp");
    let victim = b.ws.path("victim");
    std::fs::write(&victim, "keep me").unwrap();
    // A staging leftover whose reservation is a link to a file outside,
    // and an artifact-like file whose name is no backup id.
    let dead = format!("20260101T000000Z-{}-dead", b.db);
    std::fs::write(tmp.join(format!("{dead}.dump.zst.tmp")), "partial").unwrap();
    std::os::unix::fs::symlink(&victim, tmp.join(format!("{dead}.reason.json.reserved"))).unwrap();
    std::fs::write(
        b.backups()
            .join(format!("20260101T000000Z-{}-zz.dump.zst", b.db)),
        "junk",
    )
    .unwrap();
    // A damaged manifest beside an encrypted artifact.
    let encrypted = format!("20260102T000000Z-{}-beef", b.db);
    std::fs::write(b.backups().join(format!("{encrypted}.manifest.json")), "{").unwrap();
    std::fs::write(b.backups().join(format!("{encrypted}.dump.zst.gpg")), "x").unwrap();

    // No recipient configured: the damaged encrypted backup counts.
    let res = backup(&b.ws.repo(), &b.db, &[]);
    res.assert_exit(2);
    assert!(
        res.stderr
            .contains("is damaged and its backup was encrypted"),
        "{}",
        res.stderr
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    // Unencrypted on purpose: the backup runs, the leftover is
    // quarantined with a record of its own, the link is gone, the junk
    // name is left alone, and the file outside is untouched.
    let config = b.ws.file("plain.toml", "[encryption]\nrequired = false\n");
    let res = run(pgward(&b.ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["--json", "backup", "--dbname", &b.db]));
    res.assert_ok();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    let quarantined = names_in(&b.ws.repo().join("quarantine"));
    assert!(
        quarantined.contains(&format!("{dead}.dump.zst.partial"))
            && quarantined.contains(&format!("{dead}.reason.json")),
        "{quarantined:?}"
    );
    assert!(!tmp.join(format!("{dead}.reason.json.reserved")).exists());
    assert!(
        b.backups()
            .join(format!("20260101T000000Z-{}-zz.dump.zst", b.db))
            .exists()
    );

    // A drill record that cannot be read: the backup's last drill is
    // unknown, not "never".
    std::fs::write(b.backups().join(format!("{}.drill.json", b.id)), "junk").unwrap();
    let list = b.list();
    let row = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == b.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["last-drill"]["verdict"], "damaged", "{row}");

    // A world-writable directory given as a new repository: refused
    // before anything is created in it.
    let open_dir = b.ws.path("open");
    std::fs::create_dir(&open_dir).unwrap();
    set_mode(&open_dir, 0o777);
    let res = backup(&open_dir, &b.db, &[]);
    res.assert_exit(2);
    assert!(names_in(&open_dir).is_empty(), "{:?}", names_in(&open_dir));
}

#[test]
fn a_manifest_of_a_newer_format_stops_latest_and_backups_of_its_database() {
    let b = backed("hs_newer");
    let mut newer = b.manifest();
    // Another id of the same database and second.
    let suffix = if b.id.ends_with("ffff") {
        "0000"
    } else {
        "ffff"
    };
    let newer_id = format!("{}{suffix}", &b.id[..b.id.len() - 4]);
    newer["id"] = Value::from(newer_id.as_str());
    newer["format-version"] = Value::from(99);
    std::fs::write(
        b.backups().join(format!("{newer_id}.manifest.json")),
        newer.to_string(),
    )
    .unwrap();
    let res = b.pgward(&["verify", "latest"]);
    res.assert_exit(2);
    assert!(
        res.stderr.contains("of unsupported format"),
        "{}",
        res.stderr
    );
    // Named by its id, the intact backup still verifies.
    b.pgward(&["verify", &b.id]).assert_ok();
    let res = backup(&b.ws.repo(), &b.db, &[]);
    res.assert_exit(2);
    assert!(res.stderr.contains("v99"), "{}", res.stderr);
}
