//! Off-site repositories in an S3-compatible bucket, against a real S3
//! server (s3s-fs, SigV4 enforced) on 127.0.0.1: the storage contract on
//! disk and in the bucket, copies that verify, every reading command on
//! the bucket, credentials that fail loudly, a link that dies mid-upload,
//! damage found by `verify`, and `run` mirroring each new backup.

use crate::harness::*;
use pgward::storage::Storage;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const BUCKET: &str = "pgward-test";

/// A workspace with a config file naming the server's `[s3]` section
/// (and `extra` after it).
fn configured(server: &S3Server, ws: &Workspace, secret: &str, extra: &str) -> PathBuf {
    let credentials = server.credentials_file(ws, secret);
    let config = ws.file(
        "pgward.toml",
        &format!("{}{extra}", server.config_section(&credentials)),
    );
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    config
}

fn pgward_cfg(repo: &Path, config: &Path) -> std::process::Command {
    let mut cmd = pgward(repo);
    cmd.arg("--config").arg(config);
    cmd
}

fn url(prefix: &str) -> String {
    format!("s3://{BUCKET}/{prefix}")
}

/// The same calls, the same answers, on disk and in the bucket.
fn storage_contract(storage: &dyn Storage, leftovers: &dyn Fn() -> Vec<String>) {
    let place = storage.location();
    assert_eq!(storage.size("backups/none").unwrap(), None, "{place}");
    assert!(storage.list("backups").unwrap().is_empty(), "{place}");
    // put-if-absent: the second write is refused and changes nothing.
    storage.put_new("backups/a.json", b"first").unwrap();
    let again = storage.put_new("backups/a.json", b"second").unwrap_err();
    assert_eq!(again.kind(), ErrorKind::AlreadyExists, "{place}: {again}");
    assert_eq!(storage.read_whole("backups/a.json", 100).unwrap(), b"first");
    let too_big = storage.read_whole("backups/a.json", 3).unwrap_err();
    assert_eq!(too_big.kind(), ErrorKind::InvalidData, "{place}");
    // A large object in several parts, streamed, and read back.
    let big: Vec<u8> = (0..(12u32 << 20) + 12345)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut upload = storage.upload("backups/big.bin", None).unwrap();
    for chunk in big.chunks(100_000) {
        upload.write_all(chunk).unwrap();
    }
    assert_eq!(
        storage.size("backups/big.bin").unwrap(),
        None,
        "{place}: visible before finish"
    );
    upload.finish().unwrap();
    let mut read = Vec::new();
    storage
        .open("backups/big.bin")
        .unwrap()
        .read_to_end(&mut read)
        .unwrap();
    assert!(read == big, "{place}: the object read back differs");
    // A second upload to the same key is refused at the end, and the
    // object stays as it was.
    let mut upload = storage.upload("backups/big.bin", None).unwrap();
    upload.write_all(&[1u8; 6 << 20]).unwrap();
    let refused = upload.finish().unwrap_err();
    assert_eq!(
        refused.kind(),
        ErrorKind::AlreadyExists,
        "{place}: {refused}"
    );
    assert_eq!(
        storage.size("backups/big.bin").unwrap(),
        Some(big.len() as u64)
    );
    // An aborted upload leaves nothing: no object, no staging file, no
    // open multipart upload.
    let mut upload = storage
        .upload("backups/aborted.bin", Some(7 << 20))
        .unwrap();
    upload.write_all(&[2u8; 7 << 20]).unwrap();
    upload.abort().unwrap();
    assert_eq!(storage.size("backups/aborted.bin").unwrap(), None);
    assert_eq!(leftovers(), Vec::<String>::new(), "{place}");
    let mut names: Vec<(String, u64)> = storage
        .list("backups")
        .unwrap()
        .into_iter()
        .map(|o| (o.name, o.bytes))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("a.json".to_string(), 5),
            ("big.bin".to_string(), big.len() as u64)
        ],
        "{place}"
    );
    // Replacing is explicit, deleting is idempotent, keys stay inside.
    storage.put_replacing("backups/a.json", b"third").unwrap();
    assert_eq!(storage.read_whole("backups/a.json", 100).unwrap(), b"third");
    storage.delete("backups/a.json").unwrap();
    storage.delete("backups/a.json").unwrap();
    assert_eq!(storage.size("backups/a.json").unwrap(), None);
    for bad in ["../x", "/etc/passwd", "backups//x"] {
        assert_eq!(
            storage.put_new(bad, b"x").unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{place}: {bad}"
        );
    }
}

#[test]
fn the_storage_contract_holds_on_disk_and_in_a_bucket() {
    let ws = Workspace::new();
    let local_root = ws.path("local");
    std::fs::create_dir(&local_root).unwrap();
    let local = pgward::storage::local::LocalStorage::new(&local_root);
    let tmp = local_root.join("tmp");
    storage_contract(&local, &|| names_in(&tmp));

    let server = S3Server::start(BUCKET);
    let credentials = server.credentials_file(&ws, S3_SECRET_KEY);
    let config = pgward::Config::parse(&server.config_section(&credentials)).unwrap();
    let location = pgward::storage::s3::S3Location::parse(&url("contract"))
        .unwrap()
        .unwrap();
    let bucket =
        pgward::storage::s3::S3Storage::new(&location, &config.s3, &pgward::process_env).unwrap();
    storage_contract(&bucket, &|| server.open_uploads());
    // The objects really are in the bucket, under the prefix.
    assert!(
        server
            .object_path(BUCKET, "contract/backups/big.bin")
            .is_file()
    );

    // A record read while another host keeps replacing it (a lease being
    // renewed): each read returns one whole version, never a refusal.
    let busy = "locks/busy.lock";
    bucket.put_replacing(busy, b"0").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (bucket, stop) = (bucket.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                bucket
                    .put_replacing(busy, n.to_string().as_bytes())
                    .unwrap();
            }
            n
        })
    };
    let reads: Vec<_> = (0..80).map(|_| bucket.read_versioned(busy, 100)).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let replaced = writer.join().unwrap();
    assert!(replaced > 20, "only {replaced} replacements");
    for read in reads {
        let (bytes, version) = read.unwrap().expect("the record exists");
        assert!(std::str::from_utf8(&bytes).unwrap().parse::<u64>().is_ok());
        assert!(!version.is_empty());
    }
    bucket.delete(busy).unwrap();

    // A second read is of the version the first one saw: once the object
    // is replaced, a read pinned to the old version is refused. A
    // directory has no versions.
    let key = "backups/pinned.bin";
    bucket.put_replacing(key, b"one").unwrap();
    let opened = bucket.open_versioned(key).unwrap();
    assert_eq!(opened.bytes, 3);
    let version = opened.version.clone().expect("a bucket keeps versions");
    let read_all = |mut stream: Box<dyn Read + Send>| {
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).map(|_| bytes)
    };
    assert_eq!(read_all(opened.stream).unwrap(), b"one");
    assert_eq!(
        read_all(bucket.open_at_version(key, &version).unwrap()).unwrap(),
        b"one"
    );
    bucket.put_replacing(key, b"two!").unwrap();
    let refused = bucket
        .open_at_version(key, &version)
        .and_then(read_all)
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidData, "{refused}");
    assert!(refused.to_string().contains("was replaced"), "{refused}");
    let now = bucket.open_versioned(key).unwrap();
    assert_ne!(now.version.as_deref(), Some(version.as_str()));
    assert_eq!(read_all(now.stream).unwrap(), b"two!");
    bucket.delete(key).unwrap();
    std::fs::write(local_root.join("backups/pinned.bin"), b"one").unwrap();
    assert_eq!(local.open_versioned(key).unwrap().version, None);
    assert_eq!(
        local.open_at_version(key, "x").err().map(|e| e.kind()),
        Some(ErrorKind::Unsupported)
    );

    // Uploads left open (their writer gone without finishing or
    // aborting, as when a process is killed) are listed, across pages
    // (the server answers two at a time) and only under the prefix asked
    // for, and aborted by id; a directory has none.
    assert_eq!(local.open_uploads("backups/").unwrap(), Vec::new());
    let other = pgward::storage::s3::S3Storage::new(
        &pgward::storage::s3::S3Location::parse(&url("elsewhere"))
            .unwrap()
            .unwrap(),
        &config.s3,
        &pgward::process_env,
    )
    .unwrap();
    for (storage, key) in [
        (&bucket, "backups/left-1.bin"),
        (&bucket, "backups/left-2.bin"),
        (&bucket, "tmp/left-3.bin"),
        (&other, "backups/left-4.bin"),
    ] {
        // Enough for a third part: the writer has waited for the first,
        // so the upload has begun on the server.
        let mut upload = storage.upload(key, None).unwrap();
        upload.write_all(&vec![3u8; 17 << 20]).unwrap();
        std::mem::forget(upload);
    }
    wait_until("four uploads open", || server.open_uploads().len() == 4);
    let mut open = bucket.open_uploads("backups/").unwrap();
    open.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = open.iter().map(|u| u.key.as_str()).collect();
    assert_eq!(keys, ["backups/left-1.bin", "backups/left-2.bin"]);
    assert!(
        open.iter()
            .all(|u| !u.id.is_empty() && u.initiated.is_some())
    );
    assert_eq!(bucket.open_uploads("").unwrap().len(), 3);
    assert_eq!(bucket.open_uploads("backups/left-2").unwrap().len(), 1);
    for upload in &open {
        bucket.abort_open_upload(upload).unwrap();
    }
    // Aborting one that is gone already is not an error.
    bucket.abort_open_upload(&open[0]).unwrap();
    assert_eq!(bucket.open_uploads("backups/").unwrap(), Vec::new());
    assert_eq!(server.open_uploads().len(), 2);
    for upload in bucket.open_uploads("").unwrap() {
        bucket.abort_open_upload(&upload).unwrap();
    }
    for upload in other.open_uploads("").unwrap() {
        other.abort_open_upload(&upload).unwrap();
    }
    assert_eq!(server.open_uploads(), Vec::<String>::new());

    // Versions (for the leases of runs in a bucket): a replacement at a
    // stale version is refused and changes nothing, one at the current
    // version goes through; a directory has no versions.
    assert_eq!(bucket.read_versioned("locks/x.lock", 100).unwrap(), None);
    bucket.put_new("locks/x.lock", b"one").unwrap();
    let (body, first) = bucket.read_versioned("locks/x.lock", 100).unwrap().unwrap();
    assert_eq!(body, b"one");
    let second = bucket
        .replace_if_version("locks/x.lock", b"two", &first)
        .unwrap();
    assert_ne!(second, first);
    let stale = bucket
        .replace_if_version("locks/x.lock", b"three", &first)
        .unwrap_err();
    assert_eq!(stale.kind(), ErrorKind::AlreadyExists, "{stale}");
    assert_eq!(
        bucket.read_versioned("locks/x.lock", 100).unwrap(),
        Some((b"two".to_vec(), second.clone()))
    );
    bucket.delete_if_version("locks/x.lock", &second).unwrap();
    assert_eq!(bucket.size("locks/x.lock").unwrap(), None);
    assert_eq!(
        local
            .read_versioned("backups/a.json", 100)
            .unwrap_err()
            .kind(),
        ErrorKind::Unsupported
    );
}

/// A database with rows, backed up into the workspace's local repository.
fn backed_up(ws: &Workspace, hint: &str, rows: u32) -> (String, Value) {
    let db = cluster().create_database(hint);
    load_rows(&db, "public.items", rows);
    let res = backup(&ws.repo(), &db, &[]);
    res.assert_ok();
    (db, res.json()["manifest"].clone())
}

#[test]
fn a_backup_copied_to_a_bucket_lists_verifies_restores_and_drills_from_it() {
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let config = configured(&server, &ws, S3_SECRET_KEY, "");
    let (db, manifest) = backed_up(&ws, "offsite", 3000);
    let id = manifest["id"].as_str().unwrap();
    let remote = url("prod");

    let copied = run(pgward_cfg(&ws.repo(), &config).args([
        "--json",
        "copy",
        "latest",
        "--database",
        &db,
        "--to",
        &remote,
    ]));
    copied.assert_ok();
    let report = copied.json();
    assert_eq!(report["backups"][0]["id"], id, "{report}");
    assert_eq!(report["backups"][0]["outcome"], "copied");
    // Byte for byte the local files, at the keys of the local layout.
    let artifact = manifest["artifact"]["file"].as_str().unwrap();
    for file in [artifact.to_string(), format!("{id}.manifest.json")] {
        assert_eq!(
            std::fs::read(server.object_path(BUCKET, &format!("prod/backups/{file}"))).unwrap(),
            std::fs::read(ws.repo().join("backups").join(&file)).unwrap(),
            "{file}"
        );
    }
    assert!(server.open_uploads().is_empty());

    // Every reading command works on the bucket.
    let on_bucket = |args: &[&str]| {
        run(pgward_cfg(&ws.repo(), &config)
            .arg("--repo")
            .arg(&remote)
            .args(args))
    };
    let list = on_bucket(&["--json", "list"]);
    list.assert_ok();
    assert_eq!(listed_backup_ids(&list.json()), [id]);
    let verified = on_bucket(&["--json", "verify", id]);
    verified.assert_ok();
    let checks = verified.json()["checks"].clone();
    for name in ["artifact sha256", "archive sha256"] {
        assert!(
            checks
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == name && c["ok"] == true),
            "{name}: {checks}"
        );
    }
    let target = format!("{db}_from_s3");
    on_bucket(&["--json", "restore", id, "--to", &target]).assert_ok();
    assert_eq!(
        cluster().psql(&target, "SELECT count(*) FROM public.items"),
        "3000"
    );
    let drilled = on_bucket(&["--json", "drill", id]);
    drilled.assert_ok();
    assert_eq!(
        drilled.json()["record"]["verdict"],
        "pass",
        "{}",
        drilled.stdout
    );
    // The drill's verdict is kept in the bucket beside the backup.
    let record: Value = serde_json::from_slice(
        &std::fs::read(server.object_path(BUCKET, &format!("prod/backups/{id}.drill.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(record["verdict"], "pass");

    // A backup or copy of this database writing into the bucket from
    // another host holds its lock there: a copy waits its turn (exit 3).
    let lock = server.object_path(
        BUCKET,
        &format!("prod/locks/{}.lock", pgward::repository::database_key(&db)),
    );
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let held = lock_record(&db, "other-host", "2999-01-01T00:00:00Z");
    std::fs::write(&lock, &held).unwrap();
    let busy = run(pgward_cfg(&ws.repo(), &config).args(["copy", id, "--to", &remote]));
    assert_eq!(busy.code, 3, "{}", busy.stderr);
    assert!(busy.stderr.contains("host other-host"), "{}", busy.stderr);
    std::fs::remove_file(&lock).unwrap();

    // Copying again changes nothing; --all finds nothing missing.
    let again = run(pgward_cfg(&ws.repo(), &config).args(["--json", "copy", id, "--to", &remote]));
    again.assert_ok();
    assert_eq!(again.json()["backups"][0]["outcome"], "already-there");
    let all =
        run(pgward_cfg(&ws.repo(), &config).args(["--json", "copy", "--all", "--to", &remote]));
    all.assert_ok();
    let outcomes: Vec<Value> = all.json()["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["outcome"].clone())
        .collect();
    assert_eq!(outcomes, [serde_json::json!("already-there")]);

    // A copy back from the bucket into a new local repository verifies
    // there too (the journal of the new repository starts with it).
    let back = ws.path("restored-repo");
    let home = run(pgward_cfg(&ws.repo(), &config)
        .arg("--repo")
        .arg(&remote)
        .args(["--json", "copy", id, "--to"])
        .arg(&back));
    home.assert_ok();
    // The journal of the local destination vouches for the copy, also for
    // one that arrives after the journal has begun.
    let journal_check = |id: &str| {
        let verified = run(pgward(&back).args(["--json", "verify", id]));
        verified.assert_ok();
        verified.json()["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "journal record")
            .cloned()
            .unwrap()
    };
    let check = journal_check(id);
    assert_eq!(check["ok"], true, "{check}");
    assert_ne!(check["skipped"], true, "{check}");
    let later = backup(&ws.repo(), &db, &[]);
    later.assert_ok();
    let later_id = later.json()["manifest"]["id"].as_str().unwrap().to_string();
    run(pgward_cfg(&ws.repo(), &config)
        .args(["copy", &later_id, "--to"])
        .arg(&back))
    .assert_ok();
    let check = journal_check(&later_id);
    assert_eq!(check["ok"], true, "{check}");
    assert!(
        check["detail"].as_str().unwrap().contains("(copy "),
        "{check}"
    );

    // A restore that streams (one job, no spool) from the bucket writes its
    // list and TOC files only into a private directory of its own.
    let tmpdir = ws.path("tmpdir");
    std::fs::create_dir(&tmpdir).unwrap();
    let uid = run(std::process::Command::new("id").arg("-u"))
        .stdout
        .trim()
        .to_string();
    let private = tmpdir.join(format!("pgward-{uid}"));
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let streamed = format!("{db}_streamed");
    let refused = run(pgward_cfg(&ws.repo(), &config)
        .env("TMPDIR", &tmpdir)
        .arg("--repo")
        .arg(&remote)
        .args(["restore", id, "--jobs", "1", "--to", &streamed]));
    refused.assert_exit(1);
    assert!(
        refused.stderr.contains("is not a private directory"),
        "{}",
        refused.stderr
    );
    std::fs::remove_dir(&private).unwrap();
    run(pgward_cfg(&ws.repo(), &config)
        .env("TMPDIR", &tmpdir)
        .arg("--repo")
        .arg(&remote)
        .args(["--json", "restore", id, "--jobs", "1", "--to", &streamed]))
    .assert_ok();
    assert_eq!(
        cluster().psql(&streamed, "SELECT count(*) FROM public.items"),
        "3000"
    );
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(names_in(&private).is_empty(), "{:?}", names_in(&private));

    // The same repository under another spelling is no second copy.
    let alias = format!("{}/./", ws.repo().display());
    let same = run(pgward_cfg(&ws.repo(), &config).args(["copy", id, "--to", &alias]));
    same.assert_exit(2);
    assert!(
        same.stderr.contains("both the source and the destination"),
        "{}",
        same.stderr
    );

    // A command that keeps its plans beside the backups refuses the
    // bucket, with what to do instead.
    let refused = on_bucket(&["grants", "--dbname", &db]);
    refused.assert_exit(2);
    assert!(
        refused.stderr.contains("is object storage"),
        "{}",
        refused.stderr
    );
    assert!(!ws.repo().join("s3:").exists() && !Path::new("s3:").exists());
}

#[test]
fn a_wrong_secret_or_a_missing_bucket_is_one_clear_error_and_nothing_is_written() {
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let (_db, manifest) = backed_up(&ws, "badcreds", 200);
    let id = manifest["id"].as_str().unwrap();
    let config = configured(&server, &ws, "not-the-secret", "");
    let res = run(pgward_cfg(&ws.repo(), &config).args(["copy", id, "--to", &url("x")]));
    assert_ne!(res.code, 0);
    let first = res.stderr.lines().next().unwrap_or_default();
    assert!(first.contains("SignatureDoesNotMatch"), "{}", res.stderr);
    assert!(
        first.contains(&ws.path("s3-credentials").display().to_string()),
        "{}",
        res.stderr
    );
    assert!(!res.stderr.contains("not-the-secret") && !res.stdout.contains("not-the-secret"));
    assert!(names_in(&server.data.path().join(BUCKET)).is_empty());

    let config = configured(&server, &ws, S3_SECRET_KEY, "");
    let res =
        run(pgward_cfg(&ws.repo(), &config).args(["copy", id, "--to", "s3://no-such-bucket/x"]));
    assert_ne!(res.code, 0);
    assert!(
        res.stderr.contains("bucket does not exist"),
        "{}",
        res.stderr
    );
    assert!(!server.data.path().join("no-such-bucket").exists());
    let res = run(pgward_cfg(&ws.repo(), &config).args([
        "list",
        "--repo",
        "s3://pgward-test/never-written",
    ]));
    res.assert_exit(2);
    assert!(
        res.stderr
            .contains("no pgward repository at s3://pgward-test/never-written"),
        "{}",
        res.stderr
    );
}

#[test]
fn a_link_that_dies_mid_upload_lists_nothing_and_the_next_copy_completes() {
    let ws = Workspace::new();
    let mut server = S3Server::start(BUCKET);
    // The cut-off copy cannot release its lock in the bucket: it lasts
    // until its lease runs out.
    let config = configured(&server, &ws, S3_SECRET_KEY, "lock-lease = \"2s\"\n");
    let (db, first) = backed_up(&ws, "midupload", 300);
    let remote = url("prod");
    run(pgward_cfg(&ws.repo(), &config).args([
        "copy",
        first["id"].as_str().unwrap(),
        "--to",
        &remote,
    ]))
    .assert_ok();
    // A second backup of several parts, copied through a link that stalls
    // after 7 MB, while the server is killed.
    let db_rows = cluster().psql(&db, "SELECT 1");
    assert_eq!(db_rows, "1");
    cluster().psql(
        &db,
        "CREATE TABLE noise AS SELECT g, md5(random()::text) || md5(random()::text) AS a, \
         md5(random()::text) || md5(random()::text) AS b FROM generate_series(1, 250000) g",
    );
    let second = backup(&ws.repo(), &db, &[]);
    second.assert_ok();
    let second = second.json()["manifest"].clone();
    let id = second["id"].as_str().unwrap().to_string();
    assert!(
        second["artifact"]["bytes"].as_u64().unwrap() > 12 << 20,
        "{second}"
    );
    let stall = 7 << 20;
    let proxy = StallingProxy::start(server.port, stall);
    let via_proxy = ws.file(
        "via-proxy.toml",
        &std::fs::read_to_string(&config).unwrap().replace(
            &server.endpoint(),
            &format!("http://127.0.0.1:{}", proxy.port),
        ),
    );
    let child = pgward_cfg(&ws.repo(), &via_proxy)
        .args(["copy", &id, "--to", &remote])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    proxy.wait_stalled(stall);
    server.kill();
    proxy.cut();
    let out = child.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nothing was listed at the destination"),
        "{stderr}"
    );

    server.restart();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let on_bucket = |args: &[&str]| {
        run(pgward_cfg(&ws.repo(), &config)
            .arg("--repo")
            .arg(&remote)
            .args(args))
    };
    let list = on_bucket(&["--json", "list"]);
    list.assert_ok();
    assert_eq!(
        listed_backup_ids(&list.json()),
        [first["id"].as_str().unwrap()]
    );
    on_bucket(&["verify", first["id"].as_str().unwrap()]).assert_ok();
    // The killed server kept the upload it was receiving open.
    assert_eq!(server.open_uploads().len(), 1);
    // The next copy aborts it, completes, and verifies.
    let again =
        run(pgward_cfg(&ws.repo(), &config).args(["--json", "copy", "--all", "--to", &remote]));
    again.assert_ok();
    let outcome_of = |report: &Value, id: &str| {
        report["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .map(|b| b["outcome"].clone())
    };
    let again = again.json();
    assert_eq!(
        outcome_of(&again, &id),
        Some(Value::from("copied")),
        "{again}"
    );
    assert_eq!(
        outcome_of(&again, first["id"].as_str().unwrap()),
        Some(Value::from("already-there"))
    );
    assert_eq!(server.open_uploads(), Vec::<String>::new());
    on_bucket(&["verify", &id]).assert_ok();
}

/// A database whose backup is several 5 MiB parts (random text barely
/// compresses).
fn noisy(ws: &Workspace, hint: &str) -> (String, Value) {
    let db = cluster().create_database(hint);
    cluster().psql(
        &db,
        "CREATE TABLE noise AS SELECT g, md5(random()::text) || md5(random()::text) AS a, \
         md5(random()::text) || md5(random()::text) AS b FROM generate_series(1, 120000) g",
    );
    let res = backup(&ws.repo(), &db, &[]);
    res.assert_ok();
    let manifest = res.json()["manifest"].clone();
    assert!(
        manifest["artifact"]["bytes"].as_u64().unwrap() > 6 << 20,
        "{manifest}"
    );
    (db, manifest)
}

#[test]
fn a_damaged_source_aborts_its_upload_and_damage_in_the_bucket_is_named() {
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let config = configured(&server, &ws, S3_SECRET_KEY, "");
    let (db, manifest) = noisy(&ws, "damaged");
    let id = manifest["id"].as_str().unwrap().to_string();
    let file = manifest["artifact"]["file"].as_str().unwrap().to_string();
    let remote = url("prod");
    // A flipped byte near the end of the local artifact: parts were sent
    // before the copy hashed its way there; it aborts the multipart upload
    // and lists nothing.
    let artifact = ws.repo().join("backups").join(&file);
    let original = std::fs::read(&artifact).unwrap();
    let mut flipped = original.clone();
    let late = flipped.len() - 1000;
    flipped[late] ^= 0x10;
    std::fs::write(&artifact, &flipped).unwrap();
    let res = run(pgward_cfg(&ws.repo(), &config).args(["copy", &id, "--to", &remote]));
    res.assert_exit(1);
    assert!(
        res.stderr.contains(&format!("backup {id} is damaged")),
        "{}",
        res.stderr
    );
    assert!(
        server.open_uploads().is_empty(),
        "{:?}",
        server.open_uploads()
    );
    assert!(
        !server
            .object_path(BUCKET, &format!("prod/backups/{file}"))
            .exists()
    );
    assert!(
        !server
            .object_path(BUCKET, &format!("prod/backups/{id}.manifest.json"))
            .exists()
    );

    // A leftover artifact with the wrong bytes (a copy cut off before its
    // manifest) is replaced; the copy then verifies.
    std::fs::write(&artifact, &original).unwrap();
    let credentials = server.credentials_file(&ws, S3_SECRET_KEY);
    let settings = pgward::Config::parse(&server.config_section(&credentials)).unwrap();
    let bucket = pgward::storage::s3::S3Storage::new(
        &pgward::storage::s3::S3Location::parse(&remote)
            .unwrap()
            .unwrap(),
        &settings.s3,
        &pgward::process_env,
    )
    .unwrap();
    bucket
        .put_new(&format!("backups/{file}"), b"not the artifact")
        .unwrap();
    run(pgward_cfg(&ws.repo(), &config).args(["copy", &id, "--to", &remote])).assert_ok();
    let object = server.object_path(BUCKET, &format!("prod/backups/{file}"));
    assert_eq!(std::fs::read(&object).unwrap(), original);

    // Another manifest under a backup's name is never replaced.
    let second = backup(&ws.repo(), &db, &[]);
    second.assert_ok();
    let second_id = second.json()["manifest"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    bucket
        .put_new(&format!("backups/{second_id}.manifest.json"), b"{}")
        .unwrap();
    let res = run(pgward_cfg(&ws.repo(), &config).args(["copy", &second_id, "--to", &remote]));
    res.assert_exit(1);
    assert!(
        res.stderr.contains("holds another manifest"),
        "{}",
        res.stderr
    );
    assert_eq!(
        bucket
            .read_whole(&format!("backups/{second_id}.manifest.json"), 10)
            .unwrap(),
        b"{}"
    );
    // `--all` stops there, and the journal still records the copy it
    // found in place before it.
    let res = run(pgward_cfg(&ws.repo(), &config).args(["copy", "--all", "--to", &remote]));
    res.assert_exit(1);
    let log = run(pgward_cfg(&ws.repo(), &config).args(["--json", "log", "--command", "copy"]));
    log.assert_ok();
    let last = log.json()["records"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(last["outcome"], "failed", "{last}");
    let copied = format!("copied {id} to {remote}");
    assert!(
        last["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == copied.as_str()),
        "{last}"
    );

    // Damage in the bucket is named by verify there.
    std::fs::write(&object, &flipped).unwrap();
    let res = run(pgward_cfg(&ws.repo(), &config)
        .arg("--repo")
        .arg(&remote)
        .args(["verify", &id, "--database", &db]));
    res.assert_exit(1);
    assert!(
        res.stderr.contains("failed verification: artifact sha256"),
        "{}",
        res.stderr
    );
}

#[test]
fn run_copies_each_new_backup_to_its_mirrors_and_check_proves_the_bucket() {
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let remote = url("mirror");
    let policy = "\n[policy]\nkeep-last = 5\n";
    let config = configured(
        &server,
        &ws,
        S3_SECRET_KEY,
        &format!("{policy}\n[[mirror]]\nrepository = \"{remote}\"\n"),
    );
    let db = cluster().create_database("mirrored");
    load_rows(&db, "public.items", 500);
    let checked = run(pgward_cfg(&ws.repo(), &config).args(["--json", "check", "--dbname", &db]));
    let report = checked.json();
    assert_eq!(check_row(&report, "mirror")["status"], "PASS", "{report}");
    assert_eq!(
        check_row(&report, "mirror.conditional-writes")["status"],
        "PASS",
        "{report}"
    );
    // The probe object is gone again.
    assert!(names_in(&server.object_path(BUCKET, "mirror/tmp")).is_empty());

    let ran = run(pgward_cfg(&ws.repo(), &config).args(["--json", "run", "--dbname", &db]));
    ran.assert_ok();
    let out = ran.json();
    let steps = |out: &Value, name: &str| -> Vec<Value> {
        out["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == name)
            .cloned()
            .collect()
    };
    assert_eq!(steps(&out, "mirror")[0]["status"], "ok", "{out}");
    assert_eq!(steps(&out, "prune")[0]["status"], "ok", "{out}");
    let id = out["backup-id"].as_str().unwrap().to_string();
    let list = run(pgward_cfg(&ws.repo(), &config).args(["--json", "list", "--repo", &remote]));
    list.assert_ok();
    assert_eq!(listed_backup_ids(&list.json()), [id.as_str()]);
    // The journal records the copy, and status says where it is.
    let status = run(pgward_cfg(&ws.repo(), &config).args(["--json", "status"]));
    let status = status.json();
    let row = status["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["database"] == db.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(row["last-backup"]["id"], id.as_str(), "{status}");
    assert_eq!(
        row["last-backup"]["copies"],
        serde_json::json!([remote]),
        "{status}"
    );

    // Two mirrors, the first one broken: the second still gets tonight's
    // backup, the run fails, and nothing is pruned.
    let two = ws.file(
        "two-mirrors.toml",
        &format!(
            "{}\n[[mirror]]\nrepository = \"/dev/null/pgward-mirror\"\n\n[[mirror]]\nrepository = \"{remote}\"\n",
            std::fs::read_to_string(&config)
                .unwrap()
                .replace(&format!("\n[[mirror]]\nrepository = \"{remote}\"\n"), "")
        ),
    );
    // check says beforehand what run will find.
    let checked = run(pgward_cfg(&ws.repo(), &two).args(["--json", "check", "--dbname", &db]));
    let report = checked.json();
    assert_eq!(check_row(&report, "mirror")["status"], "FAIL", "{report}");
    let ran = run(pgward_cfg(&ws.repo(), &two).args(["--json", "run", "--dbname", &db]));
    assert_eq!(ran.code, 1, "{}", ran.stdout);
    let out = ran.json();
    let mirrors = steps(&out, "mirror");
    assert_eq!(mirrors.len(), 2, "{out}");
    assert_eq!(mirrors[0]["status"], "failed", "{out}");
    assert_eq!(mirrors[1]["status"], "ok", "{out}");
    let prune = &steps(&out, "prune")[0];
    assert_eq!(prune["status"], "skipped", "{out}");
    assert!(
        prune["detail"]
            .as_str()
            .unwrap()
            .contains("did not reach the mirror /dev/null/pgward-mirror"),
        "{out}"
    );
    let second = out["backup-id"].as_str().unwrap();
    let list = run(pgward_cfg(&ws.repo(), &config).args(["--json", "list", "--repo", &remote]));
    assert_eq!(listed_backup_ids(&list.json()), [second, id.as_str()]);

    // With the bucket unreachable, the mirror step fails the run, and
    // nothing is pruned on its strength.
    drop(server);
    let ran = run(pgward_cfg(&ws.repo(), &config).args(["--json", "run", "--dbname", &db]));
    assert_eq!(ran.code, 1, "{}", ran.stdout);
    let out = ran.json();
    assert_eq!(steps(&out, "backup")[0]["status"], "ok", "{out}");
    assert_eq!(steps(&out, "mirror")[0]["status"], "failed", "{out}");
    assert!(
        steps(&out, "prune")[0]["detail"]
            .as_str()
            .unwrap()
            .contains("did not reach the mirror"),
        "{out}"
    );
}

#[test]
fn prune_keeps_what_the_policy_keeps_in_a_bucket() {
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let config = configured(&server, &ws, S3_SECRET_KEY, "\n[policy]\nkeep-last = 1\n");
    let db = cluster().create_database("bucketprune");
    load_rows(&db, "public.items", 100);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let res = backup(&ws.repo(), &db, &[]);
        res.assert_ok();
        ids.push(res.json()["manifest"]["id"].as_str().unwrap().to_string());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let remote = url("pruned");
    run(pgward_cfg(&ws.repo(), &config).args(["copy", "--all", "--to", &remote])).assert_ok();
    let on_bucket = |args: &[&str]| {
        run(pgward_cfg(&ws.repo(), &config)
            .arg("--repo")
            .arg(&remote)
            .args(args))
    };
    let dry = on_bucket(&["--json", "prune", "--dry-run"]);
    dry.assert_ok();
    assert_eq!(
        names_in(&server.object_path(BUCKET, "pruned/backups")).len(),
        6
    );
    let pruned = on_bucket(&["--json", "prune"]);
    pruned.assert_ok();
    assert_eq!(pruned.json()["deleted"], 2, "{}", pruned.stdout);
    let list = on_bucket(&["--json", "list"]);
    assert_eq!(listed_backup_ids(&list.json()), [ids[2].as_str()]);
    // Everything of the removed backups is gone, the markers too.
    let left = names_in(&server.object_path(BUCKET, "pruned/backups"));
    assert!(left.iter().all(|n| n.starts_with(&ids[2])), "{left:?}");
    assert!(names_in(&server.object_path(BUCKET, "pruned/tmp")).is_empty());
    on_bucket(&["verify", &ids[2]]).assert_ok();
}

#[test]
fn a_mirror_with_prune_follows_the_policy_after_the_local_prune() {
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let remote = url("pruned-mirror");
    let config = configured(
        &server,
        &ws,
        S3_SECRET_KEY,
        &format!(
            "\n[policy]\nkeep-last = 1\n\n[[mirror]]\nrepository = \"{remote}\"\nprune = true\n"
        ),
    );
    let db = cluster().create_database("mirrorprune");
    load_rows(&db, "public.items", 100);
    let mut last = String::new();
    for _ in 0..2 {
        let ran = run(pgward_cfg(&ws.repo(), &config).args(["--json", "run", "--dbname", &db]));
        ran.assert_ok();
        let out = ran.json();
        let step = out["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "mirror-prune")
            .cloned()
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(step["status"], "ok", "{out}");
        last = out["backup-id"].as_str().unwrap().to_string();
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let list = run(pgward_cfg(&ws.repo(), &config).args(["--json", "list", "--repo", &remote]));
    assert_eq!(listed_backup_ids(&list.json()), [last.as_str()]);
    let local = run(pgward_cfg(&ws.repo(), &config).args(["--json", "list"]));
    assert_eq!(listed_backup_ids(&local.json()), [last.as_str()]);
}

#[test]
fn a_bucket_that_stops_delivering_is_a_failed_read_not_a_damaged_backup() {
    let ws = Workspace::new();
    let server = S3Server::start(BUCKET);
    let config = configured(&server, &ws, S3_SECRET_KEY, "");
    let (db, manifest) = noisy(&ws, "cutread");
    let id = manifest["id"].as_str().unwrap().to_string();
    let remote = url("prod");
    run(pgward_cfg(&ws.repo(), &config).args(["copy", &id, "--to", &remote])).assert_ok();
    // Reads through a link that dies after 3 MB of answers (the first
    // pass over the stored bytes), or 2 MB into the second pass (the
    // restore's, and the content check's).
    let size = manifest["artifact"]["bytes"].as_u64().unwrap();
    // (size + 600: about where the second pass's requests begin.)
    for cut_after in [3 << 20, size + 600, size + (2 << 20)] {
        for (command, args) in [
            (
                "verify",
                vec!["verify", id.as_str(), "--database", db.as_str()],
            ),
            (
                "drill",
                vec!["drill", id.as_str(), "--database", db.as_str()],
            ),
        ] {
            let proxy = CuttingProxy::start(server.port, cut_after);
            let cut = ws.file(
                &format!("cut-{command}.toml"),
                &std::fs::read_to_string(&config).unwrap().replace(
                    &server.endpoint(),
                    &format!("http://127.0.0.1:{}", proxy.port),
                ),
            );
            let res = run(pgward_cfg(&ws.repo(), &cut)
                .arg("--repo")
                .arg(&remote)
                .args(&args));
            res.assert_exit(1);
            let first = res.stderr.lines().next().unwrap_or_default();
            assert!(
                first.contains("failed: "),
                "{command} cut at {cut_after}: {}",
                res.stderr
            );
            assert!(
                !res.stderr.contains("damaged") && !res.stderr.contains("failed verification"),
                "{command} cut at {cut_after}: {}",
                res.stderr
            );
        }
    }
    // No drill verdict was recorded on the strength of a failed read.
    assert!(
        !server
            .object_path(BUCKET, &format!("prod/backups/{id}.drill.json"))
            .exists()
    );
    // With the link whole, the backup verifies.
    run(pgward_cfg(&ws.repo(), &config)
        .arg("--repo")
        .arg(&remote)
        .args(["verify", &id, "--database", &db]))
    .assert_ok();
}
