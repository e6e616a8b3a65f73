//! Governed schema changes (`pgward apply`), episode 4 of the field notes
//! end to end: a schema owned by one role, an application role with USAGE
//! only, a reviewed 12-table artifact with primary and foreign keys, and
//! the ways such a change goes wrong (wrong bytes, wrong role, a statement
//! that fails, a lock held by someone else, one object too many).

use crate::harness::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const SCHEMA: &str = "cutter_governance";

/// The reviewed artifact: 12 tables with primary keys, 19 foreign keys
/// (each table refers to the one before it; t05..t12 also to t01) and a
/// function whose dollar-quoted body holds semicolons.
fn artifact() -> String {
    let mut sql = String::from("-- change 4711: cutter governance tables; reviewed\n");
    for n in 1..=12 {
        sql.push_str(&format!(
            "CREATE TABLE {SCHEMA}.t{n:02} (\n    id bigint PRIMARY KEY,\n"
        ));
        if n > 1 {
            sql.push_str(&format!(
                "    prev bigint REFERENCES {SCHEMA}.t{:02} (id),\n",
                n - 1
            ));
        }
        if n >= 5 {
            sql.push_str(&format!("    root bigint REFERENCES {SCHEMA}.t01 (id),\n"));
        }
        sql.push_str("    note text DEFAULT 'a;b'\n);\n\n");
    }
    sql.push_str(&format!(
        "CREATE FUNCTION {SCHEMA}.touch(x bigint) RETURNS bigint LANGUAGE plpgsql AS $body$\n\
         BEGIN\n    x := x + 1; -- a ; inside the body\n    RETURN x;\nEND;\n$body$;\n"
    ));
    sql
}

const DELTA: &str = "[expected-delta.cutter_governance]\n\
    tables = 12\nprimary-keys = 12\nforeign-keys = 19\nindexes = 12\nfunctions = 1\n";

/// A database laid out as in episode 4, and the roles of the story.
struct Change {
    ws: Workspace,
    db: String,
    owner: String,
    app: String,
    config: PathBuf,
}

fn episode4(hint: &str) -> Change {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let ws = Workspace::new();
    let db = cluster().create_database(hint);
    let (owner, app) = (format!("workflow_admin_{n}"), format!("directus_{n}"));
    cluster().psql(
        "postgres",
        &format!("CREATE ROLE {owner} LOGIN; CREATE ROLE {app} LOGIN"),
    );
    cluster().psql(
        &db,
        &format!(
            "CREATE SCHEMA {SCHEMA} AUTHORIZATION {owner}; GRANT USAGE ON SCHEMA {SCHEMA} TO {app};"
        ),
    );
    load_rows(&db, "public.items", 100);
    let config = ws.file("pgward.toml", &format!("[connection]\ndbname = \"{db}\"\n"));
    Change {
        ws,
        db,
        owner,
        app,
        config,
    }
}

/// psql pointed at the test cluster, for wrapper scripts: pgward gives
/// its children a conninfo, not the libpq environment.
fn psql() -> String {
    let c = cluster();
    format!(
        "psql -X -h {} -p {} -U postgres",
        c.socket_dir.display(),
        c.port
    )
}

fn system_identifier() -> String {
    cluster().psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    )
}

impl Change {
    /// Writes the artifact and a package that pins it, runs as `role`,
    /// and declares `delta`; `extra` is more TOML.
    fn package(&self, name: &str, sql: &str, role: &str, delta: &str, extra: &str) -> PathBuf {
        let artifact = self.ws.file(&format!("{name}.sql"), sql);
        let absent: Vec<String> = (1..=12)
            .map(|n| format!("\"table {SCHEMA}.t{n:02}\""))
            .collect();
        self.ws.file(
            &format!("{name}.toml"),
            &format!(
                "artifact = \"{name}.sql\"\nartifact-sha256 = \"{}\"\ndatabase = \"{}\"\n\
                 system-identifier = \"{}\"\nrole = \"{role}\"\n{extra}\n\
                 [apply-connection]\nuser = \"{role}\"\n\n\
                 [preconditions]\nabsent = [{}]\npresent = [\"schema {SCHEMA}\"]\n\
                 checks = [\"SELECT to_regclass('public.items') IS NOT NULL\"]\n\n{delta}",
                sha256_file(&artifact),
                self.db,
                system_identifier(),
                absent.join(", ")
            ),
        )
    }

    /// Makes the backup before the change run `script` (bash, with `$PSQL`
    /// a psql to this database) first: what another session does between
    /// the rehearsal and the apply.
    fn while_backing_up(&self, script: &str) {
        let wrapper = self.ws.script(
            "pg_dump",
            &format!(
                "PSQL='{} -d {}'\nif [[ \" $* \" != *' --version '* ]]; then\n{script}\nfi\nexec {} \"$@\"",
                psql(),
                self.db,
                real_pg_dump()
            ),
        );
        std::fs::write(
            &self.config,
            format!(
                "[connection]\ndbname = \"{}\"\n[pg-dump]\npath = \"{}\"\n",
                self.db,
                wrapper.display()
            ),
        )
        .unwrap();
    }

    fn apply(&self, package: &PathBuf, args: &[&str]) -> Run {
        run(pgward(&self.ws.repo())
            .args(["--json", "--config"])
            .arg(&self.config)
            .arg("apply")
            .arg(package)
            .args(args))
    }

    /// The database's schema as stock pg_dump writes it.
    fn schema_dump(&self) -> String {
        let out = Command::new("pg_dump")
            .args(["--schema-only", "-d", &self.db])
            .envs(cluster().env())
            .output()
            .unwrap();
        assert!(out.status.success());
        // Without the random \restrict key pg_dump 15.14+ writes each time.
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn backups(&self) -> Vec<String> {
        let list = run(pgward(&self.ws.repo())
            .args(["--json", "--config"])
            .arg(&self.config)
            .arg("list"));
        if list.code != 0 {
            return Vec::new();
        }
        listed_backup_ids(&list.json())
    }
}

/// The report files the run names, read back: JSON and Markdown.
fn saved_report(report: &Value) -> (Value, String) {
    let files: Vec<PathBuf> = report["report-files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| PathBuf::from(f.as_str().unwrap()))
        .collect();
    assert_eq!(files.len(), 2, "{report}");
    for file in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let json = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    (json, std::fs::read_to_string(&files[1]).unwrap())
}

fn check_status(report: &Value, name: &str) -> String {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

#[test]
fn episode_4_as_the_app_role_is_blocked_by_the_rehearsal_and_changes_nothing() {
    let change = episode4("apply_ep4_app");
    let package = change.package("change", &artifact(), &change.app, DELTA, "");
    let before = change.schema_dump();

    let run = change.apply(&package, &[]);
    run.assert_exit(4);
    let report = run.json();
    assert_eq!(report["status"], "BLOCKED_PREFLIGHT");
    let cause = report["cause"].as_str().unwrap();
    let app = &change.app;
    let owner = &change.owner;
    assert!(
        cause.contains(&format!(
            "statement 1 (CREATE TABLE {SCHEMA}.t01): permission denied for schema {SCHEMA}; role {app} has USAGE but not CREATE; schema owner {owner}"
        )),
        "{cause}"
    );
    let remediation = report["remediation"].to_string();
    assert!(
        remediation.contains(&format!("GRANT CREATE ON SCHEMA {SCHEMA} TO {app};"))
            && remediation.contains(&format!("REVOKE CREATE ON SCHEMA {SCHEMA} FROM {app};"))
            && remediation.contains(&format!("user = \\\"{owner}\\\"")),
        "{remediation}"
    );
    // The identity checks passed before the rehearsal ran.
    for check in [
        "artifact-sha256",
        "statements",
        "system-identifier",
        "database",
        "role",
        "preconditions",
    ] {
        assert_eq!(check_status(&report, check), "PASS", "{check}");
    }
    assert_eq!(check_status(&report, "rehearsal"), "FAIL");
    assert_eq!(report["rehearsal"]["ended-with"], "ROLLBACK");
    assert_eq!(report["rehearsal"]["failure"]["sqlstate"], "42501");
    // No backup, no change: byte-identical schema, and the report says so.
    assert!(report.get("backup").is_none(), "{report}");
    assert!(change.backups().is_empty());
    assert_eq!(change.schema_dump(), before);
    assert_eq!(report["production-changed"], false);
    assert_eq!(
        report["baseline-before"]["digest"],
        report["baseline-after"]["digest"]
    );
    // The grant was printed, never executed.
    assert_eq!(
        cluster().psql(
            &change.db,
            &format!("SELECT has_schema_privilege('{app}', '{SCHEMA}', 'CREATE')")
        ),
        "f"
    );
    let (saved, markdown) = saved_report(&report);
    assert_eq!(saved["status"], "BLOCKED_PREFLIGHT");
    assert_eq!(saved["cause"], report["cause"]);
    assert!(markdown.contains("BLOCKED_PREFLIGHT") && markdown.contains("| rehearsal | FAIL |"));
}

#[test]
fn episode_4_as_the_owner_applies_exactly_the_declared_delta_after_a_verifiable_backup() {
    let change = episode4("apply_ep4_owner");
    let package = change.package(
        "change",
        &artifact(),
        &change.owner,
        &format!(
            "{DELTA}\n[postconditions]\npresent = [\"table {SCHEMA}.t12\"]\nchecks = [\"SELECT count(*) = 12 FROM pg_tables WHERE schemaname = '{SCHEMA}'\"]\n"
        ),
        "",
    );
    // A webhook that asked for apply events, and a heartbeat that did not.
    let listener = HttpListener::start(Answer::Ok, String::new);
    std::fs::write(
        &change.config,
        format!(
            "[connection]\ndbname = \"{}\"\n\n[[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\nevents = [\"apply\"]\n\n[[notify]]\nkind = \"uptime-kuma\"\nurl = \"http://127.0.0.1:{port}/api/push/kuma\"\n",
            change.db,
            port = listener.port
        ),
    )
    .unwrap();

    let run = change.apply(&package, &[]);
    run.assert_ok();
    let report = run.json();
    let received = listener.received();
    assert_eq!(received.len(), 1, "only the webhook asked for apply events");
    assert_eq!(received[0].target, "/hook");
    let sent: Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(sent["pgward-event"], "apply");
    assert_eq!(sent["message-type"], "apply");
    assert_eq!(sent["status"], "APPLIED");
    assert_eq!(report["notifications"][0]["delivered"], true);
    assert_eq!(report["status"], "APPLIED", "{report}");
    assert_eq!(report["artifact"]["statements"], 13);
    assert_eq!(report["production-changed"], true);
    assert_eq!(check_status(&report, "verified-after-commit"), "PASS");
    assert_eq!(report["apply"]["ended-with"], "COMMIT");
    let created = report["apply"]["delta"]["created"].as_array().unwrap();
    assert_eq!(created.len(), 12 + 12 + 19 + 12 + 1, "{created:?}");
    assert!(created.contains(&Value::from(format!("function {SCHEMA}.touch(x bigint)"))));
    assert!(
        report["apply"]["delta"]["altered"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // What the catalog says now, by plain SQL.
    let counts = cluster().psql(
        &change.db,
        &format!(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                      WHERE n.nspname = '{SCHEMA}' AND c.relkind = 'r'), \
                    (SELECT count(*) FROM pg_constraint WHERE connamespace = '{SCHEMA}'::regnamespace AND contype = 'p'), \
                    (SELECT count(*) FROM pg_constraint WHERE connamespace = '{SCHEMA}'::regnamespace AND contype = 'f'), \
                    {SCHEMA}.touch(41)"
        ),
    );
    assert_eq!(counts, "12|12|19|42");

    // The backup before the change: listed, verifiable, without the new tables.
    let backup = report["backup"]["id"].as_str().unwrap().to_string();
    assert_eq!(change.backups(), vec![backup.clone()]);
    run_verify(&change, &backup);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(
            change
                .ws
                .repo()
                .join("backups")
                .join(format!("{backup}.manifest.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["archive"]["sha256"],
        report["backup"]["archive-sha256"]
    );
    assert!(!manifest["tables"].to_string().contains(SCHEMA));

    let (saved, markdown) = saved_report(&report);
    assert_eq!(saved["status"], "APPLIED");
    assert!(
        markdown.contains(&format!("| id | {backup} |")),
        "{markdown}"
    );

    // The same package again: the tables it expects absent exist now.
    let again = change.apply(&package, &[]);
    again.assert_exit(4);
    let again = again.json();
    assert_eq!(check_status(&again, "preconditions"), "FAIL");
    assert!(
        again["cause"]
            .as_str()
            .unwrap()
            .contains(&format!("table {SCHEMA}.t01 exists (expected absent)")),
        "{again}"
    );
    assert!(again.get("rehearsal").is_none());
    assert_eq!(change.backups(), vec![backup]);
}

fn run_verify(change: &Change, id: &str) {
    run(pgward(&change.ws.repo())
        .args(["--config"])
        .arg(&change.config)
        .args(["verify", id]))
    .assert_ok();
}

#[test]
fn an_altered_artifact_is_refused_before_anything_connects() {
    let change = episode4("apply_refused");
    let package = change.package("change", &artifact(), &change.owner, DELTA, "");
    // Edited after approval: one character.
    let approved = sha256_file(&change.ws.path("change.sql"));
    std::fs::write(
        change.ws.path("change.sql"),
        artifact().replace("'a;b'", "'a;c'"),
    )
    .unwrap();
    let altered = sha256_file(&change.ws.path("change.sql"));
    // A config whose server does not exist: a connection attempt would fail
    // differently (BLOCKED_PREFLIGHT, "cannot connect").
    let nowhere = change.ws.file(
        "nowhere.toml",
        &format!(
            "[connection]\ndbname = \"{}\"\nhost = \"/nonexistent\"\n",
            change.db
        ),
    );
    let run = run(pgward(&change.ws.repo())
        .args(["--json", "--config"])
        .arg(&nowhere)
        .arg("apply")
        .arg(&package));
    run.assert_exit(2);
    let report = run.json();
    assert_eq!(report["status"], "REFUSED");
    let cause = report["cause"].as_str().unwrap();
    assert!(
        cause.contains(&approved) && cause.contains(&altered),
        "{cause}"
    );
    assert_eq!(report["checks"].as_array().unwrap().len(), 1);
    assert_eq!(
        report["production-evidence"],
        "nothing connected to the database"
    );
    assert!(report.get("baseline-before").is_none());
    assert!(change.backups().is_empty());
    saved_report(&report);
}

#[test]
fn statements_that_cannot_run_in_one_transaction_are_refused_with_their_lines() {
    let change = episode4("apply_nontx");
    let sql = format!(
        "CREATE TABLE {SCHEMA}.a (id int);\n\
         CREATE FUNCTION {SCHEMA}.f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;\n\
         CREATE INDEX CONCURRENTLY a_id ON {SCHEMA}.a (id);\n\
         COMMIT;\n\
         CREATE TABLE {SCHEMA}.b (id int);\n"
    );
    let package = change.package("change", &sql, &change.owner, "", "");
    let run = change.apply(&package, &[]);
    run.assert_exit(4);
    let report = run.json();
    let refused: Vec<(u64, String)> = report["refused-statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["summary"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        vec![
            (3, format!("CREATE INDEX CONCURRENTLY a_id ON {SCHEMA}.a")),
            (4, "COMMIT".to_string()),
        ]
    );
    assert!(
        report["cause"]
            .as_str()
            .unwrap()
            .contains("statement 3 (line 3")
    );
    assert!(
        report.get("baseline-before").is_none(),
        "refused before connecting"
    );
    assert_eq!(
        cluster().psql(
            &change.db,
            &format!("SELECT count(*) FROM pg_class WHERE relnamespace = '{SCHEMA}'::regnamespace")
        ),
        "0"
    );
}

#[test]
fn one_object_more_than_declared_is_rolled_back_and_named() {
    let change = episode4("apply_extra");
    let sql = format!(
        "{}CREATE INDEX t02_note ON {SCHEMA}.t02 (note);\n",
        artifact()
    );
    let package = change.package("change", &sql, &change.owner, DELTA, "");
    let before = change.schema_dump();
    let run = change.apply(&package, &[]);
    run.assert_exit(4);
    let report = run.json();
    let cause = report["cause"].as_str().unwrap();
    assert!(
        cause.contains(&format!("{SCHEMA}: indexes +13, declared +12 (created "))
            && cause.contains(&format!("index {SCHEMA}.t02_note")),
        "{cause}"
    );
    assert_eq!(report["rehearsal"]["ended-with"], "ROLLBACK");
    assert!(change.backups().is_empty());
    assert_eq!(change.schema_dump(), before);
}

#[test]
fn a_statement_that_fails_only_in_production_rolls_the_whole_change_back() {
    let change = episode4("apply_stmt7");
    cluster().psql(
        &change.db,
        &format!(
            "CREATE TABLE public.codes (code int PRIMARY KEY); GRANT INSERT ON public.codes TO {}",
            change.owner
        ),
    );
    // Twelve statements; the seventh inserts a code that another session
    // takes between the rehearsal and the apply (here: while the backup
    // runs, through a pg_dump wrapper).
    let mut sql = String::new();
    for n in 1..=12 {
        if n == 7 {
            sql.push_str("INSERT INTO public.codes VALUES (7);\n");
        } else {
            sql.push_str(&format!("CREATE TABLE {SCHEMA}.s{n:02} (id int);\n"));
        }
    }
    change.while_backing_up(
        "$PSQL -q -c 'INSERT INTO public.codes VALUES (7)' >/dev/null || exit 99",
    );
    let package = change.package(
        "change",
        &sql,
        &change.owner,
        "[expected-delta.cutter_governance]\ntables = 11\n",
        "",
    );
    let before = change.schema_dump();
    let run = change.apply(&package, &[]);
    run.assert_exit(1);
    let report = run.json();
    assert_eq!(report["status"], "FAILED_ROLLED_BACK");
    assert_eq!(check_status(&report, "rehearsal"), "PASS");
    let failure = &report["apply"]["failure"];
    assert_eq!(failure["number"], 7);
    assert_eq!(failure["line"], 7);
    assert_eq!(failure["sqlstate"], "23505");
    assert!(
        report["cause"]
            .as_str()
            .unwrap()
            .starts_with("statement 7 (INSERT INTO public.codes VALUES, line 7): duplicate key"),
        "{report}"
    );
    assert_eq!(report["apply"]["statements-run"], 6);
    assert_eq!(report["apply"]["ended-with"], "ROLLBACK");
    // Statements 1-6 were rolled back with it; the backup stays.
    assert_eq!(change.schema_dump(), before);
    assert_eq!(report["production-changed"], false);
    assert_eq!(change.backups().len(), 1);
}

/// A change that alters `public.items`, and a pg_dump wrapper through
/// which, after the rehearsal and while the backup runs, another session
/// takes a lock that pg_dump's reads do not conflict with but ALTER TABLE
/// does (application name `apply-blocker`, held for a minute).
fn blocked_change(hint: &str, lock_timeout: &str) -> (Change, PathBuf) {
    let change = episode4(hint);
    cluster().psql(
        &change.db,
        &format!("ALTER TABLE public.items OWNER TO {}", change.owner),
    );
    change.while_backing_up(
        "PGAPPNAME=apply-blocker setsid $PSQL -q -c 'BEGIN; LOCK TABLE public.items IN EXCLUSIVE MODE; SELECT pg_sleep(60)' >/dev/null 2>&1 &\n\
         for i in $(seq 100); do\n\
           [[ $($PSQL -At -c \"SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid WHERE a.application_name = 'apply-blocker' AND a.datname = current_database() AND l.granted AND l.mode = 'ExclusiveLock' AND l.relation = 'public.items'::regclass\") = 1 ]] && break\n\
           sleep 0.1\n\
         done",
    );
    let package = change.package(
        "change",
        "ALTER TABLE public.items ADD COLUMN reviewed boolean;\n",
        &change.owner,
        "",
        &format!(
            "lock-timeout = \"{lock_timeout}\"\nexpected-altered = [\"table public.items\"]\n"
        ),
    );
    (change, package)
}

fn end_blocker(change: &Change) -> String {
    let pid = cluster().psql(
        &change.db,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'apply-blocker' AND datname = current_database()",
    );
    cluster().psql(
        &change.db,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'apply-blocker' AND datname = current_database()",
    );
    pid
}

#[test]
fn a_lock_held_by_another_session_rolls_back_within_lock_timeout_naming_it() {
    let (change, package) = blocked_change("apply_lock", "2s");
    let run = change.apply(&package, &[]);
    let blocker_pid = end_blocker(&change);
    run.assert_exit(1);
    let report = run.json();
    assert_eq!(report["status"], "FAILED_ROLLED_BACK");
    let failure = &report["apply"]["failure"];
    assert_eq!(failure["sqlstate"], "55P03", "{report}");
    let blockers = failure["blockers"].as_array().unwrap();
    assert_eq!(blockers.len(), 1, "{report}");
    assert_eq!(blockers[0]["pid"].to_string(), blocker_pid);
    assert_eq!(blockers[0]["application"], "apply-blocker");
    assert!(
        report["cause"].as_str().unwrap().contains(&format!(
            "blocked by pid {blocker_pid} (role postgres, application apply-blocker"
        )),
        "{report}"
    );
    let took = report["apply"]["duration-ms"].as_u64().unwrap();
    assert!((2000..15000).contains(&took), "{took} ms");
    assert_eq!(
        cluster().psql(
            &change.db,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.items'::regclass AND attname = 'reviewed'"
        ),
        "0"
    );
}

#[test]
fn preflight_only_rehearses_and_reports_the_delta_without_a_backup() {
    let change = episode4("apply_preflight");
    let package = change.package("change", &artifact(), &change.owner, DELTA, "");
    let before = change.schema_dump();
    let run = change.apply(&package, &["--preflight-only"]);
    run.assert_ok();
    let report = run.json();
    assert_eq!(report["status"], "PREFLIGHT_PASSED");
    assert_eq!(
        report["rehearsal"]["delta"]["counts"][SCHEMA],
        serde_json::json!({"tables": 12, "primary-keys": 12, "foreign-keys": 19, "indexes": 12, "functions": 1})
    );
    assert!(change.backups().is_empty());
    assert_eq!(change.schema_dump(), before);
}

#[test]
fn a_signal_while_the_change_waits_rolls_it_back_and_still_reports() {
    let (change, package) = blocked_change("apply_signal", "60s");
    let child = pgward(&change.ws.repo())
        .args(["--json", "--config"])
        .arg(&change.config)
        .arg("apply")
        .arg(&package)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the ALTER TABLE waits for the blocker's lock.
    let waiting = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        cluster().psql(
            &change.db,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database() AND query LIKE 'ALTER TABLE public.items%'",
        ) == "1"
    });
    assert!(waiting, "the change never waited for the lock");
    let signalled = std::time::Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let took = signalled.elapsed();
    end_blocker(&change);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["status"], "FAILED_ROLLED_BACK");
    assert_eq!(report["interrupted-by"], 2);
    assert_eq!(report["apply"]["ended-with"], "ROLLBACK");
    assert_eq!(report["apply"]["failure"]["sqlstate"], "57014", "{report}");
    assert!(
        report["cause"]
            .as_str()
            .unwrap()
            .starts_with("interrupted by signal 2 during statement 1 (ALTER TABLE public.items ADD COLUMN reviewed boolean)"),
        "{report}"
    );
    assert_eq!(report["production-changed"], false);
    assert_eq!(
        cluster().psql(
            &change.db,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.items'::regclass AND attname = 'reviewed'"
        ),
        "0"
    );
    saved_report(&report);
}

#[test]
fn rehearsing_on_a_scratch_restore_keeps_the_rehearsal_off_production() {
    let change = episode4("apply_scratch");
    let blocked = change.package("blocked", &artifact(), &change.app, DELTA, "");
    let before = change.schema_dump();
    let run = change.apply(&blocked, &["--rehearse", "scratch"]);
    run.assert_exit(4);
    let report = run.json();
    // The backup came first, was drilled, and the rehearsal ran in its scratch restore.
    let backup = report["backup"]["id"].as_str().unwrap().to_string();
    assert_eq!(change.backups(), vec![backup.clone()]);
    assert_eq!(check_status(&report, "scratch"), "PASS");
    let scratch = report["rehearsal"]["ran-in"].as_str().unwrap();
    assert!(scratch.starts_with("pgward_drill_"), "{report}");
    assert!(
        report["cause"].as_str().unwrap().contains(&format!(
            "permission denied for schema {SCHEMA}; role {} has USAGE but not CREATE",
            change.app
        )),
        "{report}"
    );
    let drill: Value = serde_json::from_str(
        &std::fs::read_to_string(
            change
                .ws
                .repo()
                .join("backups")
                .join(format!("{backup}.drill.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(drill["verdict"], "pass");
    assert_eq!(
        cluster().psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{scratch}'")
        ),
        "0",
        "the scratch database is dropped"
    );
    assert_eq!(change.schema_dump(), before);
    assert_eq!(report["production-changed"], false);

    // As the owner: rehearsed on scratch, then applied to production.
    let approved = change.package("approved", &artifact(), &change.owner, DELTA, "");
    let run = change.apply(&approved, &["--rehearse", "scratch"]);
    run.assert_ok();
    let report = run.json();
    assert_eq!(report["status"], "APPLIED");
    assert!(
        report["rehearsal"]["ran-in"]
            .as_str()
            .unwrap()
            .starts_with("pgward_drill_")
    );
    assert_eq!(report["apply"]["ran-in"], "production");
    assert_eq!(
        cluster().psql(
            &change.db,
            &format!("SELECT count(*) FROM pg_tables WHERE schemaname = '{SCHEMA}'")
        ),
        "12"
    );
}

#[test]
fn a_drop_cannot_hide_behind_a_create() {
    let change = episode4("apply_drop");
    cluster().psql(
        &change.db,
        &format!(
            "CREATE TABLE public.victim (id int PRIMARY KEY); INSERT INTO public.victim SELECT generate_series(1, 10); ALTER TABLE public.victim OWNER TO {}; GRANT CREATE ON SCHEMA public TO {}",
            change.owner, change.owner
        ),
    );
    // One table more, net: two created, one dropped.
    let sql = "CREATE TABLE public.newtab (id int);\nCREATE TABLE public.newtab2 (id int);\nDROP TABLE public.victim;\n";
    let delta = "[expected-delta.public]\ntables = 1\nindexes = -1\nprimary-keys = -1\n";
    let package = change.package("change", sql, &change.owner, delta, "");
    let run = change.apply(&package, &[]);
    run.assert_exit(4);
    let report = run.json();
    assert!(
        report["cause"]
            .as_str()
            .unwrap()
            .contains("table public.victim was dropped, and expected-dropped does not name it"),
        "{report}"
    );
    assert_eq!(
        cluster().psql(&change.db, "SELECT count(*) FROM public.victim"),
        "10"
    );
    // Declared, the drop (with the index and key it holds) is the change.
    let package = change.package(
        "declared",
        sql,
        &change.owner,
        delta,
        "expected-dropped = [\"table public.victim\"]\n",
    );
    change.apply(&package, &[]).assert_ok();
    assert_eq!(
        cluster().psql(&change.db, "SELECT to_regclass('public.victim') IS NULL"),
        "t"
    );
}

#[test]
fn an_artifact_that_would_escape_the_transaction_is_refused_before_connecting() {
    let change = episode4("apply_escape");
    // With standard_conforming_strings off the server would read the
    // second line as SELECT ...; COMMIT; DELETE ...: three statements.
    let sql = "SET standard_conforming_strings = off;\n\
               SELECT 'x\\', '; COMMIT; DELETE FROM public.items; --';\n\
               SELECT setval('public.items_id_seq', 1);\n\
               COPY public.items TO PROGRAM 'true';\n";
    let package = change.package("change", sql, &change.owner, "", "");
    let run = change.apply(&package, &[]);
    run.assert_exit(4);
    let report = run.json();
    let lines: Vec<u64> = report["refused-statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 3, 4], "{report}");
    assert!(
        report.get("baseline-before").is_none(),
        "refused before connecting"
    );
    assert_eq!(
        cluster().psql(&change.db, "SELECT count(*) FROM public.items"),
        "100"
    );
}

#[test]
fn a_catalog_that_changed_after_the_preflight_rolls_the_change_back() {
    let change = episode4("apply_drift");
    // While the backup runs (after the preflight and the rehearsal),
    // someone creates one of the tables the change expects absent.
    change.while_backing_up(&format!(
        "$PSQL -q -c 'CREATE TABLE {SCHEMA}.t05 (id int)' >/dev/null || exit 99"
    ));
    let package = change.package("change", &artifact(), &change.owner, DELTA, "");
    let run = change.apply(&package, &[]);
    run.assert_exit(1);
    let report = run.json();
    assert_eq!(report["status"], "FAILED_ROLLED_BACK");
    assert_eq!(check_status(&report, "rehearsal"), "PASS");
    assert_eq!(report["apply"]["statements-run"], 0, "{report}");
    assert!(
        report["cause"].as_str().unwrap().contains(&format!(
            "the catalog changed since the preflight (table {SCHEMA}.t05"
        )),
        "{report}"
    );
    assert_eq!(
        cluster().psql(
            &change.db,
            &format!("SELECT count(*) FROM pg_tables WHERE schemaname = '{SCHEMA}'")
        ),
        "1"
    );
}
