//! Encrypted backups against real GnuPG: what is written (a binary
//! OpenPGP message that stock `gpg --decrypt | zstd -d` turns back into the
//! exact archive), who can read it, which recipients are refused before
//! anything is written, how `verify` treats keys, wrong keys and damage,
//! that no plaintext ever touches the disk, and `pgward key`.
//!
//! Every test has its own throwaway GNUPGHOME (short path: gpg-agent's
//! socket path must stay under ~100 bytes) and kills its agents at the end.

use crate::harness::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCHEME: &str = "openpgp-seipdv1-aes256";

/// A throwaway GnuPG home with its own agent.
pub(crate) struct Gpg {
    home: PathBuf,
    _short: Option<tempfile::TempDir>,
}

impl Gpg {
    pub(crate) fn new(ws: &Workspace, name: &str) -> Gpg {
        let wanted = ws.path(name);
        // gpg-agent's socket lives in the home; its path must stay short.
        let (home, short) = if wanted.as_os_str().len() > 60 {
            let dir = tempfile::Builder::new()
                .prefix("pgw-gpg-")
                .tempdir_in("/tmp")
                .unwrap();
            (dir.path().to_path_buf(), Some(dir))
        } else {
            std::fs::create_dir(&wanted).unwrap();
            (wanted, None)
        };
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        Gpg {
            home,
            _short: short,
        }
    }

    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new("gpg");
        cmd.env("GNUPGHOME", &self.home)
            .arg("--batch")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs gpg, panics on failure, returns stdout.
    #[track_caller]
    pub(crate) fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.command().args(args).output().expect("run gpg");
        assert!(
            out.status.success(),
            "gpg {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `gpg --quick-gen-key UID ALGO USAGE EXPIRE` without a passphrase;
    /// returns the primary fingerprint. `uid` must be unique in this home.
    fn generate(&self, uid: &str, algo: &str, usage: &str, expire: &str, extra: &[&str]) -> String {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend([
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            algo,
            usage,
            expire,
        ]);
        self.ok(&args);
        self.fingerprint(uid)
    }

    /// The `--with-colons` records (type, fingerprint-or-capabilities) of
    /// one key: pub/sub lines with their capabilities, fpr lines with the
    /// fingerprint.
    fn colons(&self, who: &str) -> Vec<(String, String)> {
        let out = self.ok(&["--with-colons", "--list-keys", &format!("={who}")]);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                match fields[0] {
                    "pub" | "sub" => Some((fields[0].to_string(), fields[11].to_string())),
                    "fpr" => Some(("fpr".to_string(), fields[9].to_string())),
                    _ => None,
                }
            })
            .collect()
    }

    /// The first `fpr` line: the primary key's fingerprint.
    fn fingerprint(&self, who: &str) -> String {
        let colons = self.colons(who);
        let fpr = colons
            .iter()
            .find(|(kind, _)| kind == "fpr")
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no fingerprint for {who}: {colons:?}"));
        assert_eq!(fpr.len(), 40, "{fpr}");
        fpr
    }

    /// The fingerprint of the (one) encryption-capable subkey, as gpg says.
    fn encryption_subkey(&self, who: &str) -> String {
        let colons = self.colons(who);
        let mut found = Vec::new();
        for pair in colons.windows(2) {
            if pair[0].0 == "sub" && pair[0].1.contains('e') && pair[1].0 == "fpr" {
                found.push(pair[1].1.clone());
            }
        }
        assert_eq!(found.len(), 1, "one encryption subkey: {colons:?}");
        found.pop().unwrap()
    }

    fn export_public(&self, fpr: &str, path: &Path, armor: bool) {
        let mut args = vec!["--export"];
        if armor {
            args.push("--armor");
        }
        args.push(fpr);
        let bytes = self.ok(&args);
        assert!(!bytes.is_empty(), "nothing exported for {fpr}");
        std::fs::write(path, bytes).unwrap();
    }

    /// The unprotected secret key, in a 0600 file.
    fn export_secret(&self, fpr: &str, path: &Path) {
        let bytes = self.ok(&[
            "--export-secret-keys",
            "--armor",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            fpr,
        ]);
        assert!(!bytes.is_empty(), "no secret exported for {fpr}");
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// Imports the revocation certificate gpg made at generation time.
    fn revoke(&self, fpr: &str) {
        let stored = self
            .home
            .join("openpgp-revocs.d")
            .join(format!("{fpr}.rev"));
        let text = std::fs::read_to_string(&stored).unwrap();
        let armored = text.replace(":-----BEGIN PGP", "-----BEGIN PGP");
        let file = self.home.join("revoke.asc");
        std::fs::write(&file, armored).unwrap();
        self.ok(&["--import", file.to_str().unwrap()]);
    }

    /// `gpg --decrypt ARTIFACT > OUT` with `extra` options; returns gpg's
    /// status lines (`--status-fd`).
    #[track_caller]
    fn decrypt(&self, artifact: &Path, out: &Path, extra: &[&str]) -> String {
        let output = self
            .command()
            .args(["--status-fd", "1", "--yes", "--output"])
            .arg(out)
            .args(extra)
            .arg("--decrypt")
            .arg(artifact)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "gpg --decrypt failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args(["--kill", "all"])
            .env("GNUPGHOME", &self.home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A key in its own home, exported: armored certificate and unprotected
/// secret key (mode 0600) in the workspace.
pub(crate) struct Key {
    pub(crate) fingerprint: String,
    pub(crate) encryption_key: String,
    pub(crate) certificate: PathBuf,
    pub(crate) secret: PathBuf,
}

pub(crate) fn make_key(ws: &Workspace, gpg: &Gpg, name: &str) -> Key {
    let uid = format!("{name} <{name}@example.invalid>");
    let fingerprint = gpg.generate(&uid, "default", "default", "never", &[]);
    let certificate = ws.path(&format!("{name}.pub.asc"));
    let secret = ws.path(&format!("{name}.sec.asc"));
    gpg.export_public(&fingerprint, &certificate, true);
    gpg.export_secret(&fingerprint, &secret);
    Key {
        encryption_key: gpg.encryption_subkey(&uid),
        fingerprint,
        certificate,
        secret,
    }
}

/// `…` and the last 8 hex digits, as pgward abbreviates fingerprints.
fn short(fpr: &str) -> String {
    format!("…{}", &fpr[fpr.len() - 8..])
}

/// The way people write pins: lower case, groups of four.
fn spaced_lower(fpr: &str) -> String {
    fpr.to_lowercase()
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A config file with `[[encryption.recipient]]` tables (and `extra` TOML
/// before them).
pub(crate) fn recipients_config(
    ws: &Workspace,
    name: &str,
    recipients: &[(&Path, &str)],
    extra: &str,
) -> PathBuf {
    let mut text = String::from(extra);
    for (certificate, fingerprint) in recipients {
        text.push_str(&format!(
            "\n[[encryption.recipient]]\ncertificate = \"{}\"\nfingerprint = \"{fingerprint}\"\n",
            certificate.display()
        ));
    }
    ws.file(name, &text)
}

/// A new database with `rows` rows, backed up encrypted to `key` alone;
/// returns the backup id and the artifact's path.
fn encrypted_backup(ws: &Workspace, key: &Key, hint: &str, rows: u32) -> (String, PathBuf) {
    let db = cluster().create_database(hint);
    load_rows(&db, "public.items", rows);
    let config = recipients_config(
        ws,
        "pgward.toml",
        &[(&key.certificate, &key.fingerprint)],
        "",
    );
    let res = backup_with(&ws.repo(), &db, &config);
    res.assert_ok();
    let id = res.json()["id"].as_str().unwrap().to_string();
    let artifact = ws
        .repo()
        .join(res.json()["envelope"]["artifact-ref"].as_str().unwrap());
    (id, artifact)
}

pub(crate) fn backup_with(repo: &Path, db: &str, config: &Path) -> Run {
    run(pgward(repo)
        .arg("--config")
        .arg(config)
        .args(["--json", "backup", "--dbname", db]))
}

fn verify_cmd(repo: &Path, id: &str) -> Command {
    let mut cmd = pgward(repo);
    cmd.env_remove("PGWARD_SECRET_KEY")
        .env_remove("PGWARD_PASSPHRASE_FILE")
        .args(["--json", "verify", id]);
    cmd
}

/// Detaches the child from any controlling terminal, so /dev/tty cannot be
/// opened and pgward must not wait for a passphrase prompt.
pub(crate) fn without_terminal(cmd: &mut Command) -> &mut Command {
    // SAFETY: setsid is async-signal-safe and has no preconditions.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd
}

/// name -> (ok, skipped) of a verify report.
fn checks(report: &serde_json::Value) -> BTreeMap<String, (bool, bool)> {
    report["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks in {report}"))
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                (
                    c["ok"].as_bool().unwrap(),
                    c["skipped"].as_bool().unwrap_or(false),
                ),
            )
        })
        .collect()
}

fn failed_checks(report: &serde_json::Value) -> Vec<String> {
    checks(report)
        .into_iter()
        .filter(|(_, (ok, _))| !ok)
        .map(|(name, _)| name)
        .collect()
}

/// A verify run that decrypted and proved everything.
#[track_caller]
fn assert_fully_verified(res: &Run) {
    res.assert_ok();
    let report = res.json();
    assert_eq!(report["message-type"], "verify");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["content-checked"], true, "{report}");
    let checks = checks(&report);
    for name in [
        "artifact size",
        "artifact sha256",
        "decryption",
        "decompression",
        "archive size",
        "archive sha256",
        "table data",
    ] {
        assert_eq!(checks.get(name), Some(&(true, false)), "{name}: {report}");
    }
    assert!(
        checks.values().all(|(ok, skipped)| *ok && !skipped),
        "{report}"
    );
}

/// The OpenPGP packet tag of the first packet (old or new format).
fn first_packet_tag(bytes: &[u8]) -> u8 {
    let b = bytes[0];
    assert!(b & 0x80 != 0, "not a binary OpenPGP packet: {b:#x}");
    if b & 0x40 != 0 {
        b & 0x3f
    } else {
        (b >> 2) & 0x0f
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir` that contains `needle` (files that vanish
/// while being scanned are skipped: this runs during a backup).
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if kind.is_file()
            && let Ok(bytes) = std::fs::read(&path)
            && contains(&bytes, needle)
        {
            found.push(path);
        }
    }
    found
}

fn create_marker_table(db: &str, marker: &str, rows: u32) {
    cluster().psql(
        db,
        &format!(
            "CREATE TABLE public.secrets (id int PRIMARY KEY, body text); \
             INSERT INTO public.secrets SELECT g, '{marker}-' || g FROM generate_series(1, {rows}) g"
        ),
    );
}

type Snapshot = BTreeMap<PathBuf, Vec<u8>>;

/// Fails naming the files that appeared, vanished or changed (not their
/// bytes).
#[track_caller]
fn assert_unchanged(before: &Snapshot, after: &Snapshot, what: &str) {
    let changed: Vec<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|path| before.get(*path) != after.get(*path))
        .collect();
    assert!(changed.is_empty(), "{what}: changed {changed:?}");
}

/// The repository without its lock files (a run that takes the lock
/// rewrites its own pid there).
fn without_locks(mut files: Snapshot, repo: &Path) -> Snapshot {
    files.retain(|path, _| !path.starts_with(repo.join("locks")));
    files
}

fn backup_files(repo: &Path) -> Vec<String> {
    names_in(&repo.join("backups"))
}

#[test]
fn an_encrypted_backup_round_trips_through_stock_gpg_zstd_and_pg_restore() {
    let ws = Workspace::new();
    let gpg = Gpg::new(&ws, "g");
    let key = make_key(&ws, &gpg, "ops");
    // A binary certificate works as well as an armored one.
    let binary_cert = ws.path("ops.pub.gpg");
    gpg.export_public(&key.fingerprint, &binary_cert, false);
    let db = cluster().create_database("enc_roundtrip");
    let marker = "PLAINTEXT-MARKER-roundtrip";
    create_marker_table(&db, marker, 5000);
    load_rows(&db, "public.items", 1000);

    let config = recipients_config(
        &ws,
        "pgward.toml",
        &[(&binary_cert, &spaced_lower(&key.fingerprint))],
        "",
    );
    let res = backup_with(&ws.repo(), &db, &config);
    res.assert_ok();
    let out = res.json();
    let manifest = &out["manifest"];
    let envelope = &out["envelope"];
    let id = manifest["id"].as_str().unwrap().to_string();
    assert_eq!(manifest["format-version"], 7);

    // The artifact: ID.dump.zst.gpg, nothing unencrypted beside it.
    let file_name = format!("{id}.dump.zst.gpg");
    assert_eq!(manifest["artifact"]["file"], file_name.as_str());
    assert_eq!(
        backup_files(&ws.repo()),
        vec![file_name.clone(), format!("{id}.manifest.json")]
    );
    let artifact = ws.repo().join("backups").join(&file_name);
    let stored = std::fs::read(&artifact).unwrap();
    assert_eq!(
        first_packet_tag(&stored),
        1,
        "the message starts with a public-key encrypted session key packet"
    );
    assert!(!contains(&stored, marker.as_bytes()));
    assert_eq!(
        std::fs::metadata(&artifact).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The envelope equals the manifest and the file on disk.
    let stored_sha = sha256_file(&artifact);
    assert_eq!(envelope["id"], id.as_str());
    assert_eq!(
        envelope["artifact-ref"],
        format!("backups/{file_name}").as_str()
    );
    assert_eq!(envelope["stored-bytes"], stored.len() as u64);
    assert_eq!(envelope["stored-bytes"], manifest["artifact"]["bytes"]);
    assert_eq!(envelope["stored-sha256"], stored_sha.as_str());
    assert_eq!(envelope["stored-sha256"], manifest["artifact"]["sha256"]);
    assert_eq!(envelope["archive-bytes"], manifest["archive"]["bytes"]);
    assert_eq!(envelope["archive-sha256"], manifest["archive"]["sha256"]);
    assert_eq!(envelope["encryption-scheme"], SCHEME);
    assert_eq!(
        envelope["recipient-fingerprints"],
        serde_json::json!([key.fingerprint])
    );
    let encryption = &manifest["artifact"]["encryption"];
    assert_eq!(encryption["scheme"], SCHEME);
    assert_eq!(
        encryption["recipients"],
        serde_json::json!([{
            "fingerprint": key.fingerprint,
            "encryption-key": key.encryption_key,
            "certificate": binary_cert.display().to_string(),
        }])
    );

    // Stock gpg decrypts it (SEIPDv1 with MDC, AES-256) and zstd -d gives
    // the exact archive, which pg_restore reads.
    let compressed = ws.path("plain.dump.zst");
    let status = gpg.decrypt(&artifact, &compressed, &[]);
    assert!(
        status.contains("[GNUPG:] DECRYPTION_INFO 2 9"),
        "not SEIPDv1 (mdc 2) with AES-256 (9): {status}"
    );
    assert!(status.contains("[GNUPG:] DECRYPTION_OKAY"), "{status}");
    assert!(status.contains("[GNUPG:] GOODMDC"), "{status}");
    let tar = ws.path("plain.tar");
    zstd(&["-d"], &compressed, &tar);
    assert_eq!(
        sha256_file(&tar),
        envelope["archive-sha256"].as_str().unwrap()
    );
    assert_eq!(
        std::fs::metadata(&tar).unwrap().len(),
        envelope["archive-bytes"].as_u64().unwrap()
    );
    assert!(contains(&std::fs::read(&tar).unwrap(), marker.as_bytes()));
    let listed = Command::new("pg_restore")
        .arg("--list")
        .arg(&tar)
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "pg_restore --list: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let toc = String::from_utf8_lossy(&listed.stdout);
    assert!(toc.contains("TABLE DATA public secrets"), "{toc}");
    assert!(toc.contains("TABLE DATA public items"), "{toc}");

    // verify without a key: the stored bytes only, and it says so.
    let res = run(&mut verify_cmd(&ws.repo(), &id));
    res.assert_ok();
    let report = res.json();
    assert_eq!(report["message-type"], "verify");
    assert_eq!(report["ok"], true);
    assert_eq!(report["content-checked"], false);
    let without = checks(&report);
    assert_eq!(without.get("decryption"), Some(&(true, true)), "{report}");
    assert_eq!(without.get("artifact sha256"), Some(&(true, false)));
    assert_eq!(without.get("artifact size"), Some(&(true, false)));
    assert!(!without.contains_key("archive sha256"), "{report}");
    let text = run(pgward(&ws.repo())
        .env_remove("PGWARD_SECRET_KEY")
        .args(["verify", &id]));
    text.assert_ok();
    assert!(
        text.stdout.contains("content NOT checked"),
        "{}",
        text.stdout
    );

    // With the secret key, or through gpg, everything is proven.
    let res = run(verify_cmd(&ws.repo(), &id)
        .arg("--secret-key")
        .arg(&key.secret));
    assert_fully_verified(&res);
    let res = run(verify_cmd(&ws.repo(), "latest")
        .arg("--gpg")
        .env("GNUPGHOME", &gpg.home));
    assert_fully_verified(&res);
    let text = run(pgward(&ws.repo())
        .args(["verify", &id, "--secret-key"])
        .arg(&key.secret));
    text.assert_ok();
    assert!(text.stdout.contains("intact"), "{}", text.stdout);
    assert!(!text.stdout.contains("NOT"), "{}", text.stdout);

    // list names the key.
    let list = run(pgward(&ws.repo()).args(["--json", "list"]));
    list.assert_ok();
    assert_eq!(list.json()["backups"][0]["encryption"], *encryption);
    let list = run(pgward(&ws.repo()).arg("list"));
    list.assert_ok();
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{}", list.stdout));
    assert!(line.contains(&short(&key.fingerprint)), "{}", list.stdout);
    assert!(list.stdout.contains("KEY"), "{}", list.stdout);
}

#[test]
fn every_recipient_alone_can_decrypt() {
    let ws = Workspace::new();
    let gpg_a = Gpg::new(&ws, "ga");
    let gpg_b = Gpg::new(&ws, "gb");
    let a = make_key(&ws, &gpg_a, "alice");
    let b = make_key(&ws, &gpg_b, "bob");
    assert_ne!(a.fingerprint, b.fingerprint);
    let db = cluster().create_database("enc_multi");
    load_rows(&db, "public.items", 3000);
    let config = recipients_config(
        &ws,
        "pgward.toml",
        &[
            (&a.certificate, &a.fingerprint),
            (&b.certificate, &b.fingerprint),
        ],
        "",
    );
    let res = backup_with(&ws.repo(), &db, &config);
    res.assert_ok();
    let out = res.json();
    let id = out["id"].as_str().unwrap().to_string();
    assert_eq!(
        out["envelope"]["recipient-fingerprints"],
        serde_json::json!([a.fingerprint, b.fingerprint])
    );
    let recipients = &out["manifest"]["artifact"]["encryption"]["recipients"];
    assert_eq!(recipients[0]["encryption-key"], a.encryption_key.as_str());
    assert_eq!(recipients[1]["encryption-key"], b.encryption_key.as_str());
    let artifact = ws
        .repo()
        .join(out["envelope"]["artifact-ref"].as_str().unwrap());
    let archive_sha = out["envelope"]["archive-sha256"].as_str().unwrap();

    for (i, (gpg, key)) in [(&gpg_a, &a), (&gpg_b, &b)].into_iter().enumerate() {
        let compressed = ws.path(&format!("plain{i}.dump.zst"));
        let status = gpg.decrypt(&artifact, &compressed, &[]);
        // Both session-key packets are there, whoever decrypts.
        for other in [&a, &b] {
            assert!(
                status.contains(&format!("ENC_TO {}", &other.encryption_key[24..])),
                "{status}"
            );
        }
        let tar = ws.path(&format!("plain{i}.tar"));
        zstd(&["-d"], &compressed, &tar);
        assert_eq!(sha256_file(&tar), archive_sha);

        let res = run(verify_cmd(&ws.repo(), &id)
            .arg("--secret-key")
            .arg(&key.secret));
        assert_fully_verified(&res);
        let res = run(verify_cmd(&ws.repo(), &id)
            .arg("--gpg")
            .env("GNUPGHOME", &gpg.home));
        assert_fully_verified(&res);
    }
}

#[test]
fn a_generated_key_works_with_gpg_and_verify() {
    let ws = Workspace::new();
    let pass = ws.file("pass", "correct horse battery staple\n");
    let wrong = ws.file("wrong", "incorrect horse\n");
    let prefix = ws.path("backups-key");
    let generate = |prefix: &Path, pass: Option<&Path>| {
        let mut cmd = pgward(&ws.repo());
        cmd.env_remove("PGWARD_PASSPHRASE_FILE")
            .args([
                "--json",
                "key",
                "generate",
                "--user-id",
                "Backups <b@example.invalid>",
                "--out",
            ])
            .arg(prefix);
        if let Some(pass) = pass {
            cmd.arg("--passphrase-file").arg(pass);
        }
        run(without_terminal(&mut cmd))
    };
    let res = generate(&prefix, Some(&pass));
    res.assert_ok();
    let generated = res.json();
    assert_eq!(generated["message-type"], "key-generated");
    let fingerprint = generated["fingerprint"].as_str().unwrap().to_string();
    let encryption_key = generated["encryption-key"].as_str().unwrap().to_string();
    assert!(
        fingerprint.len() == 40
            && fingerprint
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
        "{fingerprint}"
    );
    let secret = ws.path("backups-key.sec.asc");
    let certificate = ws.path("backups-key.pub.asc");
    assert_eq!(
        generated["secret-key"],
        secret.display().to_string().as_str()
    );
    assert_eq!(
        generated["certificate"],
        certificate.display().to_string().as_str()
    );
    for path in [&secret, &certificate] {
        assert_eq!(
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
            0o600,
            "{path:?}"
        );
    }
    let secret_text = std::fs::read_to_string(&secret).unwrap();
    assert!(secret_text.starts_with("-----BEGIN PGP PRIVATE KEY BLOCK-----"));
    assert!(
        std::fs::read_to_string(&certificate)
            .unwrap()
            .starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    );
    assert!(!secret_text.contains("correct horse"));
    assert!(!res.stdout.contains("correct horse") && !res.stderr.contains("correct horse"));

    // Back up to it with the printed fingerprint.
    let db = cluster().create_database("enc_keygen");
    load_rows(&db, "public.items", 2000);
    let config = recipients_config(&ws, "pgward.toml", &[(&certificate, &fingerprint)], "");
    let res = backup_with(&ws.repo(), &db, &config);
    res.assert_ok();
    let out = res.json();
    let id = out["id"].as_str().unwrap().to_string();
    assert_eq!(
        out["manifest"]["artifact"]["encryption"]["recipients"][0]["encryption-key"],
        encryption_key.as_str()
    );
    let artifact = ws
        .repo()
        .join(out["envelope"]["artifact-ref"].as_str().unwrap());

    // GnuPG 2.2 imports the protected secret key with the passphrase,
    // agrees on the fingerprints, and decrypts.
    let gpg = Gpg::new(&ws, "g");
    let pass_str = pass.to_str().unwrap();
    gpg.ok(&[
        "--pinentry-mode",
        "loopback",
        "--passphrase-file",
        pass_str,
        "--import",
        secret.to_str().unwrap(),
    ]);
    let listed = String::from_utf8(gpg.ok(&["--with-colons", "--list-secret-keys"])).unwrap();
    assert!(listed.contains(&format!(":{fingerprint}:")), "{listed}");
    assert!(listed.contains(&format!(":{encryption_key}:")), "{listed}");
    let compressed = ws.path("plain.dump.zst");
    gpg.decrypt(
        &artifact,
        &compressed,
        &["--pinentry-mode", "loopback", "--passphrase-file", pass_str],
    );
    let tar = ws.path("plain.tar");
    zstd(&["-d"], &compressed, &tar);
    assert_eq!(
        sha256_file(&tar),
        out["envelope"]["archive-sha256"].as_str().unwrap()
    );

    // pgward verify with the key and its passphrase (file or environment).
    let res = run(verify_cmd(&ws.repo(), &id)
        .arg("--secret-key")
        .arg(&secret)
        .arg("--passphrase-file")
        .arg(&pass));
    assert_fully_verified(&res);
    let res = run(verify_cmd(&ws.repo(), &id)
        .arg("--secret-key")
        .arg(&secret)
        .env("PGWARD_PASSPHRASE_FILE", &pass));
    assert_fully_verified(&res);

    // A wrong passphrase, and none at all without a terminal: usage errors.
    let res = run(verify_cmd(&ws.repo(), &id)
        .arg("--secret-key")
        .arg(&secret)
        .arg("--passphrase-file")
        .arg(&wrong));
    assert_eq!(res.code, 2, "{}", res.stderr);
    assert!(res.stderr.starts_with("pgward: error: "), "{}", res.stderr);
    assert!(
        res.stderr.contains(&format!(
            "wrong passphrase for secret key {} ({})",
            secret.display(),
            short(&fingerprint)
        )),
        "{}",
        res.stderr
    );
    let res = run(without_terminal(
        verify_cmd(&ws.repo(), &id).arg("--secret-key").arg(&secret),
    ));
    assert_eq!(res.code, 2, "{}", res.stderr);
    assert!(
        res.stderr.contains("PGWARD_PASSPHRASE_FILE"),
        "{}",
        res.stderr
    );
    assert!(res.stderr.contains("passphrase"), "{}", res.stderr);

    // Generating without a passphrase source and no terminal is refused.
    let res = generate(&ws.path("nopass"), None);
    assert_eq!(res.code, 2, "{}", res.stderr);
    assert!(
        res.stderr.contains("PGWARD_PASSPHRASE_FILE"),
        "{}",
        res.stderr
    );
    assert!(!ws.path("nopass.sec.asc").exists() && !ws.path("nopass.pub.asc").exists());

    // The environment variable is a passphrase source for generate too.
    let mut cmd = pgward(&ws.repo());
    cmd.env("PGWARD_PASSPHRASE_FILE", &pass)
        .args(["--json", "key", "generate", "--out"])
        .arg(ws.path("second"));
    let res = run(without_terminal(&mut cmd));
    res.assert_ok();
    assert_ne!(res.json()["fingerprint"], fingerprint.as_str());
    assert!(ws.path("second.sec.asc").is_file());

    // Generating over existing files is refused; they stay as they were.
    let before = (
        std::fs::read(&secret).unwrap(),
        std::fs::read(&certificate).unwrap(),
    );
    let res = generate(&prefix, Some(&pass));
    assert_eq!(res.code, 2, "{}", res.stderr);
    assert!(res.stderr.contains("already exists"), "{}", res.stderr);
    assert_eq!(
        (
            std::fs::read(&secret).unwrap(),
            std::fs::read(&certificate).unwrap()
        ),
        before
    );
    // Also when only one of the two exists.
    std::fs::remove_file(ws.path("second.sec.asc")).unwrap();
    let public_before = std::fs::read(ws.path("second.pub.asc")).unwrap();
    let res = generate(&ws.path("second"), Some(&pass));
    assert_eq!(res.code, 2, "{}", res.stderr);
    assert!(res.stderr.contains("already exists"), "{}", res.stderr);
    assert!(!ws.path("second.sec.asc").exists());
    assert_eq!(
        std::fs::read(ws.path("second.pub.asc")).unwrap(),
        public_before
    );
}

#[test]
fn unusable_recipients_are_refused_before_anything_is_written() {
    let ws = Workspace::new();
    let db = cluster().create_database("enc_refuse");
    load_rows(&db, "public.items", 2000);
    // A repository with one earlier (unencrypted) backup.
    backup(&ws.repo(), &db, &[]).assert_ok();
    let before = snapshot(&ws.repo());

    let gpg = Gpg::new(&ws, "g");
    let ops = make_key(&ws, &gpg, "ops");
    let sign_uid = "signer <signer@example.invalid>";
    let signer = gpg.generate(sign_uid, "ed25519", "sign", "never", &[]);
    let signer_cert = ws.path("signer.pub.asc");
    gpg.export_public(&signer, &signer_cert, true);
    let old_uid = "old <old@example.invalid>";
    let old = gpg.generate(
        old_uid,
        "default",
        "default",
        "1d",
        &["--faked-system-time", "20200101T000000"],
    );
    // A user id added and then revoked while the key was still valid: the
    // revocation is the newest self-made signature, and must not be read
    // as a self-signature without an expiry ("never expires").
    gpg.ok(&[
        "--faked-system-time",
        "20200101T010000",
        "--quick-add-uid",
        &old,
        "extra <extra@example.invalid>",
    ]);
    gpg.ok(&[
        "--faked-system-time",
        "20200101T020000",
        "--quick-revoke-uid",
        &old,
        "extra <extra@example.invalid>",
    ]);
    let old_cert = ws.path("old.pub.asc");
    gpg.export_public(&old, &old_cert, true);
    let gone = make_key(&ws, &gpg, "gone");
    gpg.revoke(&gone.fingerprint);
    let gone_cert = ws.path("revoked.pub.asc");
    gpg.export_public(&gone.fingerprint, &gone_cert, true);

    let cases: Vec<(&str, PathBuf, String)> = vec![
        (
            "pin",
            recipients_config(&ws, "pin.toml", &[(&ops.certificate, &signer)], ""),
            format!(
                "recipient certificate {} has fingerprint {} but the configuration pins {}",
                ops.certificate.display(),
                short(&ops.fingerprint),
                short(&signer)
            ),
        ),
        (
            "expired",
            recipients_config(&ws, "expired.toml", &[(&old_cert, &old)], ""),
            format!(
                "recipient certificate old.pub.asc ({}) expired on 2020-01-02",
                short(&old)
            ),
        ),
        (
            "revoked",
            recipients_config(&ws, "revoked.toml", &[(&gone_cert, &gone.fingerprint)], ""),
            format!(
                "recipient certificate revoked.pub.asc ({}) is revoked",
                short(&gone.fingerprint)
            ),
        ),
        (
            "signing-only",
            recipients_config(&ws, "signing.toml", &[(&signer_cert, &signer)], ""),
            format!(
                "recipient certificate signer.pub.asc ({}) has no usable encryption key: it has no encryption subkey (signing only)",
                short(&signer)
            ),
        ),
        (
            // One good recipient does not excuse a bad one.
            "good-and-revoked",
            recipients_config(
                &ws,
                "mixed.toml",
                &[
                    (&ops.certificate, &ops.fingerprint),
                    (&gone_cert, &gone.fingerprint),
                ],
                "",
            ),
            format!(
                "recipient certificate revoked.pub.asc ({}) is revoked",
                short(&gone.fingerprint)
            ),
        ),
        (
            "required-but-none",
            ws.file("required.toml", "[encryption]\nrequired = true\n"),
            "encryption required but no recipient certificate configured".to_string(),
        ),
        (
            "key-id-pin",
            recipients_config(
                &ws,
                "keyid.toml",
                &[(&ops.certificate, &ops.fingerprint[24..])],
                "",
            ),
            "is a key id, not a fingerprint".to_string(),
        ),
        (
            "twice",
            recipients_config(
                &ws,
                "twice.toml",
                &[
                    (&ops.certificate, &ops.fingerprint),
                    (&ops.certificate, &spaced_lower(&ops.fingerprint)),
                ],
                "",
            ),
            format!("recipient {} is configured twice", short(&ops.fingerprint)),
        ),
    ];
    for (case, config, message) in &cases {
        for repo in [ws.repo(), ws.path(&format!("fresh-{case}"))] {
            let res = run(pgward(&repo)
                .arg("--config")
                .arg(config)
                .args(["backup", "--dbname", &db]));
            assert_eq!(res.code, 2, "{case}: {}", res.stderr);
            assert_eq!(res.stderr.lines().count(), 1, "{case}: {}", res.stderr);
            assert!(
                res.stderr.starts_with("pgward: error: "),
                "{case}: {}",
                res.stderr
            );
            assert!(
                res.stderr.contains(message.as_str()),
                "{case}: expected {message:?} in: {}",
                res.stderr
            );
            if repo == ws.repo() {
                assert_unchanged(&before, &snapshot(&repo), &format!("{case}: repository"));
            } else {
                assert!(
                    snapshot(&repo).is_empty(),
                    "{case}: files created: {:?}",
                    snapshot(&repo).keys()
                );
            }
        }
        let res = run(pgward(&ws.repo())
            .arg("--config")
            .arg(config)
            .args(["--json", "backup", "--dbname", &db]));
        assert_eq!(res.code, 2, "{case}");
        assert_eq!(res.json()["message-type"], "error", "{case}");
    }
    assert_unchanged(&before, &snapshot(&ws.repo()), "refused runs");

    // The control: the good recipient alone is accepted.
    let config = recipients_config(
        &ws,
        "good.toml",
        &[(&ops.certificate, &ops.fingerprint)],
        "",
    );
    let res = backup_with(&ws.repo(), &db, &config);
    res.assert_ok();
    let encrypted_id = res.json()["id"].as_str().unwrap().to_string();
    assert_eq!(backup_files(&ws.repo()).len(), 4);

    // After an encrypted backup, dropping the recipients is refused...
    let before = snapshot(&ws.repo());
    let res = run(pgward(&ws.repo()).args(["backup", "--dbname", &db]));
    assert_eq!(res.code, 2, "{}", res.stderr);
    assert!(res.stderr.starts_with("pgward: error: "), "{}", res.stderr);
    assert!(
        res.stderr.contains(&format!(
            "the previous backup {encrypted_id} was encrypted but no recipient certificate is configured now"
        )),
        "{}",
        res.stderr
    );
    assert_unchanged(
        &without_locks(before, &ws.repo()),
        &without_locks(snapshot(&ws.repo()), &ws.repo()),
        "a refused run",
    );
    // ...unless an unencrypted backup is asked for explicitly.
    let optout = ws.file("optout.toml", "[encryption]\nrequired = false\n");
    let res = backup_with(&ws.repo(), &db, &optout);
    res.assert_ok();
    assert_eq!(res.json()["envelope"]["encryption-scheme"], "none");
    assert_eq!(
        res.json()["envelope"]["recipient-fingerprints"],
        serde_json::json!([])
    );
}

#[test]
fn wrong_keys_and_damaged_ciphertext_fail_verification_and_change_nothing() {
    let ws = Workspace::new();
    let gpg = Gpg::new(&ws, "g");
    let ops = make_key(&ws, &gpg, "ops");
    let other_gpg = Gpg::new(&ws, "o");
    let other = make_key(&ws, &other_gpg, "other");
    let (id, artifact) = encrypted_backup(&ws, &ops, "enc_damage", 3000);
    let original = std::fs::read(&artifact).unwrap();
    let verify_plain = || run(&mut verify_cmd(&ws.repo(), &id));
    let verify_key = |key: &Path| run(verify_cmd(&ws.repo(), &id).arg("--secret-key").arg(key));
    let verify_gpg = || {
        run(verify_cmd(&ws.repo(), &id)
            .arg("--gpg")
            .env("GNUPGHOME", &gpg.home))
    };

    // Someone else's secret key: not a recipient, said as such.
    let before = snapshot(&ws.repo());
    let res = verify_key(&other.secret);
    assert_eq!(res.code, 2, "{}", res.stderr);
    assert!(res.stderr.starts_with("pgward: error: "), "{}", res.stderr);
    assert!(
        res.stderr.contains(&format!(
            "cannot decrypt backup {id}: it is encrypted to {}",
            short(&ops.fingerprint)
        )),
        "{}",
        res.stderr
    );
    assert_unchanged(&before, &snapshot(&ws.repo()), "verify with a wrong key");

    // The same mistake through gpg (a keyring without the secret key) is
    // also "not a recipient", not damage.
    let res = run(verify_cmd(&ws.repo(), &id)
        .arg("--gpg")
        .env("GNUPGHOME", &other_gpg.home));
    assert_eq!(res.code, 2, "{}", res.stderr);
    assert!(
        res.stderr.contains(&format!(
            "cannot decrypt backup {id}: it is encrypted to {}",
            short(&ops.fingerprint)
        )),
        "{}",
        res.stderr
    );
    assert_unchanged(
        &before,
        &snapshot(&ws.repo()),
        "verify --gpg without the key",
    );

    // A secret key that group or others can read is refused, not used.
    let exposed = ws.path("exposed.sec.asc");
    std::fs::copy(&ops.secret, &exposed).unwrap();
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o640)).unwrap();
    let res = verify_key(&exposed);
    assert_eq!(res.code, 2, "{}", res.stderr);
    assert!(
        res.stderr.contains(&format!(
            "secret key {} is readable by group or others (mode 640)",
            exposed.display()
        )),
        "{}",
        res.stderr
    );

    // One flipped bit in the middle of the ciphertext.
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x10;
    std::fs::write(&artifact, &damaged).unwrap();
    let before = snapshot(&ws.repo());
    let res = verify_plain();
    assert_eq!(res.code, 1, "{}", res.stderr);
    let report = res.json();
    assert_eq!(report["ok"], false);
    assert_eq!(report["content-checked"], false);
    assert_eq!(failed_checks(&report), vec!["artifact sha256"], "{report}");
    assert!(
        res.stderr
            .contains(&format!("backup {id} failed verification: artifact sha256")),
        "{}",
        res.stderr
    );
    for (how, res) in [("key", verify_key(&ops.secret)), ("gpg", verify_gpg())] {
        assert_eq!(res.code, 1, "{how}: {}", res.stderr);
        let report = res.json();
        assert_eq!(report["ok"], false, "{how}");
        let failed = failed_checks(&report);
        assert!(
            failed.contains(&"artifact sha256".to_string()),
            "{how}: {report}"
        );
        assert!(
            failed.contains(&"decryption".to_string())
                || failed.contains(&"decompression".to_string()),
            "{how}: the damage passed decryption and decompression: {report}"
        );
    }
    assert_unchanged(&before, &snapshot(&ws.repo()), "verify");
    assert_eq!(std::fs::read(&artifact).unwrap(), damaged);

    // Cut to half.
    std::fs::write(&artifact, &original[..original.len() / 2]).unwrap();
    let before = snapshot(&ws.repo());
    for (how, res) in [
        ("none", verify_plain()),
        ("key", verify_key(&ops.secret)),
        ("gpg", verify_gpg()),
    ] {
        assert_eq!(res.code, 1, "{how}: {}", res.stderr);
        let report = res.json();
        let failed = failed_checks(&report);
        assert!(
            failed.contains(&"artifact size".to_string()),
            "{how}: {report}"
        );
        assert!(
            failed.contains(&"artifact sha256".to_string()),
            "{how}: {report}"
        );
        if how != "none" {
            assert!(
                failed.contains(&"decryption".to_string())
                    || failed.contains(&"decompression".to_string()),
                "{how}: {report}"
            );
        }
    }
    assert_unchanged(&before, &snapshot(&ws.repo()), "verify");

    // The control: the original passes with the key.
    std::fs::write(&artifact, &original).unwrap();
    assert_fully_verified(&verify_key(&ops.secret));
}

#[test]
fn no_plaintext_reaches_the_disk() {
    let ws = Workspace::new();
    let gpg = Gpg::new(&ws, "g");
    let ops = make_key(&ws, &gpg, "ops");
    let db = cluster().create_database("enc_plaintext");
    let marker = "PLAINTEXT-MARKER-Zq9vX";
    create_marker_table(&db, marker, 200_000);
    let tmpdir = ws.path("tmpdir");
    std::fs::create_dir(&tmpdir).unwrap();
    // Outside the workspace: the wrapper's own flag files.
    let flags = tempfile::tempdir().unwrap();
    let paused = flags.path().join("paused");
    let wrapper = flags.path().join("pg_dump");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\nREAL='{}'\nif [ \"$1\" = --version ]; then exec \"$REAL\" --version; fi\n\
             \"$REAL\" \"$@\" | {{ head -c 2000000; touch '{}'; sleep 1; cat; }}\n",
            real_pg_dump(),
            paused.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = recipients_config(
        &ws,
        "pgward.toml",
        &[(&ops.certificate, &ops.fingerprint)],
        "",
    );

    let mut child = pgward(&ws.repo())
        .env("TMPDIR", &tmpdir)
        .arg("--config")
        .arg(&config)
        .args(["--json", "backup", "--dbname", &db, "--pg-dump"])
        .arg(&wrapper)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut scans_while_paused = 0;
    let mut staging_seen = false;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the backup did not finish");
        let found = files_containing(ws.dir.path(), marker.as_bytes());
        assert!(
            found.is_empty(),
            "plaintext on disk during the backup: {found:?}"
        );
        if paused.exists() {
            scans_while_paused += 1;
            staging_seen |= !names_in(&ws.repo().join("tmp")).is_empty();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let res = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    res.assert_ok();
    assert!(scans_while_paused > 0, "never scanned while the dump ran");
    assert!(staging_seen, "no staging file seen while the dump ran");
    let found = files_containing(ws.dir.path(), marker.as_bytes());
    assert!(
        found.is_empty(),
        "plaintext on disk after the backup: {found:?}"
    );
    assert!(!res.stdout.contains(marker) && !res.stderr.contains(marker));
    let envelope = &res.json()["envelope"];
    assert_eq!(envelope["encryption-scheme"], SCHEME);
    assert!(envelope["archive-bytes"].as_u64().unwrap() > 4_000_000);

    // A run whose pg_dump dies half-way: the quarantined partial file is
    // ciphertext too.
    let failing = flags.path().join("pg_dump_failing");
    std::fs::write(
        &failing,
        format!(
            "#!/bin/bash\nREAL='{}'\nif [ \"$1\" = --version ]; then exec \"$REAL\" --version; fi\n\
             \"$REAL\" \"$@\" | head -c 3000000\nexit 1\n",
            real_pg_dump()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    let res = run(pgward(&ws.repo())
        .env("TMPDIR", &tmpdir)
        .arg("--config")
        .arg(&config)
        .args(["backup", "--dbname", &db, "--pg-dump"])
        .arg(&failing));
    assert_eq!(res.code, 1, "{}", res.stderr);
    let quarantined = names_in(&ws.repo().join("quarantine"));
    assert!(
        quarantined.iter().any(|n| n.ends_with(".partial")),
        "{quarantined:?}"
    );
    let partial_bytes: u64 = quarantined
        .iter()
        .map(|n| {
            std::fs::metadata(ws.repo().join("quarantine").join(n))
                .unwrap()
                .len()
        })
        .sum();
    assert!(partial_bytes > 0, "{quarantined:?}");
    let found = files_containing(ws.dir.path(), marker.as_bytes());
    assert!(
        found.is_empty(),
        "plaintext on disk after a failed backup: {found:?}"
    );

    // The control: the same scan finds the marker in the decrypted archive.
    let control = ws.path("control");
    std::fs::create_dir(&control).unwrap();
    let artifact = ws.repo().join(envelope["artifact-ref"].as_str().unwrap());
    let compressed = control.join("plain.dump.zst");
    gpg.decrypt(&artifact, &compressed, &[]);
    let tar = control.join("plain.tar");
    zstd(&["-d"], &compressed, &tar);
    assert_eq!(
        sha256_file(&tar),
        envelope["archive-sha256"].as_str().unwrap()
    );
    assert_eq!(
        files_containing(ws.dir.path(), marker.as_bytes()),
        vec![tar.clone()]
    );
}

#[test]
fn key_show_agrees_with_gpg() {
    let ws = Workspace::new();
    let gpg = Gpg::new(&ws, "g");
    let key = make_key(&ws, &gpg, "shown");
    let sign_uid = "signer <signer@example.invalid>";
    let signer = gpg.generate(sign_uid, "ed25519", "sign", "never", &[]);
    let signer_cert = ws.path("signer.pub.asc");
    gpg.export_public(&signer, &signer_cert, true);
    let show = |file: &Path| {
        let res = run(pgward(&ws.repo()).args(["--json", "key", "show"]).arg(file));
        res.assert_ok();
        res.json()
    };

    let info = show(&key.certificate);
    assert_eq!(info["message-type"], "key");
    assert_eq!(info["fingerprint"], key.fingerprint.as_str());
    assert_eq!(info["encryption-key"], key.encryption_key.as_str());
    assert_eq!(info["algorithm"], "rsa3072");
    assert_eq!(info["expires"], serde_json::Value::Null);
    assert_eq!(info["revoked"], false);
    assert_eq!(
        info["user-ids"],
        serde_json::json!(["shown <shown@example.invalid>"])
    );
    let subkeys = info["subkeys"].as_array().unwrap();
    assert_eq!(subkeys.len(), 1, "{info}");
    assert_eq!(subkeys[0]["fingerprint"], key.encryption_key.as_str());
    assert_eq!(subkeys[0]["encryption-capable"], true);
    assert_eq!(subkeys[0]["revoked"], false);
    assert_eq!(subkeys[0]["expires"], serde_json::Value::Null);
    // The same key from its secret key file and from a binary export.
    assert_eq!(show(&key.secret)["fingerprint"], key.fingerprint.as_str());
    let binary = ws.path("shown.pub.gpg");
    gpg.export_public(&key.fingerprint, &binary, false);
    let from_binary = show(&binary);
    assert_eq!(from_binary["fingerprint"], key.fingerprint.as_str());
    assert_eq!(from_binary["encryption-key"], key.encryption_key.as_str());

    let info = show(&signer_cert);
    assert_eq!(info["fingerprint"], signer.as_str());
    assert_eq!(info["encryption-key"], serde_json::Value::Null);
    assert_eq!(info["algorithm"], "ed25519");
    assert_eq!(info["subkeys"], serde_json::json!([]));

    // Text output names the fingerprint too.
    let text = run(pgward(&ws.repo())
        .args(["key", "show"])
        .arg(&key.certificate));
    text.assert_ok();
    assert!(text.stdout.contains(&key.fingerprint), "{}", text.stdout);
}

/// One flipped bit in the first packet (the recipient's encrypted session
/// key) is damage like any other: exit 1 with the verify report, not a
/// "wrong key" usage error that blames the very key the backup is
/// encrypted to.
#[test]
fn a_flipped_bit_in_the_session_key_packet_is_damage_not_a_wrong_key() {
    let ws = Workspace::new();
    let gpg = Gpg::new(&ws, "g");
    let ops = make_key(&ws, &gpg, "ops");
    let (id, artifact) = encrypted_backup(&ws, &ops, "enc_header", 1000);
    let original = std::fs::read(&artifact).unwrap();
    // Packet header, version, key id, algorithm, encrypted session key.
    for pos in [1, 3, 5, 12, 13, 100, 300] {
        let mut damaged = original.clone();
        damaged[pos] ^= 0x04;
        std::fs::write(&artifact, &damaged).unwrap();
        let res = run(verify_cmd(&ws.repo(), &id)
            .arg("--secret-key")
            .arg(&ops.secret));
        assert_eq!(res.code, 1, "flip at {pos}: {}", res.stderr);
        let report = res.json();
        assert_eq!(report["message-type"], "verify", "flip at {pos}");
        assert!(
            failed_checks(&report).contains(&"artifact sha256".to_string()),
            "flip at {pos}: {report}"
        );
    }
    std::fs::write(&artifact, &original).unwrap();
}

/// `check` gains its encryption rows: a good recipient PASSes with its
/// pin shown last-8 only, one that expires within 30 days WARNs, a pin
/// mismatch FAILs, and the in-memory round trip PASSes. It still writes
/// nothing.
#[test]
fn check_reports_recipients_expiry_and_the_round_trip() {
    let ws = Workspace::new();
    let gpg = Gpg::new(&ws, "g");
    let ops = make_key(&ws, &gpg, "ops");
    let soon_uid = "soon <soon@example.invalid>";
    let soon_fpr = gpg.generate(soon_uid, "default", "default", "10d", &[]);
    let soon_cert = ws.path("soon.pub.asc");
    gpg.export_public(&soon_fpr, &soon_cert, true);
    let db = cluster().create_database("enc_check");
    load_rows(&db, "public.items", 100);
    let check = |config: &Path| {
        run(pgward(&ws.repo())
            .arg("--config")
            .arg(config)
            .args(["--json", "check", "--dbname", &db]))
    };
    let rows = |res: &Run| -> BTreeMap<String, (String, String)> {
        res.json()["matrix"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["id"].as_str().unwrap().starts_with("encryption"))
            .map(|i| {
                (
                    i["id"].as_str().unwrap().to_string(),
                    (
                        i["status"].as_str().unwrap().to_string(),
                        i["evidence"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    };

    let config = recipients_config(
        &ws,
        "two.toml",
        &[
            (&ops.certificate, &ops.fingerprint),
            (&soon_cert, &soon_fpr),
        ],
        "",
    );
    let res = check(&config);
    assert_eq!(res.code, 0, "{}", res.stderr);
    assert_eq!(res.json()["verdict"], "WARN");
    let found = rows(&res);
    let (status, evidence) = &found["encryption.recipient.1"];
    assert_eq!(status, "PASS", "{evidence}");
    assert!(
        evidence.contains(&format!("{} matches its pin", short(&ops.fingerprint))),
        "{evidence}"
    );
    assert!(
        !evidence.contains(&ops.fingerprint[..32]),
        "fingerprints are shown last-8 only: {evidence}"
    );
    let (status, evidence) = &found["encryption.recipient.2"];
    assert_eq!(status, "WARN", "{evidence}");
    assert!(evidence.contains("within 30 days"), "{evidence}");
    let (status, evidence) = &found["encryption.round-trip"];
    assert_eq!(status, "PASS", "{evidence}");
    assert!(evidence.contains("identical"), "{evidence}");
    assert!(!ws.repo().exists(), "check wrote the repository");

    // A secret key configured where backups are taken is a warning.
    let with_secret = recipients_config(
        &ws,
        "secret.toml",
        &[(&ops.certificate, &ops.fingerprint)],
        &format!("[decryption]\nsecret-key = \"{}\"\n", ops.secret.display()),
    );
    let res = check(&with_secret);
    assert_eq!(res.code, 0, "{}", res.stderr);
    assert_eq!(res.json()["verdict"], "WARN");
    let found = rows(&res);
    let (status, evidence) = &found["encryption.secret-key"];
    assert_eq!(status, "WARN", "{evidence}");
    assert!(
        evidence.contains("a secret key is configured on this host"),
        "{evidence}"
    );

    let wrong_pin = recipients_config(&ws, "wrong.toml", &[(&ops.certificate, &soon_fpr)], "");
    let res = check(&wrong_pin);
    assert_eq!(res.code, 1, "{}", res.stderr);
    let found = rows(&res);
    let (status, evidence) = &found["encryption.recipient.1"];
    assert_eq!(status, "FAIL");
    assert!(
        evidence.contains(&format!(
            "has fingerprint {} but the configuration pins {}",
            short(&ops.fingerprint),
            short(&soon_fpr)
        )),
        "{evidence}"
    );
    assert!(!ws.repo().exists(), "check wrote the repository");
}

/// pg_dump itself must not spool the dump through a temporary file: its
/// tar format does (one unlinked O_TMPFILE per table in /tmp, invisible to
/// a directory scan), which is why backups use the custom format. Traced
/// with strace through the command prefix.
#[test]
fn pg_dump_writes_no_temporary_file() {
    let ws = Workspace::new();
    let db = cluster().create_database("enc_tmpfile");
    create_marker_table(&db, "TMPFILE-MARKER", 5000);
    let trace = ws.path("trace.log");
    let traced = |extra: &[&str]| -> String {
        let _ = std::fs::remove_file(&trace);
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-e", "trace=open,openat,creat", "-o"])
            .arg(&trace)
            .arg(real_pg_dump())
            .args(extra)
            .arg(&db)
            .stdout(Stdio::null())
            .envs(cluster().env());
        assert!(cmd.status().unwrap().success());
        std::fs::read_to_string(&trace).unwrap()
    };
    // Control: the tar format does write temporary files, and this trace sees them.
    assert!(
        traced(&["-Ft"]).contains("O_TMPFILE"),
        "the trace cannot see temp files"
    );

    let config = ws.file(
        "traced.toml",
        &format!(
            "[pg-dump]\ncommand-prefix = [\"strace\", \"-f\", \"-e\", \"trace=open,openat,creat\", \"-o\", \"{}\"]\n",
            trace.display()
        ),
    );
    let _ = std::fs::remove_file(&trace);
    let res = run(pgward(&ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["--json", "backup", "--dbname", &db]));
    res.assert_ok();
    let opened = std::fs::read_to_string(&trace).unwrap();
    let writes: Vec<&str> = opened
        .lines()
        .filter(|l| l.contains("O_TMPFILE") || l.contains("O_CREAT") || l.contains("creat("))
        .collect();
    assert!(writes.is_empty(), "pg_dump created files: {writes:#?}");
}
