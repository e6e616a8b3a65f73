//! `verify` finds every kind of damage: flipped bits anywhere, truncation,
//! a manifest that no longer matches, and damage hidden behind a forged
//! artifact digest.

use crate::harness::*;
use std::path::{Path, PathBuf};

fn backed_up(hint: &str) -> (Workspace, serde_json::Value, PathBuf) {
    let ws = Workspace::new();
    let db = cluster().create_database(hint);
    load_rows(&db, "public.items", 2000);
    let res = backup(&ws.repo(), &db, &[]);
    res.assert_ok();
    let manifest = res.json()["manifest"].clone();
    let artifact = ws
        .repo()
        .join("backups")
        .join(manifest["artifact"]["file"].as_str().unwrap());
    (ws, manifest, artifact)
}

fn verify(repo: &Path, id: &str) -> Run {
    run(pgward(repo).args(["--json", "verify", id]))
}

#[test]
fn one_flipped_bit_anywhere_fails_verification() {
    let (ws, manifest, artifact) = backed_up("bitflip");
    let id = manifest["id"].as_str().unwrap();
    let original = std::fs::read(&artifact).unwrap();
    verify(&ws.repo(), id).assert_ok();
    let len = original.len();
    for (pos, bit) in [
        (0, 0),
        (5, 3),
        (len / 3, 7),
        (len / 2, 1),
        (len - 5, 4),
        (len - 1, 0),
    ] {
        let mut damaged = original.clone();
        damaged[pos] ^= 1 << bit;
        std::fs::write(&artifact, &damaged).unwrap();
        let res = verify(&ws.repo(), id);
        assert_eq!(res.code, 1, "flip at {pos} passed");
        assert!(
            res.stderr.contains("failed verification: artifact sha256"),
            "{}",
            res.stderr
        );
        assert_eq!(res.json()["ok"], false);
    }
    std::fs::write(&artifact, &original).unwrap();
    verify(&ws.repo(), "latest").assert_ok();
}

#[test]
fn truncation_and_a_missing_artifact_fail_verification() {
    let (ws, manifest, artifact) = backed_up("truncate");
    let id = manifest["id"].as_str().unwrap();
    let original = std::fs::read(&artifact).unwrap();
    for keep in [0, 10, original.len() / 2, original.len() - 1] {
        std::fs::write(&artifact, &original[..keep]).unwrap();
        let res = verify(&ws.repo(), id);
        assert_eq!(res.code, 1, "truncated to {keep} passed");
        assert!(
            res.stderr.contains("artifact size: manifest says"),
            "{}",
            res.stderr
        );
    }
    std::fs::remove_file(&artifact).unwrap();
    let res = verify(&ws.repo(), id);
    assert_eq!(res.code, 1);
    assert!(res.stderr.contains("artifact present"), "{}", res.stderr);
}

/// Damage whose artifact digest was forged in the manifest is still caught
/// by decompression and archive inspection.
#[test]
fn damage_behind_a_forged_digest_is_still_found() {
    let (ws, manifest, artifact) = backed_up("forged");
    let id = manifest["id"].as_str().unwrap();
    let manifest_path = ws
        .repo()
        .join("backups")
        .join(format!("{id}.manifest.json"));
    let mut damaged = std::fs::read(&artifact).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x20;
    std::fs::write(&artifact, &damaged).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&artifact)
        .output()
        .unwrap();
    let forged = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let mut edited = manifest.clone();
    edited["artifact"]["sha256"] = forged.into();
    reseal(&mut edited);
    std::fs::write(&manifest_path, edited.to_string()).unwrap();

    let res = verify(&ws.repo(), id);
    assert_eq!(res.code, 1, "{}", res.stdout);
    let report = res.json();
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        failed.contains(&"decompression") || failed.contains(&"archive sha256"),
        "forged damage passed: {report}"
    );
}

#[test]
fn a_manifest_that_disagrees_with_the_archive_fails() {
    let (ws, manifest, _) = backed_up("manifest");
    let id = manifest["id"].as_str().unwrap();
    let manifest_path = ws
        .repo()
        .join("backups")
        .join(format!("{id}.manifest.json"));
    let mut edited: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    edited["tables"][0]["rows"] = serde_json::json!(1999);
    reseal(&mut edited);
    std::fs::write(
        &manifest_path,
        serde_json::to_string_pretty(&edited).unwrap(),
    )
    .unwrap();
    let res = verify(&ws.repo(), id);
    assert_eq!(res.code, 1);
    assert!(
        res.stderr.contains("table data: differs from the manifest"),
        "{}",
        res.stderr
    );
}

#[test]
fn an_unknown_backup_is_a_usage_error() {
    let (ws, _, _) = backed_up("unknown");
    let res = verify(&ws.repo(), "20200101T000000Z-nope-0000");
    assert_eq!(res.code, 2);
    assert!(
        res.stderr
            .contains("no backup \"20200101T000000Z-nope-0000\""),
        "{}",
        res.stderr
    );
}

/// A backup of manifest v1 (a pg_dump tar archive, `ID.tar.zst`, written
/// by pgward before the custom format) still verifies, and damage to it is
/// still found. The v1 manifest is made from a real v2 one, rewritten the
/// way pgward 0.1 wrote them, around the tar fixture.
#[test]
fn a_manifest_v1_tar_backup_still_verifies() {
    use pgward::pipeline::archive::{ArchiveFormat, ArchiveInspector};
    let (ws, v2, _) = backed_up("legacytar");
    let tar = include_bytes!("../../../pgward/tests/fixtures/sample-pg15.tar");
    let mut inspector = ArchiveInspector::new(ArchiveFormat::Tar);
    inspector.update(tar);
    let summary = inspector.finish().unwrap();

    // Named for the fixture's own database, as pgward named its backups.
    let v2_id = v2["id"].as_str().unwrap();
    let id = format!(
        "{}-{}-{}",
        &v2_id[..16],
        pgward::repository::database_key(&summary.database_name),
        &v2_id[v2_id.len() - 4..]
    );
    let plain = ws.path("legacy.tar");
    std::fs::write(&plain, tar).unwrap();
    let artifact = ws.repo().join("backups").join(format!("{id}.tar.zst"));
    let status = std::process::Command::new("zstd")
        .args(["-q", "-3"])
        .arg(&plain)
        .arg("-o")
        .arg(&artifact)
        .status()
        .unwrap();
    assert!(status.success());
    let stored = pgward::pipeline::hash::digest_file(&artifact).unwrap();
    let archive = pgward::pipeline::hash::digest_file(&plain).unwrap();

    let mut v1 = v2.clone();
    v1["format-version"] = 1.into();
    // Manifest v3's content record did not exist in v1.
    v1.as_object_mut().unwrap().remove("content");
    v1.as_object_mut().unwrap().remove("manifest-digest");
    v1["id"] = id.clone().into();
    // The fixture archive is of its own database, which verify checks.
    v1["database"] = summary.database_name.clone().into();
    v1["server"]["version"] = summary.server_version.clone().unwrap_or_default().into();
    v1["archive"] = serde_json::json!({
        "format": "tar",
        "version": summary.archive_version,
        "bytes": archive.bytes,
        "sha256": archive.sha256,
        "toc-entries": summary.toc_entries,
    });
    v1["artifact"] = serde_json::json!({
        "file": format!("{id}.tar.zst"),
        "bytes": stored.bytes,
        "sha256": stored.sha256,
        "compression": {"algorithm": "zstd", "level": 3},
    });
    v1["tables"] = summary
        .table_data
        .iter()
        .map(|t| {
            serde_json::json!({
                "schema": t.schema, "table": t.table, "data": true,
                "bytes": t.bytes, "rows": t.rows,
            })
        })
        .collect();
    std::fs::write(
        ws.repo()
            .join("backups")
            .join(format!("{id}.manifest.json")),
        serde_json::to_vec_pretty(&v1).unwrap(),
    )
    .unwrap();
    // A v1 backup is from before pgward kept a journal: so is its repository.
    std::fs::remove_dir_all(ws.repo().join("journal")).unwrap();

    let res = verify(&ws.repo(), &id);
    res.assert_ok();
    let report = res.json();
    assert_eq!(report["content-checked"], true);
    let structure = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "archive structure")
        .unwrap()
        .clone();
    assert!(
        structure["detail"]
            .as_str()
            .unwrap()
            .starts_with("pg_dump tar archive 1.14"),
        "{structure}"
    );
    // `list` shows it beside the v2 backup, and not as an orphan.
    let listed = run(pgward(&ws.repo()).args(["--json", "list"]));
    listed.assert_ok();
    assert_eq!(listed.json()["backups"].as_array().unwrap().len(), 2);
    assert_eq!(listed.json()["orphans"], serde_json::json!([]));

    // Damage is still found.
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x08;
    std::fs::write(&artifact, &bytes).unwrap();
    let res = verify(&ws.repo(), &id);
    assert_eq!(res.code, 1, "{}", res.stderr);
}
