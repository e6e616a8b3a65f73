//! Signed manifests (`[signing]`): a backup signs its manifest with a key
//! only the backup host holds, stock gpg verifies that signature, and a
//! reader that pins the key refuses every manifest it did not sign, even
//! one whose digest was recomputed by someone who can write the repository.

use crate::encryption::{Gpg, Key, make_key};
use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `[signing]` with the given keys set, as a config file.
fn signing_config(
    ws: &Workspace,
    name: &str,
    fingerprint: &str,
    keys: &[(&str, &Path)],
) -> PathBuf {
    let mut text = format!("[signing]\nfingerprint = \"{fingerprint}\"\n");
    for (key, path) in keys {
        text.push_str(&format!("{key} = \"{}\"\n", path.display()));
    }
    ws.file(name, &text)
}

fn with_config(repo: &Path, config: &Path, args: &[&str]) -> Run {
    run(pgward(repo).arg("--config").arg(config).args(args))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

#[test]
fn signed_manifests_verify_with_gpg_and_a_pinned_reader_refuses_every_forgery() {
    let ws = Workspace::new();
    let gpg = Gpg::new(&ws, "g");
    let signer: Key = make_key(&ws, &gpg, "signer");
    let intruder: Key = make_key(&ws, &gpg, "intruder");
    let db = cluster().create_database("signed");
    load_rows(&db, "public.items", 200);

    let backup_host = signing_config(
        &ws,
        "backup.toml",
        &signer.fingerprint,
        &[("secret-key", &signer.secret)],
    );
    let res = with_config(
        &ws.repo(),
        &backup_host,
        &["--json", "backup", "--dbname", &db],
    );
    res.assert_ok();
    let id = res.json()["id"].as_str().unwrap().to_string();
    let manifest_path = ws
        .repo()
        .join("backups")
        .join(format!("{id}.manifest.json"));
    let manifest = read_json(&manifest_path);
    let signature = manifest["manifest-signature"]
        .as_str()
        .expect("a signed manifest")
        .to_string();
    assert!(
        signature.starts_with("-----BEGIN PGP SIGNATURE-----"),
        "{signature}"
    );

    // Stock gpg verifies the signature over the documented signed bytes.
    let text = ws.file(
        "signed-text",
        &pgward::repository::manifest::signed_text(&manifest),
    );
    let sig = ws.file("manifest.sig", &signature);
    let out = gpg
        .command()
        .args(["--status-fd", "1", "--verify"])
        .arg(&sig)
        .arg(&text)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gpg --verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status.contains(&format!("VALIDSIG {}", signer.fingerprint)),
        "{status}"
    );
    // ... and not over other bytes.
    let other = ws.file(
        "other-text",
        &text_with(&manifest, "connection", "evil@elsewhere:5432/x"),
    );
    let out = gpg
        .command()
        .args(["--verify"])
        .arg(&sig)
        .arg(&other)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "gpg accepted the signature over other bytes"
    );

    // A reader that holds only the certificate accepts it and says so.
    let reader = signing_config(
        &ws,
        "reader.toml",
        &signer.fingerprint,
        &[("certificate", &signer.certificate)],
    );
    let list = with_config(&ws.repo(), &reader, &["--json", "list"]);
    list.assert_ok();
    assert_eq!(listed_backup_ids(&list.json()), vec![id.clone()]);
    let verified = with_config(&ws.repo(), &reader, &["--json", "verify", &id]);
    verified.assert_ok();
    assert!(
        verified.stdout.contains("manifest signature"),
        "{}",
        verified.stdout
    );
    // A reader without [signing] (or an older pgward) still reads it: the
    // digest covers the signature.
    let plain = run(pgward(&ws.repo()).args(["--json", "list"]));
    plain.assert_ok();
    assert_eq!(listed_backup_ids(&plain.json()), vec![id.clone()]);

    // Someone who can write the repository but not the key: an edited and
    // resealed manifest, one with its signature removed, one signed by
    // another key. Each is damaged for the pinned reader, and by name an
    // integrity error.
    // The intruder's key signs exactly the signed text of the victim's
    // manifest: a valid signature, by the wrong key.
    let resigned = {
        let out = gpg
            .command()
            .args([
                "--armor",
                "--detach-sign",
                "--local-user",
                &intruder.fingerprint,
                "--output",
                "-",
            ])
            .arg(&text)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut forged = manifest.clone();
        forged["manifest-signature"] = String::from_utf8(out.stdout).unwrap().into();
        forged
    };
    let mut edited = manifest.clone();
    edited["connection"] = "evil@elsewhere:5432/x".into();
    let mut unsigned = manifest.clone();
    unsigned
        .as_object_mut()
        .unwrap()
        .remove("manifest-signature");
    let mut garbage = manifest.clone();
    garbage["manifest-signature"] =
        "-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n".into();
    for (what, mut forged, cause) in [
        (
            "edited and resealed",
            edited,
            "not signed by the pinned key",
        ),
        (
            "signature removed",
            unsigned,
            "not signed, and [signing] requires",
        ),
        (
            "signed by another key",
            resigned,
            "not signed by the pinned key",
        ),
        ("unreadable signature", garbage, "unreadable signature"),
    ] {
        reseal(&mut forged);
        write_json(&manifest_path, &forged);
        let list = with_config(&ws.repo(), &reader, &["--json", "list"]);
        list.assert_ok();
        assert!(
            listed_backup_ids(&list.json()).is_empty(),
            "{what}: still listed as a backup"
        );
        let causes = damaged_files(&list.json());
        assert!(
            causes.iter().any(
                |(file, c)| file.ends_with(&format!("{id}.manifest.json")) && c.contains(cause)
            ),
            "{what}: {causes:?}"
        );
        with_config(&ws.repo(), &reader, &["--json", "verify", &id]).assert_exit(1);
        with_config(&ws.repo(), &reader, &["--json", "verify", "latest"]).assert_exit(2);
    }

    // Every reader goes through the pin: restore, drill, check, and the
    // backup that compares with the previous one.
    let mut edited = manifest.clone();
    edited["archive"]["bytes"] = (manifest["archive"]["bytes"].as_u64().unwrap() * 100).into();
    reseal(&mut edited);
    write_json(&manifest_path, &edited);
    let target = format!("{db}_restored");
    let res = with_config(
        &ws.repo(),
        &reader,
        &["--json", "restore", &id, "--to", &target],
    );
    res.assert_exit(1);
    assert!(
        res.stderr.contains("not signed by the pinned key"),
        "{}",
        res.stderr
    );
    let res = with_config(&ws.repo(), &reader, &["--json", "drill", "latest"]);
    res.assert_exit(2);
    let check = with_config(
        &ws.repo(),
        &backup_host,
        &["--json", "check", "--dbname", &db],
    );
    check.assert_exit(1);
    let report = check.json();
    let catalog_rows: Vec<&Value> = report["matrix"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["id"] == "repository.catalog")
        .collect();
    assert!(
        catalog_rows.iter().any(|r| r["status"] == "FAIL"
            && r["evidence"]
                .as_str()
                .unwrap()
                .contains("not signed by the pinned key")),
        "{}",
        check.stdout
    );
    // An unsigned manifest claiming a newer format blocks nothing: it is
    // not believed at all.
    let mut newer = manifest.clone();
    newer.as_object_mut().unwrap().remove("manifest-signature");
    newer["format-version"] = 99.into();
    reseal(&mut newer);
    let newer_id = format!("29991231T235959Z-{}", &id[17..]);
    newer["id"] = newer_id.clone().into();
    write_json(
        &ws.repo()
            .join("backups")
            .join(format!("{newer_id}.manifest.json")),
        &newer,
    );
    let res = with_config(
        &ws.repo(),
        &backup_host,
        &["--json", "backup", "--dbname", &db],
    );
    res.assert_ok();
    // The forged (hundredfold) size was not the one compared with.
    let warnings = res.json()["warnings"].to_string();
    assert!(
        warnings.contains("not signed by the pinned key"),
        "{warnings}"
    );
    assert!(!res.stdout.contains("shrank"), "{}", res.stdout);

    write_json(&manifest_path, &manifest);
    with_config(&ws.repo(), &reader, &["--json", "verify", &id]).assert_ok();
}

/// The manifest with one field changed, as signed text.
fn text_with(manifest: &Value, field: &str, value: &str) -> String {
    let mut changed = manifest.clone();
    changed[field] = value.into();
    pgward::repository::manifest::signed_text(&changed)
}

#[test]
fn a_backup_that_cannot_sign_as_configured_does_not_start() {
    let ws = Workspace::new();
    let db = cluster().create_database("cannotsign");
    load_rows(&db, "public.items", 50);
    // A passphrase-protected key made by pgward itself.
    let pass = ws.file("pass", "sign here please\n");
    let generated = run(pgward(&ws.repo())
        .env_remove("PGWARD_PASSPHRASE_FILE")
        .args(["--json", "key", "generate", "--out"])
        .arg(ws.path("signing"))
        .arg("--passphrase-file")
        .arg(&pass));
    generated.assert_ok();
    let fingerprint = generated.json()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = ws.path("signing.sec.asc");
    let certificate = ws.path("signing.pub.asc");
    let wrong_pass = ws.file("wrong-pass", "not it\n");
    let other = "0123456789ABCDEF0123456789ABCDEF01234567";
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "no passphrase file",
            signing_config(&ws, "a.toml", &fingerprint, &[("secret-key", &secret)]),
            "passphrase-protected",
        ),
        (
            "wrong passphrase",
            signing_config(
                &ws,
                "b.toml",
                &fingerprint,
                &[("secret-key", &secret), ("passphrase-file", &wrong_pass)],
            ),
            "wrong passphrase",
        ),
        (
            "another pin",
            signing_config(
                &ws,
                "c.toml",
                other,
                &[("secret-key", &secret), ("passphrase-file", &pass)],
            ),
            "signing.fingerprint pins",
        ),
        (
            "a reader's config",
            signing_config(
                &ws,
                "d.toml",
                &fingerprint,
                &[("certificate", &certificate)],
            ),
            "no signing.secret-key",
        ),
        (
            "no pin",
            ws.file(
                "e.toml",
                &format!("[signing]\nsecret-key = \"{}\"\n", secret.display()),
            ),
            "without signing.fingerprint",
        ),
    ];
    for (what, config, message) in &cases {
        let res = with_config(&ws.repo(), config, &["--json", "backup", "--dbname", &db]);
        res.assert_exit(2);
        assert!(res.stderr.contains(message), "{what}: {}", res.stderr);
        assert!(
            !ws.repo().join("backups").exists() || names_in(&ws.repo().join("backups")).is_empty(),
            "{what}: something was written"
        );
        let check = with_config(&ws.repo(), config, &["--json", "check", "--dbname", &db]);
        assert_ne!(check.code, 0, "{what}: check passed");
        assert!(
            check.stdout.contains("\"signing\"") && check.stdout.contains(message),
            "{what}: {}",
            check.stdout
        );
    }
    // Configured right, it signs, and check says so.
    let good = signing_config(
        &ws,
        "good.toml",
        &fingerprint,
        &[("secret-key", &secret), ("passphrase-file", &pass)],
    );
    let check = with_config(&ws.repo(), &good, &["--json", "check", "--dbname", &db]);
    assert!(
        check.stdout.contains("a test signature verified"),
        "{}",
        check.stdout
    );
    let res = with_config(&ws.repo(), &good, &["--json", "backup", "--dbname", &db]);
    res.assert_ok();
    let id = res.json()["id"].as_str().unwrap().to_string();
    let reader = signing_config(
        &ws,
        "reader.toml",
        &fingerprint,
        &[("certificate", &certificate)],
    );
    with_config(&ws.repo(), &reader, &["--json", "verify", &id]).assert_ok();
    // An unsigned backup taken before signing was configured is not
    // trusted by a pinned reader.
    let unsigned = backup(&ws.repo(), &db, &[]);
    unsigned.assert_ok();
    let unsigned_id = unsigned.json()["id"].as_str().unwrap().to_string();
    let list = with_config(&ws.repo(), &reader, &["--json", "list"]);
    assert_eq!(listed_backup_ids(&list.json()), vec![id.clone()]);
    with_config(&ws.repo(), &reader, &["--json", "verify", &unsigned_id]).assert_exit(1);
}
