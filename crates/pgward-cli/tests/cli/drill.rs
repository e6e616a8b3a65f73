//! `restore` and `drill` against the corpus of tables that break
//! dump/restore paths (tests/fixtures/corpus.sql): a drill proves every
//! table, sequence, large object and the schema and leaves nothing behind;
//! a forged artifact whose digests were recomputed is caught by the
//! content fingerprints; damage, missing keys, an occupied target and
//! pg_restore's own failures all end without a half-restored database.

use crate::encryption::{backup_with, recipients_config, without_terminal};
use crate::harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/corpus.sql");

/// `psql -f FILE` against the test cluster as the superuser.
fn psql_file(db: &str, file: &str) {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            db,
            "-f",
            file,
        ])
        .envs(cluster().env())
        .env_remove("PGPASSWORD")
        .env_remove("PGDATABASE")
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql -f {file} failed on {db}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh database holding the corpus.
fn corpus_database(hint: &str) -> String {
    let db = cluster().create_database(hint);
    psql_file(&db, CORPUS);
    db
}

/// A database, backed up into its own workspace's repository.
struct Backed {
    ws: Workspace,
    db: String,
    id: String,
}

impl Backed {
    fn new(hint: &str) -> Backed {
        Backed::take(Workspace::new(), corpus_database(hint), None)
    }

    /// Backs up `db` (with the config file `config`, if any) into `ws`.
    fn take(ws: Workspace, db: String, config: Option<&Path>) -> Backed {
        let res = match config {
            Some(config) => backup_with(&ws.repo(), &db, config),
            None => backup(&ws.repo(), &db, &[]),
        };
        res.assert_ok();
        let id = res.json()["id"].as_str().unwrap().to_string();
        Backed { ws, db, id }
    }

    fn repo(&self) -> PathBuf {
        self.ws.repo()
    }

    fn manifest_path(&self) -> PathBuf {
        self.repo()
            .join("backups")
            .join(format!("{}.manifest.json", self.id))
    }

    fn manifest(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.manifest_path()).unwrap()).unwrap()
    }

    fn artifact(&self) -> PathBuf {
        self.repo()
            .join("backups")
            .join(self.manifest()["artifact"]["file"].as_str().unwrap())
    }

    fn drill_record_path(&self) -> PathBuf {
        self.repo()
            .join("backups")
            .join(format!("{}.drill.json", self.id))
    }

    fn drill_record(&self) -> Option<Value> {
        std::fs::read_to_string(self.drill_record_path())
            .ok()
            .map(|text| serde_json::from_str(&text).unwrap())
    }

    /// `pgward --json drill ID ARGS...`
    fn drill(&self, args: &[&str]) -> Run {
        run(pgward(&self.repo())
            .env_remove("PGWARD_SECRET_KEY")
            .args(["--json", "drill", &self.id])
            .args(args))
    }

    /// `pgward --json restore ID --to DB ARGS...`
    fn restore(&self, to: &str, args: &[&str]) -> Run {
        run(pgward(&self.repo())
            .env_remove("PGWARD_SECRET_KEY")
            .args(["--json", "restore", &self.id, "--to", to])
            .args(args))
    }

    /// The scratch databases of this backup's drills that exist now.
    fn scratch_databases(&self) -> Vec<String> {
        scratch_databases(&self.id)
    }

    fn tmp_files(&self) -> Vec<String> {
        names_in(&self.repo().join("tmp"))
    }
}

/// The databases named `pgward_drill_<id as pgward spells it>_<hex>`.
fn scratch_databases(id: &str) -> Vec<String> {
    assert!(
        id.len() <= 41,
        "pgward shortens ids this long; use a shorter hint: {id}"
    );
    // pgward's name for a scratch database, without its random suffix.
    let name = pgward::drill::scratch_name(id);
    let prefix = &name[..name.rfind('_').unwrap() + 1];
    databases()
        .into_iter()
        .filter(|name| name.starts_with(prefix))
        .collect()
}

fn databases() -> Vec<String> {
    cluster()
        .psql("postgres", "SELECT datname FROM pg_database ORDER BY 1")
        .lines()
        .map(str::to_string)
        .collect()
}

fn database_exists(name: &str) -> bool {
    databases().iter().any(|d| d == name)
}

fn drop_database(name: &str) {
    cluster().psql("postgres", &format!("DROP DATABASE IF EXISTS {}", qi(name)));
}

fn qi(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", qi(schema), qi(table))
}

/// `schema.table` names (unquoted, as drill checks spell them) of the
/// manifest's tables whose data is in the archive.
fn data_tables(manifest: &Value) -> Vec<(String, String)> {
    manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["data"].as_bool().unwrap())
        .map(|t| {
            (
                t["schema"].as_str().unwrap().to_string(),
                t["table"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The manifest's tables, to compare source and restored database by
/// content; partitions loaded through their root are compared as the root
/// (a restore may put their rows into the other partition).
fn all_tables(manifest: &Value) -> Vec<(String, String)> {
    let mut tables: Vec<(String, String)> = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["schema"].as_str().unwrap().to_string(),
                t["table"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(s, t)| !root_loaded(s, t))
        .collect();
    tables.push(("public".to_string(), "moods".to_string()));
    tables
}

/// How many checks a drill of the whole corpus has: one per table, one for
/// the root-loaded partitions, two sequences, large objects, column
/// order, schema.
fn corpus_check_count(manifest: &Value) -> usize {
    data_tables(manifest).len() - ROOT_LOADED.len() + 1 + 5
}

/// name -> (ok, detail) of a list of drill checks.
fn checks(list: &Value) -> BTreeMap<String, (bool, String)> {
    let list = list
        .as_array()
        .unwrap_or_else(|| panic!("checks are not a list: {list}"));
    let map: BTreeMap<String, (bool, String)> = list
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                (
                    c["ok"].as_bool().unwrap(),
                    c["detail"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(map.len(), list.len(), "check names repeat: {list:?}");
    map
}

/// Row count and an order-independent digest of the rows' text, per table.
fn table_contents(db: &str, tables: &[(String, String)]) -> BTreeMap<String, String> {
    per_table(
        db,
        tables,
        "count(*) || ' ' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '-')",
    )
}

fn row_counts(db: &str, tables: &[(String, String)]) -> BTreeMap<String, i64> {
    per_table(db, tables, "count(*)")
        .into_iter()
        .map(|(name, n)| (name, n.parse().unwrap()))
        .collect()
}

/// `SELECT EXPR FROM table t` for every table, in one psql run; keyed by
/// `schema.table`.
fn per_table(db: &str, tables: &[(String, String)], expr: &str) -> BTreeMap<String, String> {
    let sql = tables
        .iter()
        .enumerate()
        .map(|(i, (schema, table))| {
            format!(
                "SELECT {i} AS i, ({expr})::text FROM {} t",
                qualified(schema, table)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let out = cluster().psql(db, &format!("{sql} ORDER BY 1"));
    let values: Vec<String> = out
        .lines()
        .map(|line| line.split_once('|').unwrap().1.to_string())
        .collect();
    assert_eq!(values.len(), tables.len(), "{out}");
    tables
        .iter()
        .zip(values)
        .map(|((schema, table), value)| (format!("{schema}.{table}"), value))
        .collect()
}

/// The user relations of a database: `schema.name kind`, sorted.
fn relations(db: &str) -> Vec<String> {
    cluster()
        .psql(
            db,
            "SELECT n.nspname || '.' || c.relname || ' ' || c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' ORDER BY 1",
        )
        .lines()
        .map(str::to_string)
        .collect()
}

fn sequence_state(db: &str, sequence: &str) -> String {
    cluster().psql(
        db,
        &format!("SELECT last_value || ' ' || is_called FROM {sequence}"),
    )
}

fn chain_head(db: &str) -> String {
    cluster().psql(
        db,
        "SELECT encode(hash, 'hex') FROM audit.events ORDER BY seq DESC LIMIT 1",
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Rebuilds the artifact with `from` replaced by `to` (same length, one
/// occurrence) in the archive, recompressed with stock zstd; rewrites the
/// manifest's artifact and archive sizes and digests when `forge_archive`,
/// only the artifact's otherwise.
fn rebuild_artifact(b: &Backed, from: &[u8], to: &[u8], forge_archive: bool) {
    assert_eq!(from.len(), to.len());
    let artifact = b.artifact();
    let plain = b.ws.path("archive.dump");
    zstd(&["-d"], &artifact, &plain);
    let manifest = b.manifest();
    assert_eq!(
        sha256_file(&plain),
        manifest["archive"]["sha256"].as_str().unwrap(),
        "stock zstd -d gives the archive back"
    );
    let mut archive = std::fs::read(&plain).unwrap();
    let at = find(&archive, from);
    assert_eq!(
        at.len(),
        1,
        "{:?} is not unique in the archive",
        String::from_utf8_lossy(from)
    );
    archive[at[0]..at[0] + to.len()].copy_from_slice(to);
    std::fs::write(&plain, &archive).unwrap();
    let rebuilt = b.ws.path("archive.dump.zst");
    zstd(&["-3"], &plain, &rebuilt);
    let stored = std::fs::read(&rebuilt).unwrap();
    std::fs::write(&artifact, &stored).unwrap();
    let mut manifest = manifest;
    manifest["artifact"]["bytes"] = stored.len().into();
    manifest["artifact"]["sha256"] = sha256_file(&rebuilt).into();
    if forge_archive {
        manifest["archive"]["bytes"] = archive.len().into();
        manifest["archive"]["sha256"] = sha256_file(&plain).into();
    }
    reseal(&mut manifest);
    std::fs::write(
        b.manifest_path(),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

/// Backups taken before manifest v6 fingerprinted rows and large objects
/// with SHA-256, and their manifests say so: verify and drill recompute
/// with the manifest's algorithm, and still catch a fingerprint that does
/// not match. A manifest naming an algorithm pgward does not know is
/// refused, not taken for damage.
#[test]
fn a_backup_fingerprinted_with_sha256_still_verifies_and_drills() {
    use pgward::fingerprint::Algorithm;
    let b = Backed::new("dr_sha256");
    let plain = b.ws.path("archive.dump");
    zstd(&["-d"], &b.artifact(), &plain);
    let mut inspector =
        pgward::pipeline::archive::custom::CustomInspector::fingerprinting(Algorithm::Sha256);
    inspector.update(&std::fs::read(&plain).unwrap());
    let summary = inspector.finish().unwrap();
    let current = b.manifest();
    assert_eq!(
        current["content"]["fingerprint-algorithm"],
        "xxh3-128-sum-of-rows"
    );
    let mut old = current.clone();
    old["format-version"] = 5.into();
    old["content"]["fingerprint-algorithm"] = "sha256-sum-of-rows".into();
    let mut fingerprinted = 0;
    for table in old["tables"].as_array_mut().unwrap() {
        if table["fingerprint"].is_null() {
            continue;
        }
        let data = summary
            .table_data
            .iter()
            .find(|t| t.schema == table["schema"] && t.table == table["table"])
            .unwrap();
        assert_eq!(data.fingerprint.len(), 64);
        assert_ne!(table["fingerprint"], data.fingerprint.as_str());
        table["fingerprint"] = data.fingerprint.clone().into();
        fingerprinted += 1;
    }
    assert!(fingerprinted > 5, "{old}");
    let large_objects = summary.large_objects.unwrap();
    assert_eq!(large_objects.count, 3);
    old["content"]["large-objects"] = serde_json::to_value(&large_objects).unwrap();
    // As a backup older than the journal (the journal vouches for the
    // manifests as they were written, and these are rewritten).
    let write = |manifest: &Value| {
        let _ = std::fs::remove_dir_all(b.repo().join("journal"));
        let mut manifest = manifest.clone();
        reseal(&mut manifest);
        std::fs::write(
            b.manifest_path(),
            serde_json::to_vec_pretty(&manifest).unwrap(),
        )
        .unwrap();
    };
    write(&old);
    let verified = run(pgward(&b.repo()).args(["--json", "verify", &b.id]));
    verified.assert_ok();
    let drilled = b.drill(&[]);
    drilled.assert_ok();
    let record = b.drill_record().unwrap();
    let checks = checks(&record["checks"]);
    let duplicates = old["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "duplicates")
        .unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let detail = &checks["table public.duplicates"].1;
    assert!(detail.contains(&duplicates[..16]), "{detail}");
    assert!(
        checks["large objects"].1.starts_with("3 objects"),
        "{:?}",
        checks["large objects"]
    );

    // One SHA-256 sum off by one: both commands find it.
    let mut off = old.clone();
    for table in off["tables"].as_array_mut().unwrap() {
        if table["table"] == "duplicates" {
            let mut sum = duplicates.clone().into_bytes();
            let last = sum.len() - 1;
            sum[last] = if sum[last] == b'0' { b'1' } else { b'0' };
            table["fingerprint"] = String::from_utf8(sum).unwrap().into();
        }
    }
    write(&off);
    let verified = run(pgward(&b.repo()).args(["--json", "verify", &b.id]));
    assert_eq!(verified.code, 1, "{}", verified.stderr);
    assert!(
        verified.stderr.contains("public.duplicates"),
        "{}",
        verified.stderr
    );
    let drilled = b.drill(&[]);
    drilled.assert_exit(1);
    assert!(
        drilled
            .stderr
            .contains("table public.duplicates: backup has 4 rows with fingerprint "),
        "{}",
        drilled.stderr
    );

    // An algorithm from the future: the manifest is refused as such.
    let mut newer = current.clone();
    newer["content"]["fingerprint-algorithm"] = "blake3-sum-of-rows".into();
    write(&newer);
    let verified = run(pgward(&b.repo()).args(["verify", &b.id]));
    assert_ne!(verified.code, 0);
    assert!(
        verified.stderr.contains("which this pgward does not know"),
        "{}",
        verified.stderr
    );
    // The backup as taken is intact again once its manifest is.
    write(&current);
    run(pgward(&b.repo()).args(["verify", &b.id])).assert_ok();
}

/// A table with at least 64 MiB of COPY text is read back in parts (block
/// ranges, one session each) whose sums are added up: all of its rows and
/// only its own (not an inheritance child's) make the fingerprint, and a
/// row changed in the last part is found.
#[test]
fn a_large_table_is_read_back_in_parts_that_miss_no_row() {
    let db = cluster().create_database("dr_split");
    cluster().psql(
        &db,
        "CREATE TABLE public.big (id int PRIMARY KEY, body text NOT NULL); \
         INSERT INTO public.big \
           SELECT g, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, 1000000) g; \
         UPDATE public.big SET body = 'needle-original' || substr(body, 16) WHERE id = 999000; \
         CREATE TABLE public.big_child (extra int) INHERITS (public.big); \
         INSERT INTO public.big_child VALUES (1, 'child row', 7);",
    );
    let b = Backed::take(Workspace::new(), db, None);
    let big = b.manifest()["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "big")
        .unwrap()
        .clone();
    assert!(big["bytes"].as_u64().unwrap() >= 64 << 20, "{big}");
    assert_eq!(big["rows"], 1_000_000);

    let drilled = b.drill(&[]);
    drilled.assert_ok();
    let record = b.drill_record().unwrap();
    let checks = checks(&record["checks"]);
    let detail = &checks["table public.big"].1;
    assert!(
        detail.starts_with("1000000 rows, fingerprint ")
            && detail.ends_with("(read back in 2 parts)"),
        "{detail}"
    );
    assert_eq!(
        checks["table public.big_child"].1.split(',').next(),
        Some("1 rows")
    );
    // One session reads it whole.
    let whole = b.drill(&["--jobs", "1"]);
    whole.assert_ok();
    let streamed = self::checks(&b.drill_record().unwrap()["checks"]);
    assert!(
        !streamed["table public.big"].1.contains("parts"),
        "{:?}",
        streamed["table public.big"]
    );

    // A row near the end, changed in the archive (digests forged to match).
    rebuild_artifact(&b, b"needle-original", b"needle-changed!", true);
    let drilled = b.drill(&[]);
    drilled.assert_exit(1);
    assert!(
        drilled
            .stderr
            .contains("table public.big: backup has 1000000 rows with fingerprint "),
        "{}",
        drilled.stderr
    );
    assert_eq!(b.scratch_databases(), Vec::<String>::new());
}

/// A small database backed up into `ws`'s repository.
fn small_backup(ws: Workspace, hint: &str, config: Option<&Path>) -> Backed {
    let db = cluster().create_database(hint);
    load_rows(&db, "public.items", 200);
    Backed::take(ws, db, config)
}

/// A passphrase-protected key made by `pgward key generate`, and a config
/// that encrypts backups to it: (config, secret key, passphrase file).
fn generated_key(ws: &Workspace) -> (PathBuf, PathBuf, PathBuf) {
    let pass = ws.file("pass", "drill horse battery\n");
    let mut generate = pgward(&ws.repo());
    generate
        .env_remove("PGWARD_PASSPHRASE_FILE")
        .args(["--json", "key", "generate", "--out"])
        .arg(ws.path("drill-key"))
        .arg("--passphrase-file")
        .arg(&pass);
    let res = run(without_terminal(&mut generate));
    res.assert_ok();
    let fingerprint = res.json()["fingerprint"].as_str().unwrap().to_string();
    let certificate = ws.path("drill-key.pub.asc");
    let config = recipients_config(ws, "pgward.toml", &[(&certificate, &fingerprint)], "");
    (config, ws.path("drill-key.sec.asc"), pass)
}

/// A database with one table of local work in it.
/// An occupied database (see [`occupied_database`]) still there, with its data.
#[track_caller]
fn assert_untouched(target: &str, why: &str) {
    assert!(database_exists(target), "{target}: {why}");
    assert_eq!(
        cluster().psql(target, "SELECT note FROM public.local_work"),
        "mine"
    );
}

fn occupied_database(hint: &str) -> String {
    let db = cluster().create_database(hint);
    cluster().psql(
        &db,
        "CREATE TABLE public.local_work (note text); INSERT INTO public.local_work VALUES ('mine')",
    );
    db
}

/// The corpus's hash partitions on an enum, which pg_dump loads through
/// their root: the drill compares them as one group.
const ROOT_LOADED: [&str; 2] = ["moods_0", "moods_1"];
const ROOT_LOADED_CHECK: &str =
    "partitions public.moods_0, public.moods_1 (loaded via public.moods)";

fn root_loaded(schema: &str, table: &str) -> bool {
    schema == "public" && ROOT_LOADED.contains(&table)
}

/// A drill's JSON output that passed, with its checks.
#[track_caller]
fn assert_drill_passed(b: &Backed, res: &Run) -> BTreeMap<String, (bool, String)> {
    res.assert_ok();
    let out = res.json();
    assert_eq!(out["message-type"], "drill", "{out}");
    let record = &out["record"];
    assert_eq!(record["verdict"], "pass", "{out}");
    assert_eq!(record["backup-id"], b.id.as_str());
    assert!(
        record.get("first-failure").is_none_or(Value::is_null),
        "{out}"
    );
    assert_eq!(out["restore"]["ok"], true, "{out}");
    let checks = checks(&record["checks"]);
    let manifest = b.manifest();
    let tables = data_tables(&manifest);
    let mut expected: Vec<String> = tables
        .iter()
        .filter(|(s, t)| !root_loaded(s, t))
        .map(|(s, t)| format!("table {s}.{t}"))
        .collect();
    expected.extend([
        ROOT_LOADED_CHECK.to_string(),
        "sequence public.ticket_seq".to_string(),
        "sequence public.tickets_id_seq".to_string(),
        "large objects".to_string(),
        "column order".to_string(),
        "schema".to_string(),
    ]);
    expected.sort();
    let names: Vec<String> = checks.keys().cloned().collect();
    assert_eq!(names, expected, "{out}");
    for (name, (ok, detail)) in &checks {
        assert!(ok, "{name}: {detail}");
    }
    for t in manifest["tables"].as_array().unwrap() {
        if !t["data"].as_bool().unwrap()
            || root_loaded(t["schema"].as_str().unwrap(), t["table"].as_str().unwrap())
        {
            continue;
        }
        let name = format!(
            "table {}.{}",
            t["schema"].as_str().unwrap(),
            t["table"].as_str().unwrap()
        );
        let fingerprint = t["fingerprint"]
            .as_str()
            .expect("manifest v3 has fingerprints");
        let detail = &checks[&name].1;
        assert!(
            detail.starts_with(&format!(
                "{} rows, fingerprint {}",
                t["rows"],
                &fingerprint[..16]
            )),
            "{name}: {detail}"
        );
    }
    assert!(
        checks["large objects"].1.starts_with("3 objects"),
        "{:?}",
        checks["large objects"]
    );
    // Every table's column order was recorded and came back.
    let recorded = manifest["content"]["column-order"]
        .as_array()
        .unwrap()
        .len();
    assert!(recorded >= tables.len(), "{manifest}");
    assert_eq!(
        checks["column order"].1,
        format!("{recorded} tables have their columns in the recorded order")
    );
    // What the drill record on disk says is what was printed.
    assert_eq!(b.drill_record().as_ref(), Some(record));
    checks
}

#[test]
fn a_drill_of_the_corpus_passes_and_leaves_nothing_behind() {
    let b = Backed::new("dr_corpus");
    let manifest = b.manifest();
    let tables = data_tables(&manifest);
    for wanted in [
        "audit.events",
        "public.numbers",
        "public.times",
        "public.blobs_and_docs",
        "public.generated",
        "public.measurements_2025",
        "public.measurements_2026",
        "public.with_dropped",
        "public.duplicates",
        "public.empty_table",
        "public.tickets",
        "Mixed Schema.Odd \"Name\", really",
    ] {
        assert!(
            tables.iter().any(|(s, t)| format!("{s}.{t}") == wanted),
            "{wanted} not in the manifest: {tables:?}"
        );
    }
    assert!(b.drill_record().is_none());

    let res = b.drill(&[]);
    let checks = assert_drill_passed(&b, &res);
    let out = res.json();
    let record = &out["record"];
    assert_eq!(record["kept"], false);
    let restored_to = record["restored-to"].as_str().unwrap();
    let scratch = restored_to.rsplit('/').next().unwrap();
    assert!(
        scratch.starts_with("pgward_drill_") && scratch.contains("_dr_corpus_"),
        "{restored_to}"
    );
    assert!(
        out["restore"]["feed"]
            .as_str()
            .unwrap()
            .starts_with("spooled"),
        "{out}"
    );
    assert!(
        checks["schema"].1.contains("equals the archive"),
        "{:?}",
        checks["schema"]
    );

    assert!(!database_exists(scratch), "{scratch} was not dropped");
    assert_eq!(b.scratch_databases(), Vec::<String>::new());
    assert_eq!(b.tmp_files(), Vec::<String>::new());
    assert!(b.drill_record_path().is_file());

    let listed = run(pgward(&b.repo()).args(["--json", "list"]));
    listed.assert_ok();
    let listed = listed.json();
    let entry = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == b.id.as_str())
        .unwrap_or_else(|| panic!("{} not listed: {listed}", b.id))
        .clone();
    assert_eq!(entry["last-drill"]["verdict"], "pass", "{entry}");
    assert_eq!(entry["last-drill"]["finished-at"], record["finished-at"]);
    assert!(entry["last-drill"]["first-failure"].is_null(), "{entry}");

    let text = run(pgward(&b.repo()).arg("list"));
    text.assert_ok();
    assert!(text.stdout.contains("LAST DRILL"), "{}", text.stdout);
    let line = text.stdout.lines().find(|l| l.starts_with(&b.id)).unwrap();
    assert!(line.contains("PASS"), "{line}");
}

#[test]
fn a_kept_drill_database_holds_the_verified_hash_chain() {
    let b = Backed::new("dr_keep");
    // Spools of restores that died (their pid is gone) hold plaintext and
    // are removed by the next spooled restore; a live one is left alone.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let tmp = b.repo().join("tmp");
    let stale = tmp.join(format!("restore-{dead_pid}-{}.archive", b.id));
    let live = tmp.join(format!("restore-{}-{}.archive", std::process::id(), b.id));
    std::fs::write(&stale, b"left by a killed restore").unwrap();
    std::fs::write(&live, b"a restore in progress").unwrap();
    let res = b.drill(&["--keep"]);
    assert!(!stale.exists(), "the dead restore's spool is still there");
    assert_eq!(std::fs::read(&live).unwrap(), b"a restore in progress");
    std::fs::remove_file(&live).unwrap();
    assert_drill_passed(&b, &res);
    let out = res.json();
    assert_eq!(out["record"]["kept"], true);
    let scratch = out["record"]["restored-to"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(b.scratch_databases(), vec![scratch.clone()]);

    assert_eq!(
        cluster().psql(&scratch, "SELECT count(*) FROM audit.chain_breaks"),
        "0"
    );
    assert_eq!(
        cluster().psql(&b.db, "SELECT count(*) FROM audit.chain_breaks"),
        "0"
    );
    let head = chain_head(&scratch);
    assert_eq!(head.len(), 64, "{head}");
    assert_eq!(head, chain_head(&b.db));
    let tables = all_tables(&b.manifest());
    assert_eq!(row_counts(&scratch, &tables), row_counts(&b.db, &tables));
    assert_eq!(
        table_contents(&scratch, &tables),
        table_contents(&b.db, &tables)
    );
    for sequence in ["public.ticket_seq", "public.tickets_id_seq"] {
        assert_eq!(
            sequence_state(&scratch, sequence),
            sequence_state(&b.db, sequence)
        );
    }
    assert_eq!(b.tmp_files(), Vec::<String>::new());
    drop_database(&scratch);
    assert!(!database_exists(&scratch));
}

/// A forger who rewrote one row and recomputed every digest in the
/// manifest, but could not recompute the fingerprints.
#[test]
fn a_forged_row_with_recomputed_digests_fails_the_drill_naming_its_table() {
    let b = Backed::new("dr_forged");
    let before = b.manifest();
    let recorded = before["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["schema"] == "public" && t["table"] == "duplicates")
        .unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    rebuild_artifact(&b, b"other\n", b"othes\n", true);
    // The digests agree with the forged artifact; verify's table data
    // check (the archive's fingerprints against the manifest's) does not.
    let verified = run(pgward(&b.repo()).args(["--json", "verify", &b.id]));
    assert_eq!(verified.code, 1, "{}", verified.stderr);
    assert!(
        verified.stderr.contains("table data") && verified.stderr.contains("public.duplicates"),
        "{}",
        verified.stderr
    );
    assert!(
        !verified.stderr.contains("sha256"),
        "the forger's digests do not match: {}",
        verified.stderr
    );

    let res = b.drill(&[]);
    res.assert_exit(1);
    let error = res.stderr.as_str();
    assert!(
        error.contains("table public.duplicates: backup has 4 rows with fingerprint "),
        "{error}"
    );
    assert!(error.contains(&recorded), "{error}");
    let restored = error
        .split("restored table has 4 rows with fingerprint ")
        .nth(1)
        .unwrap_or_else(|| panic!("{error}"))
        .split(|c: char| !c.is_ascii_hexdigit())
        .next()
        .unwrap();
    assert_eq!(restored.len(), recorded.len(), "{error}");
    assert_ne!(restored, recorded);

    let out = res.json();
    assert_eq!(out["record"]["verdict"], "fail");
    let record = b.drill_record().expect("a failed drill is recorded");
    assert_eq!(record, out["record"]);
    assert_eq!(record["verdict"], "fail");
    let first = record["first-failure"].as_str().unwrap();
    assert!(first.starts_with("table public.duplicates: "), "{first}");
    assert!(
        first.contains(&recorded) && first.contains(restored),
        "{first}"
    );
    let checks = checks(&record["checks"]);
    let failed: Vec<&String> = checks
        .iter()
        .filter(|(_, (ok, _))| !ok)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(failed, vec!["table public.duplicates"], "{record}");
    assert_eq!(checks.len(), corpus_check_count(&before), "{record}");
    assert_eq!(b.scratch_databases(), Vec::<String>::new());
    assert_eq!(b.tmp_files(), Vec::<String>::new());

    let listed = run(pgward(&b.repo()).args(["--json", "list"]));
    let listed = listed.json();
    assert_eq!(listed["backups"][0]["last-drill"]["verdict"], "fail");
    assert_eq!(listed["backups"][0]["last-drill"]["first-failure"], first);

    // A restore of it says the database does not match, and keeps it for
    // inspection, with the forged row in it.
    let target = format!("{}_copy", b.db);
    let res = b.restore(&target, &[]);
    res.assert_exit(1);
    assert!(
        res.stderr.contains(&format!(
            "database {target} does not match backup {}: table public.duplicates: ",
            b.id
        )),
        "{}",
        res.stderr
    );
    assert!(res.stderr.contains(&recorded), "{}", res.stderr);
    let out = res.json();
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(
        cluster().psql(
            &target,
            "SELECT string_agg(v, ',' ORDER BY v) FROM public.duplicates"
        ),
        "othes,same,same,same"
    );
    assert_eq!(b.tmp_files(), Vec::<String>::new());
    drop_database(&target);
}

#[test]
fn a_streamed_drill_of_the_corpus_passes() {
    let b = Backed::new("dr_stream");
    let res = run(pgward(&b.repo()).args(["--json", "drill", "latest", "--jobs", "1"]));
    assert_drill_passed(&b, &res);
    assert_eq!(res.json()["restore"]["feed"], "streamed");
    assert_eq!(b.scratch_databases(), Vec::<String>::new());
    assert_eq!(b.tmp_files(), Vec::<String>::new());

    // Without owners and grants, the schema comparison leaves them out too.
    let res = b.drill(&["--jobs", "1", "--no-owner", "--no-acl"]);
    assert_drill_passed(&b, &res);
    assert_eq!(b.scratch_databases(), Vec::<String>::new());
    assert_eq!(b.tmp_files(), Vec::<String>::new());
}

#[test]
fn an_encrypted_backup_drills_with_its_key_and_not_without() {
    let ws = Workspace::new();
    let (config, secret, pass) = generated_key(&ws);
    let b = Backed::take(ws, corpus_database("dr_enc"), Some(&config));
    let id = b.id.clone();
    assert!(b.manifest()["artifact"]["encryption"].is_object());
    let record = b.drill_record_path();

    // Without a key: an error before anything is restored, not a verdict.
    let mut cmd = pgward(&b.repo());
    cmd.env_remove("PGWARD_SECRET_KEY")
        .env_remove("PGWARD_PASSPHRASE_FILE")
        .args(["--json", "drill", &id]);
    let res = run(without_terminal(&mut cmd));
    res.assert_exit(2);
    assert!(res.stderr.contains("is encrypted"), "{}", res.stderr);
    assert!(res.stderr.contains("--secret-key"), "{}", res.stderr);
    assert!(!record.exists(), "a drill without a key left a verdict");
    assert_eq!(b.scratch_databases(), Vec::<String>::new());
    assert_eq!(b.tmp_files(), Vec::<String>::new());

    // With the key and its passphrase.
    let mut cmd = pgward(&b.repo());
    cmd.env_remove("PGWARD_SECRET_KEY")
        .env_remove("PGWARD_PASSPHRASE_FILE")
        .args(["--json", "drill", &id, "--secret-key"])
        .arg(&secret)
        .arg("--passphrase-file")
        .arg(&pass);
    let res = run(without_terminal(&mut cmd));
    assert_drill_passed(&b, &res);
    assert_eq!(b.scratch_databases(), Vec::<String>::new());
    assert_eq!(b.tmp_files(), Vec::<String>::new());
}

#[test]
fn restore_into_a_new_database_and_refusals_of_occupied_targets() {
    let b = Backed::new("rs_full");
    let tables = all_tables(&b.manifest());
    let source = table_contents(&b.db, &tables);
    // A name that needs quoting in SQL and in a conninfo.
    let target = format!("{} copy \"Q\" 's", b.db);
    assert!(!database_exists(&target));

    let res = b.restore(&target, &[]);
    res.assert_ok();
    let out = res.json();
    assert_eq!(out["message-type"], "restore", "{out}");
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["database"], target.as_str());
    assert_eq!(out["backup-id"], b.id.as_str());
    let checks = checks(&out["checks"]);
    assert!(checks.values().all(|(ok, _)| *ok), "{out}");
    assert_eq!(checks.len(), corpus_check_count(&b.manifest()), "{out}");
    assert_eq!(row_counts(&target, &tables), row_counts(&b.db, &tables));
    assert_eq!(table_contents(&target, &tables), source);
    assert_eq!(
        cluster().psql(&target, "SELECT count(*) FROM audit.chain_breaks"),
        "0"
    );
    assert_eq!(chain_head(&target), chain_head(&b.db));
    assert_eq!(b.tmp_files(), Vec::<String>::new());
    // A restore is not a drill.
    assert!(b.drill_record().is_none());

    // Again: the target is not empty now.
    cluster().psql(
        &target,
        "CREATE TABLE public.local_work (note text); INSERT INTO public.local_work VALUES ('mine')",
    );
    let mut with_local = tables.clone();
    with_local.push(("public".into(), "local_work".into()));
    let before = table_contents(&target, &with_local);
    let res = b.restore(&target, &[]);
    res.assert_exit(2);
    assert!(
        res.stderr.contains("exists and is not empty"),
        "{}",
        res.stderr
    );
    assert_eq!(table_contents(&target, &with_local), before);

    // The backup's own source database.
    let res = b.restore(&b.db, &[]);
    res.assert_exit(2);
    assert!(res.stderr.contains("was taken from"), "{}", res.stderr);
    assert_eq!(table_contents(&b.db, &tables), source);

    // An existing, empty database is used as it is.
    let empty = cluster().create_database(&format!("{}_empty", b.db));
    let res = b.restore(&empty, &["--jobs", "1"]);
    res.assert_ok();
    assert_eq!(res.json()["feed"], "streamed");
    assert_eq!(table_contents(&empty, &tables), source);
    drop_database(&empty);

    // Told to drop it: the local work goes, the backup comes back.
    let res = b.restore(&target, &["--drop-existing-database"]);
    res.assert_ok();
    assert_eq!(res.json()["ok"], true);
    assert_eq!(
        cluster().psql(
            &target,
            "SELECT count(*) FROM pg_class WHERE relname = 'local_work'"
        ),
        "0"
    );
    assert_eq!(table_contents(&target, &tables), source);
    assert_eq!(b.tmp_files(), Vec::<String>::new());
    drop_database(&target);
}

#[test]
fn restore_of_one_table_and_one_schema() {
    let b = Backed::new("rs_subset");
    let target = format!("{}_part", b.db);
    let res = b.restore(
        &target,
        &["--table", "public.tickets", "--schema", "Mixed Schema"],
    );
    res.assert_ok();
    let out = res.json();
    let checks = checks(&out["checks"]);
    let names: Vec<&String> = checks.keys().collect();
    assert_eq!(
        names,
        vec![
            "column order",
            "schema",
            "selection",
            "sequence public.tickets_id_seq",
            "table Mixed Schema.Odd \"Name\", really",
            "table public.tickets",
        ],
        "{out}"
    );
    assert!(checks.values().all(|(ok, _)| *ok), "{out}");
    assert_eq!(
        relations(&target),
        vec![
            "Mixed Schema.Odd \"Name\", really r",
            "Mixed Schema.Odd \"Name\", really_pkey i",
            // A materialized view over tickets alone comes along; its
            // REFRESH needs more and is named as left out.
            "public.ticket_stats m",
            "public.tickets r",
            "public.tickets_id_seq S",
            "public.tickets_pkey i",
        ]
    );
    assert!(
        checks["selection"]
            .1
            .contains("left out because they also need something outside --schema/--table: MATERIALIZED VIEW DATA public.ticket_stats"),
        "{out}"
    );
    let picked = vec![
        ("public".to_string(), "tickets".to_string()),
        (
            "Mixed Schema".to_string(),
            "Odd \"Name\", really".to_string(),
        ),
    ];
    assert_eq!(
        table_contents(&target, &picked),
        table_contents(&b.db, &picked)
    );
    assert_eq!(
        sequence_state(&target, "public.tickets_id_seq"),
        sequence_state(&b.db, "public.tickets_id_seq")
    );
    // The serial default still works and continues after the restored rows.
    assert_eq!(
        cluster().psql(
            &target,
            "INSERT INTO public.tickets (subject) VALUES ('new') RETURNING id"
        ),
        "13"
    );
    assert_eq!(
        cluster().psql(
            &target,
            "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'"
        ),
        "0"
    );
    assert_eq!(
        cluster().psql(&target, "SELECT count(*) FROM pg_largeobject_metadata"),
        "0"
    );
    assert_eq!(b.tmp_files(), Vec::<String>::new());
    drop_database(&target);

    // The same table named as in SQL, quoted.
    let res = b.restore(
        &target,
        &["--table", r#""Mixed Schema"."Odd ""Name"", really""#],
    );
    res.assert_ok();
    assert_eq!(
        relations(&target),
        vec![
            "Mixed Schema.Odd \"Name\", really r",
            "Mixed Schema.Odd \"Name\", really_pkey i",
        ]
    );
    assert_eq!(
        table_contents(&target, &picked[1..]),
        table_contents(&b.db, &picked[1..])
    );
    drop_database(&target);

    // A selection of nothing is refused, and leaves no database.
    let res = b.restore(&target, &["--table", "public.no_such_table"]);
    res.assert_exit(2);
    assert!(res.stderr.contains("select nothing"), "{}", res.stderr);
    assert!(!database_exists(&target));
    assert_eq!(b.tmp_files(), Vec::<String>::new());
}

#[test]
fn a_damaged_artifact_fails_the_drill_and_the_restore_leaves_no_database() {
    let b = Backed::new("dr_damaged");
    let artifact = b.artifact();
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&artifact, &bytes).unwrap();

    let res = b.drill(&[]);
    res.assert_exit(1);
    assert!(res.stderr.contains("damaged"), "{}", res.stderr);
    let record = b.drill_record().expect("a failed drill is recorded");
    assert_eq!(record["verdict"], "fail", "{record}");
    let first = record["first-failure"].as_str().unwrap();
    assert!(first.contains("damaged"), "{first}");
    assert_eq!(res.json()["record"], record);
    assert!(res.json()["restore"].is_null());
    assert_eq!(b.scratch_databases(), Vec::<String>::new());
    assert_eq!(b.tmp_files(), Vec::<String>::new());

    let target = format!("{}_copy", b.db);
    for jobs in ["2", "1"] {
        let res = b.restore(&target, &["--jobs", jobs]);
        assert_eq!(
            res.code, 1,
            "--jobs {jobs}: stdout:\n{}\nstderr:\n{}",
            res.stdout, res.stderr
        );
        assert!(res.stderr.contains("damaged"), "{}", res.stderr);
        assert!(!database_exists(&target), "--jobs {jobs} left {target}");
        assert_eq!(b.tmp_files(), Vec::<String>::new());
    }
    // A database pgward did not create is not dropped; it stays empty.
    let empty = cluster().create_database(&format!("{}_empty", b.db));
    let res = b.restore(&empty, &[]);
    res.assert_exit(1);
    assert!(res.stderr.contains("damaged"), "{}", res.stderr);
    assert!(database_exists(&empty));
    assert_eq!(relations(&empty), Vec::<String>::new());
    drop_database(&empty);
}

/// Damage behind a forged artifact digest (the archive's is left as the
/// backup recorded it): found while reading, before pg_restore sees it
/// when spooled, at the end of the stream when streamed; either way the
/// database pgward created is gone.
#[test]
fn a_forged_artifact_digest_is_found_while_restoring() {
    let b = Backed::new("rs_forged");
    rebuild_artifact(&b, b"other\n", b"othes\n", false);
    let target = format!("{}_copy", b.db);
    for jobs in ["2", "1"] {
        let res = b.restore(&target, &["--jobs", jobs]);
        assert_eq!(
            res.code, 1,
            "--jobs {jobs}: stdout:\n{}\nstderr:\n{}",
            res.stdout, res.stderr
        );
        assert!(
            res.stderr.contains("is damaged: the archive has"),
            "{}",
            res.stderr
        );
        assert!(!database_exists(&target), "--jobs {jobs} left {target}");
        assert_eq!(b.tmp_files(), Vec::<String>::new());
    }
    let res = b.drill(&["--jobs", "1"]);
    res.assert_exit(1);
    let record = b.drill_record().expect("recorded");
    assert_eq!(record["verdict"], "fail");
    assert!(
        record["first-failure"]
            .as_str()
            .unwrap()
            .contains("damaged"),
        "{record}"
    );
    assert_eq!(b.scratch_databases(), Vec::<String>::new());
}

#[test]
fn a_pg_restore_failure_drops_the_database_it_created() {
    let b = Backed::new("rs_pgfail");
    let target = format!("{}_moods", b.db);
    for jobs in ["2", "1"] {
        // The table's enum type is in public, which --table does not
        // restore (an extension's type would come along).
        let res = b.restore(&target, &["--table", "public.moods", "--jobs", jobs]);
        assert_eq!(
            res.code, 1,
            "--jobs {jobs}: stdout:\n{}\nstderr:\n{}",
            res.stdout, res.stderr
        );
        assert!(res.stderr.contains("pg_restore"), "{}", res.stderr);
        assert!(
            res.stderr.contains("type \"public.mood\" does not exist"),
            "{}",
            res.stderr
        );
        assert!(!database_exists(&target), "--jobs {jobs} left {target}");
        assert_eq!(b.tmp_files(), Vec::<String>::new());
    }
}

/// README (restore): "The artifact's stored size and sha256 are checked
/// before anything is created." An artifact that fails that cheap check
/// must not cost the operator the database --drop-existing-database was
/// going to replace.
#[test]
fn a_damaged_artifact_does_not_drop_the_existing_database() {
    let b = small_backup(Workspace::new(), "rs_dmgdrop", None);
    let artifact = b.artifact();
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&artifact, &bytes).unwrap();
    let target = occupied_database("rs_dmgdrop_target");

    let res = b.restore(&target, &["--drop-existing-database"]);
    res.assert_exit(1);
    assert!(res.stderr.contains("damaged"), "{}", res.stderr);
    assert_untouched(
        &target,
        "dropped for a backup that was known damaged before anything was restored",
    );
    drop_database(&target);
}

/// Without a key nothing can be restored, which pgward knows before it
/// touches the server: the database --drop-existing-database would have
/// replaced stays.
#[test]
fn an_encrypted_backup_without_a_key_does_not_drop_the_existing_database() {
    let ws = Workspace::new();
    let (config, _, _) = generated_key(&ws);
    let b = small_backup(ws, "rs_keydrop", Some(&config));
    let target = occupied_database("rs_keydrop_target");

    let mut cmd = pgward(&b.repo());
    cmd.env_remove("PGWARD_SECRET_KEY")
        .env_remove("PGWARD_PASSPHRASE_FILE")
        .args([
            "--json",
            "restore",
            &b.id,
            "--to",
            &target,
            "--drop-existing-database",
        ]);
    let res = run(without_terminal(&mut cmd));
    res.assert_exit(2);
    assert!(res.stderr.contains("is encrypted"), "{}", res.stderr);
    assert_untouched(
        &target,
        "dropped although nothing could be restored without a key",
    );
    drop_database(&target);
}

/// A drill without a key creates no scratch database: run as a role that
/// may not create databases, it must still say that the backup is
/// encrypted (exit 2), not fail on CREATE DATABASE.
#[test]
fn a_drill_without_a_key_creates_no_scratch_database() {
    let ws = Workspace::new();
    let (config, _, _) = generated_key(&ws);
    let b = small_backup(ws, "dr_nokey", Some(&config));
    let role = format!("{}_nocreatedb", b.db);
    cluster().psql(
        "postgres",
        &format!("CREATE ROLE {} LOGIN NOCREATEDB", qi(&role)),
    );

    let mut cmd = pgward(&b.repo());
    cmd.env_remove("PGWARD_SECRET_KEY")
        .env_remove("PGWARD_PASSPHRASE_FILE")
        .args(["--json", "drill", &b.id, "--restore-connection"])
        .arg(format!("user={role} dbname=postgres"));
    let res = run(without_terminal(&mut cmd));
    cluster().psql("postgres", &format!("DROP ROLE {}", qi(&role)));
    res.assert_exit(2);
    assert!(res.stderr.contains("is encrypted"), "{}", res.stderr);
    assert!(!b.drill_record_path().exists());
    assert_eq!(b.scratch_databases(), Vec::<String>::new());
}

#[test]
fn a_drill_and_a_restore_on_a_spare_server() {
    let b = Backed::new("dr_spare");
    let spare = spare_cluster();
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        spare.socket_dir.display(),
        spare.port
    );
    let spare_databases = || {
        spare
            .psql("postgres", "SELECT datname FROM pg_database ORDER BY 1")
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let before = spare_databases();

    let res = b.drill(&["--restore-connection", &conninfo]);
    assert_drill_passed(&b, &res);
    let restored_to = res.json()["record"]["restored-to"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        restored_to.contains(&spare.socket_dir.display().to_string()),
        "{restored_to}"
    );
    // The scratch database was made and dropped on the spare; the source
    // cluster never saw one.
    assert_eq!(spare_databases(), before);
    assert_eq!(b.scratch_databases(), Vec::<String>::new());

    // The source database's own name is free on another cluster.
    let res = b.restore(&b.db, &["--restore-connection", &conninfo]);
    res.assert_ok();
    assert_eq!(res.json()["ok"], true);
    assert_eq!(
        spare.psql(&b.db, "SELECT count(*) FROM audit.chain_breaks"),
        "0"
    );
    assert_eq!(chain_head_on(spare, &b.db), chain_head_on(cluster(), &b.db));
    spare.psql("postgres", &format!("DROP DATABASE {}", qi(&b.db)));
}

fn chain_head_on(on: &Cluster, db: &str) -> String {
    on.psql(
        db,
        "SELECT encode(hash, 'hex') FROM audit.events ORDER BY seq DESC LIMIT 1",
    )
}

#[test]
fn a_signal_during_a_drill_drops_its_database_and_spool_and_records_nothing() {
    let b = small_backup(Workspace::new(), "dr_signal", None);
    let real = real_pg_dump().replace("pg_dump", "pg_restore");
    let marker = b.ws.path("restoring");
    // The restore run itself (--verbose) announces itself and hangs; the
    // version probe and the schema comparison reach the real pg_restore.
    let wrapper = b.ws.script(
        "pg_restore",
        &format!(
            "#!/bin/sh\ncase \"$*\" in *--verbose*) touch {}; exec sleep 60;; esac\nexec {real} \"$@\"\n",
            marker.display()
        ),
    );
    let config = b.ws.file(
        "restore.toml",
        &format!("[pg-restore]\npath = \"{}\"\n", wrapper.display()),
    );
    let mut child = pgward(&b.repo())
        .arg("--config")
        .arg(&config)
        .args(["--json", "drill", &b.id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_restore never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The scratch database exists and the spool is in tmp/ now.
    assert_eq!(b.scratch_databases().len(), 1);
    assert!(
        b.tmp_files().iter().any(|f| f.ends_with(".archive")),
        "{:?}",
        b.tmp_files()
    );
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the drill did not stop promptly"
    );
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert_eq!(b.scratch_databases(), Vec::<String>::new());
    assert_eq!(b.tmp_files(), Vec::<String>::new());
    assert!(
        b.drill_record().is_none(),
        "an interrupted drill is no verdict"
    );
}
