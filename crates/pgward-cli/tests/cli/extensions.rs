//! Scoped backups and partial restores of databases that use extensions
//! (PostGIS from Debian's package, and contrib's citext, hstore, cube and
//! earthdistance), some installed in a schema of their own: what a scope
//! needs from outside itself is found at check time, brought along when it
//! is an extension, and refused when it is anything else.

use crate::harness::*;
use serde_json::Value;

/// A database with extensions in schema `extensions` (citext, PostGIS)
/// and in public (hstore, cube, earthdistance), tables in `app` and
/// `public` that use them, and a row of the user's own in PostGIS's
/// configuration table.
fn geo_database(hint: &str) -> String {
    let db = cluster().create_database(hint);
    cluster().psql(
        &db,
        "CREATE SCHEMA extensions; \
         CREATE EXTENSION citext SCHEMA extensions; \
         CREATE EXTENSION postgis SCHEMA extensions; \
         CREATE EXTENSION hstore; \
         CREATE EXTENSION cube; \
         CREATE EXTENSION earthdistance; \
         CREATE EXTENSION pg_trgm; \
         CREATE SCHEMA app; \
         CREATE TABLE app.users (id serial PRIMARY KEY, name extensions.citext NOT NULL, \
                                 tags extensions.citext[], attrs hstore, home earth); \
         INSERT INTO app.users (name, tags, attrs, home) VALUES \
             ('Ann', '{A,b}', 'a=>1', ll_to_earth(52.5, 13.4)), ('Bob', NULL, 'b=>2', NULL); \
         INSERT INTO extensions.spatial_ref_sys (srid, auth_name, auth_srid, srtext, proj4text) \
             VALUES (990001, 'pgward', 990001, '', '+proj=longlat +datum=WGS84'); \
         CREATE TABLE public.places (id int PRIMARY KEY, name extensions.citext, \
                                     geom extensions.geometry(Point, 4326), \
                                     doubled int GENERATED ALWAYS AS (id * 2) STORED); \
         CREATE INDEX places_name_trgm ON public.places USING gin ((name::text) gin_trgm_ops); \
         INSERT INTO public.places (id, name, geom) VALUES \
             (1, 'Here', extensions.ST_SetSRID(extensions.ST_MakePoint(13.4, 52.5), 4326)), \
             (2, 'There', NULL);",
    );
    db
}

/// `pgward --json ARGS... --dbname DB` with the repository of `ws`.
fn pgward_json(ws: &Workspace, db: &str, args: &[&str]) -> Run {
    run(pgward(&ws.repo())
        .arg("--json")
        .args(args)
        .args(["--dbname", db]))
}

fn manifest_of(ws: &Workspace, backup: &Run) -> Value {
    let id = backup.json()["id"].as_str().unwrap().to_string();
    let path = ws
        .repo()
        .join("backups")
        .join(format!("{id}.manifest.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `pgward --json ARGS... --config CONFIG` with the repository of `ws`.
fn with_config(ws: &Workspace, config: &std::path::Path, args: &[&str]) -> Run {
    run(pgward(&ws.repo())
        .arg("--json")
        .args(args)
        .arg("--config")
        .arg(config))
}

fn drill(ws: &Workspace, manifest: &Value) -> Run {
    run(pgward(&ws.repo()).args(["--json", "drill", manifest["id"].as_str().unwrap()]))
}

#[track_caller]
fn assert_drill_passed(res: &Run) -> Value {
    res.assert_ok();
    let out = res.json();
    assert_eq!(out["record"]["verdict"], "pass", "{out}");
    for check in out["record"]["checks"].as_array().unwrap() {
        assert_eq!(check["ok"], true, "{out}");
    }
    out
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v[key].as_str().unwrap().to_string())
        .collect()
}

fn scalar_rows(db: &str, sql: &str) -> String {
    cluster().psql(db, sql).trim().to_string()
}

#[test]
fn a_schema_scope_brings_the_extensions_it_uses_and_their_schemas() {
    let ws = Workspace::new();
    let db = geo_database("ext_schema");

    let check = pgward_json(&ws, &db, &["check", "--schema", "app"]);
    check.assert_ok();
    let report = check.json();
    let extensions = check_row(&report, "scope.extensions");
    assert_eq!(extensions["status"], "PASS", "{report}");
    let evidence = extensions["evidence"].as_str().unwrap();
    for needed in [
        "citext 1.6 (schema extensions; needed by column name of table app.users)",
        "hstore",
        "earthdistance",
        "cube 1.5 (schema public; needed by extension earthdistance)",
    ] {
        assert!(evidence.contains(needed), "{needed}: {evidence}");
    }
    assert!(
        !evidence.contains("postgis") && !evidence.contains("pg_trgm"),
        "{evidence}"
    );
    // citext[] is citext's too, not an object outside the scope.
    assert!(
        report["matrix"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"] != "scope.outside"),
        "{report}"
    );
    let schemas = check_row(&report, "scope.schemas");
    assert!(
        schemas["evidence"]
            .as_str()
            .unwrap()
            .contains("schema extensions, public"),
        "{report}"
    );

    let res = backup(&ws.repo(), &db, &["--schema", "app"]);
    res.assert_ok();
    let manifest = manifest_of(&ws, &res);
    assert_eq!(
        names(&manifest["dependencies"]["extensions"], "name"),
        vec!["citext", "cube", "earthdistance", "hstore"],
        "{manifest}"
    );
    assert_eq!(
        manifest["dependencies"]["schemas"],
        serde_json::json!(["extensions", "public"])
    );
    let arguments: Vec<&str> = manifest["pg-dump"]["arguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        arguments.contains(&"--extension=\"citext\"")
            && arguments.contains(&"--extension=\"cube\""),
        "{arguments:?}"
    );
    let out = assert_drill_passed(&drill(&ws, &manifest));
    let checked = names(&out["record"]["checks"], "name");
    assert!(checked.contains(&"table app.users".to_string()), "{out}");

    // The same scope with the extensions' schema in it: the schema is
    // dumped, the extensions still have to be named.
    let res = backup(
        &ws.repo(),
        &db,
        &["--schema", "app", "--schema", "extensions"],
    );
    res.assert_ok();
    let manifest = manifest_of(&ws, &res);
    assert_eq!(
        manifest["dependencies"]["schemas"],
        serde_json::json!(["public"])
    );
    assert_drill_passed(&drill(&ws, &manifest));

    // Only exclusions: pg_dump dumps every extension, also those living in
    // the excluded schema, which every restore then creates.
    let db = cluster().create_database("ext_excluded");
    cluster().psql(
        &db,
        "CREATE SCHEMA extensions; CREATE EXTENSION citext SCHEMA extensions; \
         CREATE TABLE public.t (x extensions.citext); INSERT INTO public.t VALUES ('A');",
    );
    let res = backup(&ws.repo(), &db, &["--exclude-schema", "extensions"]);
    res.assert_ok();
    let manifest = manifest_of(&ws, &res);
    assert_eq!(
        manifest["dependencies"]["schemas"],
        serde_json::json!(["extensions"])
    );
    assert_drill_passed(&drill(&ws, &manifest));
}

#[test]
fn table_scopes_bring_extensions_and_an_extensions_configuration_table_can_be_named() {
    let ws = Workspace::new();
    let db = geo_database("ext_table");

    let res = backup(&ws.repo(), &db, &["--table", "public.places"]);
    res.assert_ok();
    let manifest = manifest_of(&ws, &res);
    // The index's operator class is pg_trgm's.
    assert_eq!(
        names(&manifest["dependencies"]["extensions"], "name"),
        vec!["citext", "pg_trgm", "postgis"]
    );
    let out = assert_drill_passed(&drill(&ws, &manifest));
    let notes = out["record"]["notes"].to_string();
    assert!(
        notes.contains("stored generated columns in public.places"),
        "{out}"
    );
    assert!(notes.contains("extensions.spatial_ref_sys"), "{out}");

    // A backup role must be able to read it, as pg_dump will.
    let role = format!("bk_{db}");
    cluster().psql(
        &db,
        &format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA extensions TO {role}; \
             REVOKE SELECT ON extensions.spatial_ref_sys FROM PUBLIC;"
        ),
    );
    let check = run(pgward(&ws.repo()).env("PGUSER", &role).args([
        "--json",
        "check",
        "--dbname",
        &db,
        "--table",
        "extensions.spatial_ref_sys",
    ]));
    assert_eq!(check.code, 1, "{}", check.stderr);
    assert_eq!(
        check_row(&check.json(), "privilege.table-select")["evidence"],
        format!("role {role} has no SELECT on table extensions.spatial_ref_sys")
    );

    // Before, "table extensions.spatial_ref_sys in scope does not exist".
    let res = backup(&ws.repo(), &db, &["--table", "extensions.spatial_ref_sys"]);
    res.assert_ok();
    let manifest = manifest_of(&ws, &res);
    let tables = manifest["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 1, "{manifest}");
    assert_eq!(tables[0]["table"], "spatial_ref_sys");
    // Only the user's row: PostGIS's own thousands are its to create.
    assert_eq!(tables[0]["rows"], 1, "{manifest}");
    assert_drill_passed(&drill(&ws, &manifest));
}

#[test]
fn a_dependency_outside_the_scope_fails_check_and_refuses_the_backup() {
    let ws = Workspace::new();
    let db = cluster().create_database("ext_outside");
    cluster().psql(
        &db,
        "CREATE SCHEMA shared; \
         CREATE DOMAIN shared.email AS text CHECK (VALUE LIKE '%@%'); \
         CREATE SCHEMA app; \
         CREATE TABLE shared.countries (code text PRIMARY KEY); \
         INSERT INTO shared.countries VALUES ('DE'), ('FR'); \
         CREATE TABLE app.users (id int PRIMARY KEY, mail shared.email, \
                                 country text REFERENCES shared.countries); \
         INSERT INTO app.users VALUES (1, 'a@example.org', 'DE'); \
         CREATE TABLE app.m (d date) PARTITION BY RANGE (d); \
         CREATE TABLE app.m_2024 PARTITION OF app.m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01'); \
         CREATE SCHEMA \"Sales\"; \
         CREATE TABLE \"Sales\".orders (id int PRIMARY KEY); \
         INSERT INTO \"Sales\".orders VALUES (1), (2);",
    );

    let check = pgward_json(&ws, &db, &["check", "--schema", "app"]);
    assert_eq!(check.code, 1, "{}", check.stderr);
    let report = check.json();
    let outside: Vec<&Value> = report["matrix"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["id"] == "scope.outside")
        .collect();
    let evidence: Vec<&str> = outside
        .iter()
        .map(|r| r["evidence"].as_str().unwrap())
        .collect();
    assert_eq!(evidence.len(), 3, "{evidence:#?}");
    assert!(
        evidence[0].starts_with("table shared.countries (needed by constraint users_country_fkey"),
        "{evidence:#?}"
    );
    assert!(
        evidence[1].starts_with("index shared.countries_pkey"),
        "{evidence:#?}"
    );
    assert!(
        evidence[2].starts_with("type shared.email (needed by column mail of table app.users)"),
        "{evidence:#?}"
    );
    for row in &outside {
        assert_eq!(row["status"], "FAIL", "{row}");
    }
    assert!(
        outside[2]["hint"]
            .as_str()
            .unwrap()
            .starts_with("add schema shared to scope.schemas"),
        "{report}"
    );

    let res = backup(&ws.repo(), &db, &["--schema", "app"]);
    res.assert_exit(2);
    assert!(res.stderr.contains("type shared.email"), "{}", res.stderr);
    assert_eq!(
        names_in(&ws.repo().join("backups")),
        Vec::<String>::new(),
        "a refused backup writes nothing"
    );

    // A partition alone needs its parent.
    let check = pgward_json(&ws, &db, &["check", "--table", "app.m_2024"]);
    assert_eq!(check.code, 1, "{}", check.stderr);
    let row = check_row(&check.json(), "scope.outside");
    assert!(
        row["evidence"]
            .as_str()
            .unwrap()
            .starts_with("table app.m (needed by table app.m_2024)"),
        "{row}"
    );
    assert_eq!(row["hint"], "add app.m to scope.tables", "{row}");

    // A table scope's own schema, as named (not quoted), is created by
    // every restore.
    let res = backup(&ws.repo(), &db, &["--table", "\"Sales\".orders"]);
    res.assert_ok();
    let manifest = manifest_of(&ws, &res);
    assert_eq!(
        manifest["dependencies"]["schemas"],
        serde_json::json!(["Sales"])
    );
    assert_drill_passed(&drill(&ws, &manifest));

    // Including the schema removes the dependency.
    backup(&ws.repo(), &db, &["--schema", "app", "--schema", "shared"]).assert_ok();

    // A scope meant for a prepared database: a warning, and the backup
    // records what the database must hold.
    let config = ws.file(
        "prepared.toml",
        "[scope]\nschemas = [\"app\"]\nstandalone = false\n",
    );
    let check = with_config(&ws, &config, &["check", "--dbname", &db]);
    check.assert_ok();
    assert!(
        check.json()["matrix"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["id"] == "scope.outside")
            .all(|i| i["status"] == "WARN"),
        "{}",
        check.stdout
    );
    let res = with_config(&ws, &config, &["backup", "--dbname", &db]);
    res.assert_ok();
    let manifest = manifest_of(&ws, &res);
    assert_eq!(manifest["scope"]["standalone"], false, "{manifest}");
    assert_eq!(
        manifest["dependencies"]["outside"][2]["identity"], "shared.email",
        "{manifest}"
    );
    // The drill prepares its scratch database from the source, says so,
    // and does not count what it prepared as the backup's.
    let res = with_config(&ws, &config, &["drill", manifest["id"].as_str().unwrap()]);
    let out = assert_drill_passed(&res);
    let preparation = &out["record"]["checks"][0];
    assert_eq!(preparation["name"], "preparation", "{out}");
    let detail = preparation["detail"].as_str().unwrap();
    assert!(
        detail.contains("of schema shared, and the rows of shared.countries)")
            && !detail.contains("could not be created"),
        "{out}"
    );
    // The lookup table's rows came along: the foreign key to it restored.
    assert!(
        checks_named(&out, "schema").contains("equals the archive's"),
        "{out}"
    );

    // An excluded table in a schema the backup holds: the drill prepares
    // it inside the archive's own schema.
    cluster().psql(
        &db,
        "CREATE TABLE app.kinds (k text PRIMARY KEY); INSERT INTO app.kinds VALUES ('a'); \
         CREATE TABLE app.items (id int PRIMARY KEY, kind text REFERENCES app.kinds);
         INSERT INTO app.items VALUES (1, 'a');",
    );
    let config = ws.file(
        "excluded.toml",
        "[scope]\nschemas = [\"app\", \"shared\"]\nexclude-tables = [\"app.kinds\"]\nstandalone = false\n",
    );
    let res = with_config(&ws, &config, &["backup", "--dbname", &db]);
    res.assert_ok();
    let manifest = manifest_of(&ws, &res);
    assert_eq!(
        manifest["dependencies"]["outside"][0]["identity"], "app.kinds",
        "{manifest}"
    );
    let res = with_config(&ws, &config, &["drill", manifest["id"].as_str().unwrap()]);
    let out = assert_drill_passed(&res);
    assert!(
        checks_named(&out, "preparation").contains("and the rows of app.kinds)"),
        "{out}"
    );
}

fn checks_named(out: &Value, name: &str) -> String {
    out["record"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["detail"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn a_partial_restore_brings_the_extensions_its_table_uses() {
    let ws = Workspace::new();
    let db = geo_database("ext_partial");
    let res = backup(&ws.repo(), &db, &[]);
    res.assert_ok();
    let id = res.json()["id"].as_str().unwrap().to_string();
    let restore = |to: &str| {
        run(pgward(&ws.repo()).args([
            "--json",
            "restore",
            &id,
            "--to",
            to,
            "--table",
            "public.places",
        ]))
    };

    let target = format!("{db}_places");
    let res = restore(&target);
    res.assert_ok();
    let out = res.json();
    let selection = out["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "selection")
        .unwrap_or_else(|| panic!("{out}"))["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        selection.contains("with the extensions they use: citext, pg_trgm, postgis"),
        "{selection}"
    );
    assert!(!selection.contains("left out"), "{selection}");
    assert_eq!(
        scalar_rows(
            &target,
            "SELECT string_agg(name || ':' || extensions.ST_AsText(geom), ',' ORDER BY id) FROM public.places WHERE geom IS NOT NULL"
        ),
        "Here:POINT(13.4 52.5)"
    );
    // Only what the table needs came along.
    assert_eq!(
        scalar_rows(
            &target,
            "SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension"
        ),
        "citext,pg_trgm,plpgsql,postgis"
    );
    // The index that needs pg_trgm came along too.
    assert_eq!(
        scalar_rows(
            &target,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'places_name_trgm'"
        ),
        "1"
    );

    // A database where the operator created the extensions first counts
    // as empty.
    let prepared = format!("{db}_prepared");
    cluster().psql("postgres", &format!("CREATE DATABASE {prepared}"));
    cluster().psql(
        &prepared,
        "CREATE SCHEMA extensions; CREATE EXTENSION citext SCHEMA extensions; \
         CREATE EXTENSION postgis SCHEMA extensions; CREATE EXTENSION hstore;",
    );
    // hstore is not the backup's: the comparison does not hold it against it.
    restore(&prepared).assert_ok();
    assert_eq!(
        scalar_rows(&prepared, "SELECT count(*) FROM public.places"),
        "2"
    );

    // Anything of the operator's own beside them does not.
    let occupied = format!("{db}_occupied");
    cluster().psql("postgres", &format!("CREATE DATABASE {occupied}"));
    cluster().psql(
        &occupied,
        "CREATE SCHEMA extensions; CREATE EXTENSION citext SCHEMA extensions; \
         CREATE TABLE extensions.mine (i int);",
    );
    let res = restore(&occupied);
    res.assert_exit(2);
    assert!(
        res.stderr.contains("is not empty (2 objects)"),
        "{}",
        res.stderr
    );
    for name in [target, prepared, occupied] {
        cluster().psql("postgres", &format!("DROP DATABASE {name}"));
    }
}

/// earthdistance's functions call cube's without a schema, so an index on
/// `ll_to_earth(...)` does not restore (pg_restore runs with an empty
/// search path): the drill must tell the error with the CONTEXT line that
/// explains it, and the statement.
#[test]
fn a_failing_restore_tells_its_errors_with_their_context() {
    let ws = Workspace::new();
    let db = cluster().create_database("ext_fail");
    cluster().psql(
        &db,
        "CREATE EXTENSION cube; CREATE EXTENSION earthdistance; \
         CREATE TABLE spots (id int PRIMARY KEY, lat float8, lon float8); \
         INSERT INTO spots VALUES (1, 52.5, 13.4); \
         CREATE INDEX spots_near ON spots USING gist (ll_to_earth(lat, lon));",
    );
    let res = backup(&ws.repo(), &db, &[]);
    res.assert_ok();
    let manifest = manifest_of(&ws, &res);
    for jobs in ["2", "1"] {
        let res = run(pgward(&ws.repo()).args([
            "--json",
            "drill",
            manifest["id"].as_str().unwrap(),
            "--jobs",
            jobs,
        ]));
        assert_eq!(res.code, 1, "--jobs {jobs}: {}", res.stderr);
        let failure = res.json()["record"]["first-failure"]
            .as_str()
            .unwrap()
            .to_string();
        for part in [
            "1 error: could not execute query: ERROR: type \"earth\" does not exist",
            "CONTEXT: SQL function \"ll_to_earth\" during inlining",
            "Command was: CREATE INDEX spots_near ON public.spots USING gist (public.ll_to_earth(lat, lon));",
            "INDEX spots_near",
        ] {
            assert!(failure.contains(part), "--jobs {jobs}: {part}: {failure}");
        }
    }
}
