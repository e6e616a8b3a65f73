//! `check`, `grants` and `backup --dry-run` against real roles: the
//! privilege story of episodes 1 and 2, end to end.

use crate::harness::*;
use std::process::Command;

/// A database with a least-privilege backup role that can read `public`,
/// and an application role that owns what it creates.
struct Roles {
    ws: Workspace,
    db: String,
    backup_role: String,
    app_role: String,
}

fn roles(hint: &str) -> Roles {
    let ws = Workspace::new();
    let db = cluster().create_database(hint);
    let backup_role = format!("bk_{db}");
    let app_role = format!("app_{db}");
    cluster().psql(
        &db,
        &format!(
            "CREATE ROLE {backup_role} LOGIN; CREATE ROLE {app_role} LOGIN; \
             GRANT CREATE ON DATABASE \"{db}\" TO {app_role}; \
             CREATE TABLE public.accounts (id serial PRIMARY KEY, name text); \
             INSERT INTO public.accounts (name) SELECT 'a' || g FROM generate_series(1, 50) g; \
             GRANT SELECT ON public.accounts TO {backup_role}; \
             GRANT SELECT ON SEQUENCE public.accounts_id_seq TO {backup_role};"
        ),
    );
    Roles {
        ws,
        db,
        backup_role,
        app_role,
    }
}

impl Roles {
    fn as_backup(&self, args: &[&str]) -> Run {
        run(pgward(&self.ws.repo())
            .env("PGUSER", &self.backup_role)
            .args(args)
            .args(["--dbname", &self.db]))
    }

    /// SQL as the application role (it owns what it creates).
    fn as_app(&self, sql: &str) {
        cluster().psql(&self.db, &format!("SET ROLE {}; {sql}", self.app_role));
    }

    /// Runs a script as the superuser (the "admin" of the episodes).
    fn admin_script(&self, sql: &str) {
        let out = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.db])
            .envs(cluster().env())
            .arg("-c")
            .arg(sql)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Effective ACLs of the sandbox objects, as text.
    fn sandbox_acls(&self) -> String {
        cluster().psql(
            &self.db,
            "SELECT string_agg(x, ' | ' ORDER BY x) FROM ( \
               SELECT nspname || '=' || COALESCE(nspacl, acldefault('n', nspowner))::text AS x \
                 FROM pg_namespace WHERE nspname = 'sandbox_tac' \
               UNION ALL \
               SELECT relname || '=' || COALESCE(relacl, acldefault(CASE WHEN relkind = 'S' THEN 's' ELSE 'r' END::\"char\", relowner))::text \
                 FROM pg_class WHERE relnamespace = 'sandbox_tac'::regnamespace AND relkind IN ('r', 'S')) s",
        )
    }
}

fn failing_items(check: &Run) -> Vec<(String, String)> {
    check.json()["matrix"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "FAIL")
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["evidence"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Episode 1, end to end: a new schema the backup role cannot read is
/// found before a dump fails, the printed GRANTs close it, a backup
/// succeeds, and the printed REVOKE returns the ACLs to the baseline.
#[test]
fn a_privilege_gap_is_found_closed_and_rolled_back_exactly() {
    let r = roles("gap");
    r.as_backup(&["--json", "check"]).assert_ok();

    r.as_app(
        "CREATE SCHEMA sandbox_tac; \
         CREATE TABLE sandbox_tac.proposals (id serial PRIMARY KEY, body text); \
         INSERT INTO sandbox_tac.proposals (body) VALUES ('x'), ('y'); \
         CREATE VIEW sandbox_tac.open_proposals AS SELECT * FROM sandbox_tac.proposals;",
    );
    let baseline = r.sandbox_acls();

    let check = r.as_backup(&["--json", "check"]);
    assert_eq!(check.code, 1, "{}", check.stderr);
    let role = &r.backup_role;
    assert_eq!(
        failing_items(&check),
        vec![
            (
                "privilege.schema-usage".into(),
                format!("role {role} has no USAGE on schema sandbox_tac")
            ),
            (
                "privilege.table-select".into(),
                format!("role {role} has no SELECT on table sandbox_tac.proposals")
            ),
            (
                "privilege.sequence-select".into(),
                format!("role {role} has no SELECT on sequence sandbox_tac.proposals_id_seq")
            ),
        ]
    );
    assert!(
        check.stderr.contains("readiness check failed"),
        "{}",
        check.stderr
    );

    let grants = r.as_backup(&["--json", "grants"]);
    grants.assert_ok();
    let plan = &grants.json()["plan"];
    assert_eq!(
        plan["grants"],
        serde_json::json!([
            format!("GRANT USAGE ON SCHEMA \"sandbox_tac\" TO \"{role}\";"),
            format!("GRANT SELECT ON TABLE \"sandbox_tac\".\"proposals\" TO \"{role}\";"),
            format!("GRANT SELECT ON SEQUENCE \"sandbox_tac\".\"proposals_id_seq\" TO \"{role}\";"),
        ]),
        "the view needs nothing: pg_dump does not read it"
    );
    let sql = grants.json()["sql"].as_str().unwrap().to_string();
    for statement in plan["grants"].as_array().unwrap() {
        let statement = statement.as_str().unwrap();
        assert!(
            !statement.contains("CREATE") && !statement.contains("OWNER"),
            "{statement}"
        );
    }
    assert!(
        !sql.contains("\nALTER DEFAULT"),
        "default privileges must be commented out: {sql}"
    );
    let saved = grants.json()["saved-as"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&saved).is_file());

    // The admin runs the printed script; now everything passes and a backup works.
    r.admin_script(&sql);
    r.as_backup(&["--json", "check"]).assert_ok();
    let backup = r.as_backup(&["--json", "backup"]);
    backup.assert_ok();
    let tables: Vec<String> = backup.json()["manifest"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap().to_string())
        .collect();
    assert!(tables.contains(&"proposals".to_string()), "{tables:?}");

    // A junk plan and a copy under another plan's name never stop the
    // saved one, and the copy, named, is refused as damaged.
    let grants_dir = std::path::Path::new(&saved).parent().unwrap().to_path_buf();
    std::fs::write(grants_dir.join("junk.json"), "not a plan").unwrap();
    let renamed = "20991231T235959Z-elsewhere-deadbeef";
    std::fs::copy(&saved, grants_dir.join(format!("{renamed}.json"))).unwrap();
    let named = r.as_backup(&["--json", "grants", "--revoke", "--plan", renamed]);
    named.assert_exit(1);
    assert!(
        named.stderr.contains("is damaged") && named.stderr.contains("not the plan its name says"),
        "{}",
        named.stderr
    );

    // After the plan ran there are no gaps, so the rollback comes from the saved plan.
    let revoke = r.as_backup(&["--json", "grants", "--revoke", "--plan", "latest"]);
    revoke.assert_ok();
    let revoke_sql = revoke.json()["sql"].as_str().unwrap().to_string();
    assert!(
        revoke_sql.contains(&format!(
            "REVOKE USAGE ON SCHEMA \"sandbox_tac\" FROM \"{role}\";"
        )),
        "{revoke_sql}"
    );
    r.admin_script(&revoke_sql);
    assert_eq!(
        r.sandbox_acls(),
        baseline,
        "the rollback did not return to the baseline"
    );
    assert_eq!(r.as_backup(&["check"]).code, 1);
}

#[test]
fn grants_execute_runs_the_plan_through_the_admin_connection() {
    let r = roles("execute");
    r.as_app("CREATE SCHEMA sandbox_tac; CREATE TABLE sandbox_tac.t (id int);");
    let config =
        r.ws.file("pgward.toml", "[admin-connection]\nuser = \"postgres\"\n");
    let run_execute = |config: &std::path::Path| {
        run(pgward(&r.ws.repo())
            .env("PGUSER", &r.backup_role)
            .arg("--config")
            .arg(config)
            .args(["--json", "grants", "--execute", "--dbname", &r.db]))
    };
    let res = run_execute(&config);
    res.assert_ok();
    let out = res.json();
    assert_eq!(out["message-type"], "grants-executed");
    assert_eq!(out["execution"]["gaps-before"].as_array().unwrap().len(), 2);
    assert_eq!(out["execution"]["gaps-after"].as_array().unwrap().len(), 0);
    r.as_backup(&["check"]).assert_ok();

    // The admin connection may never be the backup role itself.
    r.as_app("CREATE TABLE sandbox_tac.t2 (id int);");
    let same = r.ws.file(
        "same.toml",
        &format!("[admin-connection]\nuser = \"{}\"\n", r.backup_role),
    );
    let res = run_execute(&same);
    assert_eq!(res.code, 2, "{}", res.stderr);
    assert!(
        res.stderr
            .contains("the admin connection uses the backup role"),
        "{}",
        res.stderr
    );
}

#[test]
fn row_level_security_is_reported_as_not_closable_by_a_grant() {
    let r = roles("rls");
    r.as_app(&format!(
        "CREATE SCHEMA tenants; CREATE TABLE tenants.tenant_data (tenant int, v text); \
         ALTER TABLE tenants.tenant_data ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY by_tenant ON tenants.tenant_data USING (tenant = 1); \
         GRANT USAGE ON SCHEMA tenants TO {0}; GRANT SELECT ON tenants.tenant_data TO {0};",
        r.backup_role
    ));
    let check = r.as_backup(&["--json", "check"]);
    assert_eq!(check.code, 1);
    let failing = failing_items(&check);
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0].0, "privilege.row-security");
    assert!(
        failing[0].1.contains("table tenants.tenant_data"),
        "{failing:?}"
    );
    let grants = r.as_backup(&["grants"]);
    grants.assert_ok();
    assert!(
        grants.stdout.contains("NOT CLOSABLE BY A GRANT"),
        "{}",
        grants.stdout
    );
    assert!(
        grants.stdout.contains("nothing to grant"),
        "{}",
        grants.stdout
    );

    // pg_dump agrees: the backup fails loudly.
    let backup = r.as_backup(&["backup"]);
    assert_eq!(backup.code, 1);
    assert!(
        backup.stderr.contains("row-level security"),
        "{}",
        backup.stderr
    );
}

#[test]
fn large_objects_the_role_cannot_read_are_gaps() {
    let r = roles("lobj");
    r.as_app("SELECT lo_from_bytea(0, '\\x0102'::bytea)");
    let check = r.as_backup(&["--json", "check"]);
    assert_eq!(check.code, 1);
    let failing = failing_items(&check);
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0].0, "privilege.large-object-select");
    let grants = r.as_backup(&["--json", "grants"]);
    let sql = grants.json()["sql"].as_str().unwrap().to_string();
    assert!(sql.contains("GRANT SELECT ON LARGE OBJECT"), "{sql}");
    r.admin_script(&sql);
    r.as_backup(&["check"]).assert_ok();
    r.as_backup(&["backup"]).assert_ok();

    // Large objects are not in a narrowed scope, so they are not checked there.
    r.as_app("SELECT lo_from_bytea(0, '\\x03'::bytea)");
    r.as_backup(&["check", "--schema", "public"]).assert_ok();
}

#[test]
fn a_pinned_system_identifier_that_does_not_match_refuses() {
    let r = roles("pin");
    let config = r.ws.file(
        "pgward.toml",
        "[connection]\nsystem-identifier = \"1234567890\"\n",
    );
    let check = run(pgward(&r.ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["--json", "check", "--dbname", &r.db]));
    assert_eq!(check.code, 1);
    let failing = failing_items(&check);
    assert_eq!(failing[0].0, "cluster.identity");
    assert!(failing[0].1.contains("pins 1234567890"), "{failing:?}");
    let backup = run(pgward(&r.ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["backup", "--dbname", &r.db]));
    assert_eq!(backup.code, 2, "{}", backup.stderr);
    assert!(
        backup
            .stderr
            .contains("connection.system-identifier pins 1234567890"),
        "{}",
        backup.stderr
    );
    assert!(
        !r.ws.repo().join("quarantine").exists()
            || names_in(&r.ws.repo().join("quarantine")).is_empty()
    );

    let actual = cluster().psql(&r.db, "SELECT system_identifier FROM pg_control_system()");
    let config = r.ws.file(
        "ok.toml",
        &format!("[connection]\nsystem-identifier = \"{actual}\"\n"),
    );
    run(pgward(&r.ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["check", "--dbname", &r.db]))
    .assert_ok();
}

#[test]
fn a_pg_dump_older_than_the_server_is_refused_before_dumping() {
    let r = roles("oldtool");
    let old = r.ws.script(
        "pg_dump",
        &format!(
            "if [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 9.6.24'; exit 0; fi\nexec '{}' \"$@\"",
            real_pg_dump()
        ),
    );
    let check = run(pgward(&r.ws.repo()).args([
        "--json",
        "check",
        "--dbname",
        &r.db,
        "--pg-dump",
        old.to_str().unwrap(),
    ]));
    assert_eq!(check.code, 1);
    let failing = failing_items(&check);
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0].0, "tools.version-match");
    assert!(
        failing[0]
            .1
            .starts_with("pg_dump 9.6.24 is older than the server"),
        "{failing:?}"
    );
    let backup = backup(&r.ws.repo(), &r.db, &["--pg-dump", old.to_str().unwrap()]);
    assert_eq!(backup.code, 1);
    assert!(
        backup
            .stderr
            .contains("pg_dump 9.6.24 is older than the server"),
        "{}",
        backup.stderr
    );
    assert!(
        names_in(&r.ws.repo().join("quarantine")).is_empty(),
        "refused before dumping: nothing to quarantine"
    );
}

/// `check` and `backup --dry-run` write nothing: no repository appears,
/// and the plan names what would be dumped.
#[test]
fn check_and_dry_run_write_nothing() {
    let r = roles("dryrun");
    let check = r.as_backup(&["--json", "check"]);
    check.assert_ok();
    // The only warnings: no recipient is configured, so backups would be
    // unencrypted, and no retention or drill policy. Everything else passes.
    let report = check.json();
    assert_eq!(report["verdict"], "WARN");
    let warned: Vec<&str> = report["matrix"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] != "PASS")
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(warned, ["encryption", "policy.retention", "policy.drill"]);
    assert!(!r.ws.repo().exists(), "check created the repository");

    let plan = r.as_backup(&["--json", "backup", "--dry-run"]);
    plan.assert_ok();
    let out = plan.json();
    assert_eq!(out["message-type"], "backup-plan");
    assert_eq!(
        out["check"]["tables"],
        serde_json::json!([{"schema": "public", "table": "accounts"}])
    );
    assert!(
        out["artifact-path"]
            .as_str()
            .unwrap()
            .starts_with(r.ws.repo().join("backups").to_str().unwrap())
    );
    assert!(out["check"]["expected-backup-bytes"].as_u64().unwrap() > 0);
    assert!(!r.ws.repo().exists(), "dry run created the repository");

    let text = r.as_backup(&["backup", "--dry-run"]);
    text.assert_ok();
    assert!(
        text.stdout.contains("nothing was dumped or written"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("  public.accounts\n"),
        "{}",
        text.stdout
    );
}

/// While a backup of the database runs, `check` reports the lock as taken
/// (with the holder's pid) without disturbing the run.
#[test]
fn check_reports_a_running_backup_and_does_not_disturb_it() {
    let r = roles("lockheld");
    let started = r.ws.path("started");
    let slow = r.ws.script(
        "pg_dump",
        &format!(
            "if [ \"$1\" = --version ]; then exec '{real}' --version; fi\ntouch '{}'\nsleep 2\nexec '{real}' \"$@\"",
            started.display(),
            real = real_pg_dump()
        ),
    );
    let running = spawn_backup_until(&r.ws.repo(), &r.db, &slow, &started);
    let check = run(pgward(&r.ws.repo()).args(["--json", "check", "--dbname", &r.db]));
    assert_eq!(check.code, 1);
    let failing = failing_items(&check);
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0].0, "repository.lock");
    assert!(
        failing[0].1.contains(&format!("pid {}", running.id())),
        "{failing:?}"
    );
    let out = running.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run(pgward(&r.ws.repo()).args(["check", "--dbname", &r.db])).assert_ok();
}

#[test]
fn default_privileges_are_suggested_for_the_roles_that_create_the_tables() {
    let r = roles("ck_defaults");
    // One table owned by the application role, one by pg_database_owner
    // (whose member, the database's owner, is who creates tables).
    r.admin_script(&format!(
        "CREATE TABLE public.app_table (x int); ALTER TABLE public.app_table OWNER TO {app}; \
         CREATE TABLE public.shared_table (x int); ALTER TABLE public.shared_table OWNER TO pg_database_owner",
        app = r.app_role
    ));
    let grants = r.as_backup(&["--json", "grants"]);
    grants.assert_ok();
    let defaults = grants.json()["plan"]["optional-default-privileges"].clone();
    let defaults: Vec<&str> = defaults
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    let owner = cluster().psql(
        &r.db,
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()",
    );
    for role in [r.app_role.as_str(), owner.as_str()] {
        assert!(
            defaults.contains(&format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE \"{role}\" IN SCHEMA \"public\" GRANT SELECT ON TABLES TO \"{}\";",
                r.backup_role
            ).as_str()),
            "{role}: {defaults:?}"
        );
    }
    assert!(
        !defaults.iter().any(|d| d.contains("pg_database_owner")),
        "{defaults:?}"
    );
}
