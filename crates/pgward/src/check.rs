//! `pgward check`: the fail-closed readiness matrix (episode 3), computed
//! instead of filled in by hand. It never writes: not to the database (the
//! session is read-only), not to the repository (it is only looked at).
//!
//! The matrix is a list of items, each PASS, WARN or FAIL with its evidence
//! and, when it is not PASS, a hint. Each concern contributes its own rows
//! through one function (`tools`, `connection`, `scope`, `privileges`,
//! `repository`, `encryption`); later features (alert endpoints) add a
//! function of their own. An item that cannot be evaluated is a FAIL that
//! says why: the matrix never passes by omission.

use crate::catalog::dependencies::ScopeDependencies;
use crate::catalog::privileges::PrivilegeReport;
use crate::catalog::{CatalogSession, ServerInfo};
use crate::config::{Config, format_size};
use crate::connection::{ConnectionTarget, Env};
use crate::dump::{Tool, ToolVersion};
use crate::encryption::certificate;
use crate::error::Result;
use crate::repository::inspect::{RepositoryState, inspect};
use crate::scope::TableName;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Item {
    /// Stable identifier, e.g. `privilege.schema-usage`.
    pub id: String,
    pub status: Status,
    pub evidence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Matrix {
    pub items: Vec<Item>,
}

impl Matrix {
    pub fn add(
        &mut self,
        id: &str,
        status: Status,
        evidence: impl Into<String>,
        hint: Option<String>,
    ) {
        self.items.push(Item {
            id: id.to_string(),
            status,
            evidence: evidence.into(),
            hint,
        });
    }

    pub fn pass(&mut self, id: &str, evidence: impl Into<String>) {
        self.add(id, Status::Pass, evidence, None);
    }

    pub fn warn(&mut self, id: &str, evidence: impl Into<String>, hint: impl Into<String>) {
        self.add(id, Status::Warn, evidence, Some(hint.into()));
    }

    pub fn fail(&mut self, id: &str, evidence: impl Into<String>, hint: impl Into<String>) {
        self.add(id, Status::Fail, evidence, Some(hint.into()));
    }

    /// FAIL carrying an error's message and hint.
    pub fn fail_with(&mut self, id: &str, error: &crate::error::Error) {
        self.add(
            id,
            Status::Fail,
            error.message(),
            error.hint().map(String::from),
        );
    }

    /// FAIL for an item whose prerequisite failed.
    fn not_evaluated(&mut self, id: &str, because: &str) {
        self.fail(
            id,
            format!("not evaluated: {because}"),
            "fix the failed item above first",
        );
    }

    /// The worst status: the matrix passes only if nothing failed.
    pub fn verdict(&self) -> Status {
        self.items
            .iter()
            .map(|i| i.status)
            .max()
            .unwrap_or(Status::Fail)
    }

    pub fn failures(&self) -> usize {
        self.items
            .iter()
            .filter(|i| i.status == Status::Fail)
            .count()
    }
}

/// Everything `check` learned, for rendering and for `backup --dry-run`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckReport {
    pub verdict: Status,
    pub target: String,
    pub matrix: Matrix,
    /// Tables whose data the backup will contain (when the scope resolved).
    pub tables: Vec<TableName>,
    /// The scope as pg_dump gets it: partitions of named partitioned tables added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_scope: Option<crate::scope::Scope>,
    /// What a narrowed scope needs from outside itself (when it resolved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<ScopeDependencies>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privileges: Option<PrivilegeReport>,
    /// Stored size of the next backup: the previous one's, else the database size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_backup_bytes: Option<u64>,
}

struct Context<'a> {
    config: &'a Config,
    target: &'a ConnectionTarget,
    session: Option<CatalogSession>,
    server: Option<ServerInfo>,
    pg_dump: Option<ToolVersion>,
    tables: Option<Vec<TableName>>,
    /// The scope as pg_dump will get it (see `CatalogSession::resolve_scope`).
    scope: Option<crate::scope::Scope>,
    dependencies: Option<ScopeDependencies>,
    privileges: Option<PrivilegeReport>,
    database_size: Option<u64>,
    /// The previous backup of this database and scope, if any.
    previous: Option<crate::repository::manifest::Manifest>,
}

/// Runs every check. Only an unusable configuration is an `Err`; every
/// other problem is a FAIL row.
pub fn run(config: &Config, env: Env) -> Result<CheckReport> {
    let target = ConnectionTarget::resolve(&config.connection, env)?;
    let mut ctx = Context {
        config,
        target: &target,
        session: None,
        server: None,
        pg_dump: None,
        tables: None,
        scope: None,
        dependencies: None,
        privileges: None,
        database_size: None,
        previous: None,
    };
    let mut matrix = Matrix::default();
    for section in [
        configuration,
        tools,
        connection,
        scope,
        privileges,
        restore_order,
        repository,
        mirrors,
        encryption,
        signing,
        policy,
        notify,
    ] {
        section(&mut ctx, &mut matrix);
    }
    let expected_backup_bytes = expected_size(&ctx);
    Ok(CheckReport {
        verdict: matrix.verdict(),
        target: target.describe(),
        matrix,
        tables: ctx.tables.unwrap_or_default(),
        resolved_scope: ctx.scope,
        dependencies: ctx.dependencies,
        server: ctx.server,
        privileges: ctx.privileges,
        expected_backup_bytes,
    })
}

/// Which configuration file the answers below come from.
fn configuration(ctx: &mut Context, m: &mut Matrix) {
    let evidence = match &ctx.config.source {
        Some(file) => format!("configuration file {}", file.display()),
        None => format!(
            "no configuration file ({} not found, none given by --config or PGWARD_CONFIG): settings from the command line, the environment and defaults",
            crate::config::default_paths(&crate::connection::process_env)
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    m.pass("config", evidence);
}

fn tools(ctx: &mut Context, m: &mut Matrix) {
    let pg_dump = Tool::pg_dump(&ctx.config.pg_dump);
    match pg_dump.version() {
        Ok(v) => {
            m.pass(
                "tools.pg-dump",
                format!("pg_dump {} at {}", v.version, pg_dump.location()),
            );
            ctx.pg_dump = Some(v);
        }
        Err(e) => m.fail_with("tools.pg-dump", &e),
    }
    let pg_restore = Tool::pg_restore(&ctx.config.pg_restore);
    match pg_restore.version() {
        Ok(v) => m.pass(
            "tools.pg-restore",
            format!("pg_restore {} at {}", v.version, pg_restore.location()),
        ),
        Err(e) => m.fail_with("tools.pg-restore", &e),
    }
}

fn connection(ctx: &mut Context, m: &mut Matrix) {
    if let Some((file, mode)) = ctx.target.ignored_passfile() {
        m.warn(
            "connection.passfile",
            format!(
                "password file {} is ignored (by pgward and by libpq, so by pg_dump): group or others can read it (mode {mode:04o})",
                file.display()
            ),
            format!("chmod 600 {}", file.display()),
        );
    }
    let session =
        CatalogSession::open(ctx.target).and_then(|mut s| s.server_info().map(|info| (s, info)));
    let (mut session, server) = match session {
        Ok(pair) => pair,
        Err(e) => {
            m.fail_with("connection", &e);
            m.not_evaluated("cluster.identity", "no connection");
            m.not_evaluated("tools.version-match", "no connection");
            return;
        }
    };
    let verified = match &ctx.target.tls.verification {
        crate::connection::tls::Verification::Full(_) => {
            ", server certificate and host name verified"
        }
        crate::connection::tls::Verification::Chain(_) => {
            ", server certificate verified (not its host name)"
        }
        crate::connection::tls::Verification::None => "",
    };
    let transport = session.transport();
    // What the session did, not what the settings asked for: a prefer
    // that fell back to plain verified nothing.
    let verified = if transport.starts_with("TLS") {
        verified
    } else {
        ""
    };
    m.pass(
        "connection",
        format!(
            "connected to {} as {} on PostgreSQL {}, {transport} (sslmode={}{verified})",
            server.database,
            server.user,
            server.version,
            ctx.target.tls.mode.as_str()
        ),
    );
    match &ctx.target_pin() {
        Some(pin) if *pin == server.system_identifier => m.pass(
            "cluster.identity",
            format!("system identifier {} matches the pin", server.system_identifier),
        ),
        Some(pin) => m.fail(
            "cluster.identity",
            format!(
                "connected to cluster {} but connection.system-identifier pins {pin}",
                server.system_identifier
            ),
            "this is not the cluster the configuration is for: fix the connection, or the pin if the cluster was rebuilt on purpose",
        ),
        None => m.pass(
            "cluster.identity",
            format!(
                "system identifier {} (not pinned; set connection.system-identifier to pin it)",
                server.system_identifier
            ),
        ),
    }
    match &ctx.pg_dump {
        Some(v) => match crate::dump::require_can_dump(v, &server) {
            Ok(()) => m.pass(
                "tools.version-match",
                format!("pg_dump {} can dump server {}", v.major, server.major()),
            ),
            Err(e) => m.fail_with("tools.version-match", &e),
        },
        None => m.not_evaluated("tools.version-match", "pg_dump's version is unknown"),
    }
    ctx.session = Some(session);
    ctx.server = Some(server);
}

impl Context<'_> {
    fn target_pin(&self) -> Option<String> {
        self.config.connection.system_identifier.clone()
    }

    /// The key manifests must be signed by; a pin that cannot be loaded
    /// is the `signing` row's FAIL, and the catalog is not read at all.
    fn signature_pin(&self) -> Result<Option<std::sync::Arc<crate::signing::SignaturePin>>> {
        crate::signing::pin(&self.config.signing)
    }
}

fn scope(ctx: &mut Context, m: &mut Matrix) {
    let Some(session) = ctx.session.as_mut() else {
        m.not_evaluated("scope", "no connection");
        return;
    };
    let resolved = match session.resolve_scope(&ctx.config.scope) {
        Ok(resolved) => resolved,
        Err(e) => {
            m.fail_with("scope", &e);
            return;
        }
    };
    match session.tables_with_data(&resolved) {
        Ok(tables) => {
            let mut schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
            schemas.dedup();
            let what = if ctx.config.scope.is_whole_database() {
                "whole database"
            } else {
                "configured scope"
            };
            if tables.is_empty() {
                m.warn(
                    "scope",
                    format!("{what}: no tables with data"),
                    "check the scope: the backup would contain no table data",
                );
            } else {
                m.pass(
                    "scope",
                    format!(
                        "{what}: {} tables with data in {} schemas ({})",
                        tables.len(),
                        schemas.len(),
                        schemas.join(", ")
                    ),
                );
            }
            ctx.tables = Some(tables);
            match session.dependencies(&resolved) {
                Ok(needs) => {
                    dependency_rows(&ctx.config.scope, &needs, m);
                    if let Some(pg_dump) = &ctx.pg_dump
                        && let Err(e) =
                            crate::dump::require_can_include_extensions(pg_dump, &resolved, &needs)
                    {
                        m.fail_with("scope.extensions", &e);
                    }
                    ctx.dependencies = Some(needs);
                }
                Err(e) => m.fail_with("scope.dependencies", &e),
            }
            ctx.scope = Some(resolved);
        }
        Err(e) => m.fail_with("scope", &e),
    }
    ctx.database_size = session.database_size().ok();
}

/// What a narrowed scope needs from outside itself: the extensions and
/// schemas a backup brings along (PASS), and every other object, which no
/// restore of the backup alone can provide (FAIL, or WARN for a scope
/// meant for a prepared database).
fn dependency_rows(scope: &crate::scope::Scope, needs: &ScopeDependencies, m: &mut Matrix) {
    if !needs.extensions.is_empty() {
        let names: Vec<String> = needs
            .extensions
            .iter()
            .map(|e| {
                format!(
                    "{} {} (schema {}; needed by {})",
                    e.name, e.version, e.schema, e.needed_by
                )
            })
            .collect();
        m.pass(
            "scope.extensions",
            format!(
                "included in the backup (CREATE EXTENSION): {}",
                names.join(", ")
            ),
        );
    }
    if !needs.schemas.is_empty() {
        m.pass(
            "scope.schemas",
            format!(
                "the dump does not create schema {}, which the scope's objects live in: recorded, and created by every restore first",
                needs.schemas.join(", ")
            ),
        );
    }
    for object in &needs.outside {
        if scope.standalone {
            m.fail(
                "scope.outside",
                format!(
                    "{} is outside the scope: a backup of it would not restore on its own",
                    object.describe()
                ),
                object.remedy(scope),
            );
        } else {
            m.warn(
                "scope.outside",
                format!(
                    "{} is outside the scope, which is meant for a prepared database ([scope] standalone = false)",
                    object.describe()
                ),
                "a drill creates it in its scratch database, read from this source database (which must then be reachable); a restore needs it in the target (restore into the prepared database with stock tools)",
            );
        }
    }
}

fn privileges(ctx: &mut Context, m: &mut Matrix) {
    let Some(session) = ctx.session.as_mut() else {
        m.not_evaluated("privileges", "no connection");
        return;
    };
    let Some(scope) = &ctx.scope else {
        m.not_evaluated("privileges", "the scope did not resolve");
        return;
    };
    let report = match session.privileges(scope) {
        Ok(report) => report,
        Err(e) => {
            m.fail_with("privileges", &e);
            return;
        }
    };
    let role = &report.role;
    for gap in &report.gaps {
        let id = match gap.object {
            crate::catalog::privileges::Object::Schema { .. } => "privilege.schema-usage",
            crate::catalog::privileges::Object::Table { .. } => "privilege.table-select",
            crate::catalog::privileges::Object::Sequence { .. } => "privilege.sequence-select",
            crate::catalog::privileges::Object::LargeObject { .. } => {
                "privilege.large-object-select"
            }
        };
        m.fail(
            id,
            format!("role {role} has no {} on {}", gap.privilege, gap.object),
            "run `pgward grants` for the narrowest GRANT that closes this gap (and `pgward grants --revoke` for its rollback)",
        );
    }
    for block in &report.row_security {
        m.fail(
            "privilege.row-security",
            format!(
                "row-level security on table {} would stop pg_dump: role {role} is not its owner and has no BYPASSRLS{}",
                block.table,
                if block.forced { " (and the table forces RLS on its owner)" } else { "" }
            ),
            "no GRANT fixes this: give the backup role BYPASSRLS (ALTER ROLE ... BYPASSRLS, by a superuser) or exclude the table from the scope",
        );
    }
    if report.gaps.is_empty() && report.row_security.is_empty() {
        m.pass(
            "privileges",
            format!(
                "role {role} can read everything pg_dump touches: {} schemas, {} tables, {} sequences, {} large objects",
                report.schemas_checked, report.tables_checked, report.sequences_checked, report.large_objects_checked
            ),
        );
    }
    ctx.privileges = Some(report);
}

/// Constraints whose restore depends on the order pg_restore loads tables
/// in (see [`crate::catalog::restorability`]): a warning, because the
/// backup is still taken and restored (serially, in archive order).
fn restore_order(ctx: &mut Context, m: &mut Matrix) {
    let (Some(session), Some(scope), Some(server)) = (
        ctx.session.as_mut(),
        ctx.scope.as_ref(),
        ctx.server.as_ref(),
    ) else {
        m.not_evaluated("restore.order", "the scope did not resolve");
        return;
    };
    match session.restore_hazards(scope, server) {
        Ok(hazards) if hazards.is_empty() => m.pass(
            "restore.order",
            "no CHECK or domain constraint in scope calls a user function that is not immutable",
        ),
        Ok(hazards) => {
            for hazard in hazards {
                m.warn(
                    "restore.order-hazard",
                    hazard.describe(),
                    "pgward restores this backup serially in archive order, so drills give the same verdict every time; to remove the hazard, enforce the rule with a trigger (restored after the data) or a foreign key instead",
                );
            }
        }
        Err(e) => m.fail_with("restore.order", &e),
    }
}

fn expected_size(ctx: &Context) -> Option<u64> {
    let root = ctx.config.repository_path().ok()?;
    let database = ctx
        .server
        .as_ref()
        .map(|s| s.database.as_str())
        .unwrap_or(&ctx.target.dbname);
    let state = inspect(root, database, &ctx.config.scope, ctx.signature_pin());
    state
        .previous
        .map(|p| p.artifact.bytes)
        .or(ctx.database_size)
}

fn repository(ctx: &mut Context, m: &mut Matrix) {
    let Some(root) = ctx.config.repository.as_deref() else {
        m.fail(
            "repository",
            "no repository configured",
            "pass --repo DIR, set PGWARD_REPO or `repository` in the config file",
        );
        return;
    };
    let database = ctx
        .server
        .as_ref()
        .map(|s| s.database.clone())
        .unwrap_or(ctx.target.dbname.clone());
    if let Ok(crate::config::Location::S3(location)) = crate::config::Location::parse(root) {
        return bucket_repository(ctx, m, &location, &database);
    }
    let state: RepositoryState = inspect(root, &database, &ctx.config.scope, ctx.signature_pin());
    ctx.previous = state.previous.clone();
    match (&state.not_writable, state.exists) {
        (Some(why), _) => m.fail(
            "repository",
            format!("cannot write to {}: {why}", root.display()),
            "make the repository directory writable by the user running pgward, or choose another with --repo",
        ),
        (None, true) => m.pass("repository", format!("{} exists and is writable", root.display())),
        (None, false) => m.pass(
            "repository",
            format!("{} does not exist yet; the first backup will create it", root.display()),
        ),
    }
    if let Some((problem, hint)) = &state.unsafe_permissions {
        m.fail("repository.permissions", problem.clone(), hint.clone());
    }
    if let Some(error) = &state.catalog_error {
        m.fail(
            "repository.catalog",
            error.clone(),
            "inspect the damaged manifest; pgward will not guess",
        );
    }
    damaged_manifests(m, &state.damaged, &database);
    match &state.lock_holder {
        Some(pid) => m.fail(
            "repository.lock",
            format!("a backup of {database:?} is running now (pid {pid})"),
            "wait for it to finish",
        ),
        None => m.pass(
            "repository.lock",
            format!("no backup of {database:?} is running"),
        ),
    }
    let expected = state
        .previous
        .as_ref()
        .map(|p| (p.artifact.bytes, format!("previous backup {}", p.id)));
    let expected = expected.or(ctx
        .database_size
        .map(|size| (size, "database size".to_string())));
    match (state.free_bytes, expected) {
        (None, _) => m.fail(
            "repository.space",
            format!("cannot read free space for {}", root.display()),
            "check that the repository's filesystem is mounted",
        ),
        (Some(_), None) => m.not_evaluated(
            "repository.space",
            "the expected backup size is unknown (no connection)",
        ),
        (Some(free), Some((need, basis))) => {
            let evidence = format!(
                "{} free, next backup expected ~{} ({basis})",
                format_size(free),
                format_size(need)
            );
            if free < need {
                m.fail(
                    "repository.space",
                    evidence,
                    "free space on the repository's filesystem or move the repository",
                );
            } else if free < need.saturating_mul(3) {
                m.warn(
                    "repository.space",
                    evidence,
                    "less than three backups' worth of free space is left",
                );
            } else {
                m.pass("repository.space", evidence);
            }
        }
    }
}

/// A damaged manifest of this database breaks its continuity (the
/// shrink check and encryption continuity see only intact backups);
/// another database's is that database's problem, worth a warning.
fn damaged_manifests(m: &mut Matrix, damaged: &[crate::repository::DamagedFile], database: &str) {
    for damaged in damaged {
        let evidence = format!("{} is damaged: {}", damaged.file, damaged.cause);
        if damaged.is_of_database(database) {
            m.fail(
                "repository.catalog",
                evidence,
                "inspect or move the file away; until then backups of this database compare with the newest intact manifest, and `latest` skips it",
            );
        } else {
            m.warn(
                "repository.catalog",
                evidence,
                "it belongs to another database's backups; inspect or move it away",
            );
        }
    }
}

/// A repository in a bucket: the bucket probed, its catalog read (the
/// previous backup found, as on disk), its lock for this database and
/// the lease setting. Space is the service's to give.
fn bucket_repository(
    ctx: &mut Context,
    m: &mut Matrix,
    location: &crate::storage::s3::S3Location,
    database: &str,
) {
    m.pass(
        "repository",
        format!(
            "{} is object storage: backups stream into it",
            location.url()
        ),
    );
    if !bucket(ctx, m, "repository.bucket", location) {
        return;
    }
    let location = crate::config::Location::S3(location.clone());
    let opened = crate::Repository::open_at(&location, ctx.config)
        .and_then(|repo| Ok(repo.trusting(ctx.signature_pin()?)));
    match opened {
        Ok(repo) => {
            match repo.catalog() {
                Ok(catalog) => {
                    ctx.previous = catalog
                        .backups
                        .iter()
                        .find(|b| b.database == database && b.scope == ctx.config.scope)
                        .cloned();
                    damaged_manifests(m, &catalog.damaged, database);
                }
                Err(e) => m.fail(
                    "repository.catalog",
                    e.to_string(),
                    "inspect the damaged manifest; pgward will not guess",
                ),
            }
            match crate::repository::lease::holder(
                repo.storage().as_ref(),
                &format!("locks/{}.lock", crate::repository::database_key(database)),
            ) {
                Ok(Some(holder)) => m.fail(
                    "repository.lock",
                    format!("a backup of {database:?} holds the lock ({holder})"),
                    "wait for it to finish; a run that died frees the lock when its lease runs out",
                ),
                Ok(None) => m.pass(
                    "repository.lock",
                    format!("no backup of {database:?} is running"),
                ),
                Err(e) => m.fail(
                    "repository.lock",
                    format!("cannot read the lock: {e}"),
                    "check the bucket's permissions (pgward reads and writes locks/)",
                ),
            }
        }
        // No repository yet: the first backup creates it.
        Err(e) if e.kind() == crate::error::ErrorKind::NotFound => {}
        Err(e) => m.fail_with("repository.catalog", &e),
    }
    if let Err(e) = ctx.config.s3.lock_lease() {
        m.fail_with("repository.lock", &e);
    }
    m.not_evaluated(
        "repository.space",
        "object storage: the service's quota is not visible to pgward",
    );
}

/// Each `[[mirror]]`: a directory must be writable (or creatable); a
/// bucket is probed.
fn mirrors(ctx: &mut Context, m: &mut Matrix) {
    for mirror in ctx.config.mirrors.clone() {
        match crate::config::Location::parse(std::path::Path::new(&mirror.repository)) {
            Err(e) => m.fail_with("mirror", &e),
            Ok(crate::config::Location::S3(location)) => {
                bucket(ctx, m, "mirror", &location);
            }
            // As `run` opens it: an existing repository (a missing mount
            // must not pass), safe to trust, writable.
            Ok(location @ crate::config::Location::Local(_)) => {
                let crate::config::Location::Local(path) = &location else {
                    unreachable!()
                };
                let state = inspect(path, "", &ctx.config.scope, Ok(None));
                match (crate::Repository::open_at(&location, ctx.config), state.not_writable) {
                    (Err(e), _) => m.fail(
                        "mirror",
                        e.message().to_string(),
                        format!("create the mirror with `pgward copy latest --to {}` once it is mounted", path.display()),
                    ),
                    (Ok(_), Some(why)) => m.fail(
                        "mirror",
                        format!("cannot write to {}: {why}", path.display()),
                        "make the mirror directory writable by the user running pgward",
                    ),
                    (Ok(_), None) => m.pass("mirror", format!("{} is a repository and writable", path.display())),
                }
            }
        }
    }
}

/// A bucket's readiness: the credentials, the bucket, a probe object
/// written, read back and deleted (the one write `check` makes, and only
/// in object storage, where nothing else can prove access), and whether
/// the service refuses to replace an object.
fn bucket(
    ctx: &Context,
    m: &mut Matrix,
    id: &str,
    location: &crate::storage::s3::S3Location,
) -> bool {
    let storage = match crate::storage::s3::S3Storage::new(
        location,
        &ctx.config.s3,
        &crate::connection::process_env,
    ) {
        Ok(storage) => storage,
        Err(e) => {
            m.fail_with(id, &e);
            return false;
        }
    };
    match crate::storage::probe(&storage) {
        Err(why) => {
            m.fail(
                id,
                format!("{}: {why}", location.url()),
                "check [s3] endpoint, region, addressing and the credentials, and that the bucket exists",
            );
            false
        }
        Ok(probe) => {
            m.pass(
                id,
                format!(
                    "{}: a probe object was written, read back and deleted (credentials from {})",
                    location.url(),
                    storage.credential_source()
                ),
            );
            let conditional = format!("{id}.conditional-writes");
            // Backups and copies into a bucket hold a lock there, which is
            // renewed and released only at the version written.
            if probe.honours_if_match != Some(true) {
                m.fail(
                    &conditional,
                    "the service did not honour If-Match (a replacement at a stale version went through, or one at the current version was refused)",
                    "the lock of a backup or copy writing into a bucket needs If-Match on PUT and DELETE: use a service that honours it",
                );
            } else if probe.refuses_replace {
                m.pass(
                    &conditional,
                    "the service refuses to replace an object (If-None-Match: *) and replaces one only at its current version (If-Match)",
                );
            } else {
                m.warn(
                    &conditional,
                    "the service replaced an object despite If-None-Match: *",
                    "two hosts writing at once could replace each other's objects (and both take a database's lock); pgward still refuses to write over a manifest it can see and verifies every write, but write to this bucket from one host only",
                );
            }
            open_uploads(m, &format!("{id}.open-uploads"), &storage);
            true
        }
    }
}

/// Multipart uploads of backups that the service holds open. One whose
/// database's lock is held belongs to a run in progress; any other was
/// left by a run that was killed or cut off, and takes space (billed)
/// until the next run of its database aborts it.
fn open_uploads(m: &mut Matrix, id: &str, storage: &dyn crate::storage::Storage) {
    const LIFECYCLE: &str = "add the lifecycle rule AbortIncompleteMultipartUpload to the bucket (README: Backing up straight into a bucket), so that uploads of killed runs do not stay billed";
    let uploads = match storage.open_uploads("backups/") {
        Ok(uploads) => uploads,
        Err(e) => {
            m.warn(
                id,
                format!("cannot list open multipart uploads: {e}"),
                LIFECYCLE,
            );
            return;
        }
    };
    let mut in_progress = 0;
    let mut left = Vec::new();
    for upload in &uploads {
        // Deeper keys belong to another repository nested below this one.
        let Some(file) = upload
            .key
            .strip_prefix("backups/")
            .filter(|file| !file.contains('/'))
        else {
            continue;
        };
        let database = crate::repository::artifact_database_key(file);
        // A lock that cannot be read is taken as held: no alarm on doubt.
        let locked = database.is_some_and(|key| {
            !matches!(
                crate::repository::lease::holder(storage, &format!("locks/{key}.lock")),
                Ok(None)
            )
        });
        if locked {
            in_progress += 1;
        } else {
            left.push(file.to_string());
        }
    }
    if left.is_empty() {
        let running = match in_progress {
            0 => String::new(),
            n => format!(" but {n} of a run in progress"),
        };
        m.pass(id, format!("no multipart upload is left open{running}"));
    } else {
        m.warn(
            id,
            format!(
                "{} multipart upload(s) left open by runs that were killed or cut off: {}",
                left.len(),
                left.join(", ")
            ),
            "the next backup of each database aborts its own; or add the lifecycle rule AbortIncompleteMultipartUpload",
        );
    }
}

/// A recipient that expires within this many days is a warning: the
/// nightly backup will fail closed when it does.
const EXPIRY_WARNING_DAYS: i64 = 30;

fn encryption(ctx: &mut Context, m: &mut Matrix) {
    use crate::encryption::{self, certificate::Certificate, short};
    let config = &ctx.config.encryption;
    let now = crate::clock::now();
    if config.recipients.is_empty() {
        if let Err(e) = encryption::require_continuity(config, None, ctx.previous.as_ref()) {
            m.fail_with("encryption", &e);
        } else if config.required == Some(false) {
            m.pass(
                "encryption",
                "encryption.required = false: backups are written unencrypted, as configured",
            );
        } else if encryption::required(config) {
            m.fail(
                "encryption",
                "encryption required but no recipient certificate configured",
                "add an [[encryption.recipient]] with certificate and fingerprint (see `pgward key generate`)",
            );
        } else {
            m.warn(
                "encryption",
                "no recipient configured: backups are written unencrypted",
                "add an [[encryption.recipient]] (see `pgward key generate`); backups usually leave this host",
            );
        }
    }
    let mut seen = Vec::new();
    for (n, configured) in config.recipients.iter().enumerate() {
        let id = format!("encryption.recipient.{}", n + 1);
        let checked = configured
            .pin()
            .and_then(|pin| Certificate::load(&configured.certificate)?.as_recipient(&pin, now));
        let recipient = match checked {
            Ok(r) => r,
            Err(e) => {
                m.fail_with(&id, &e);
                continue;
            }
        };
        if seen.contains(&recipient.fingerprint) {
            m.fail(
                &id,
                format!(
                    "recipient {} is configured twice",
                    short(&recipient.fingerprint)
                ),
                "remove the duplicate [[encryption.recipient]]",
            );
            continue;
        }
        seen.push(recipient.fingerprint.clone());
        let algorithm = recipient
            .certificate
            .subkey(&recipient.encryption_key)
            .map(|s| certificate::algorithm_name(pgp::types::KeyDetails::public_params(&s.key)))
            .unwrap_or_default();
        let evidence = format!(
            "{} {} matches its pin; encrypts to subkey {} ({algorithm}); expires {}",
            configured.certificate.display(),
            short(&recipient.fingerprint),
            short(&recipient.encryption_key),
            recipient
                .expires
                .map(crate::clock::rfc3339)
                .unwrap_or_else(|| "never".to_string())
        );
        let soon = now
            .checked_add(jiff::SignedDuration::from_hours(24 * EXPIRY_WARNING_DAYS))
            .unwrap_or(jiff::Timestamp::MAX);
        match recipient.expires {
            Some(at) if at <= soon => m.warn(
                &id,
                format!("{evidence} (within {EXPIRY_WARNING_DAYS} days)"),
                "extend the key's expiry (gpg --quick-set-expire FPR 1y '*') and export the certificate again, or rotate to a new key",
            ),
            _ => m.pass(&id, evidence),
        }
    }
    // Episode 2: only the public key lives on the backup host.
    if let Some(secret) = &ctx.config.decryption.secret_key
        && secret.exists()
    {
        m.warn(
            "encryption.secret-key",
            format!(
                "a secret key is configured on this host (decryption.secret-key {}): whoever reads this host's backups can also decrypt them",
                secret.display()
            ),
            "keep the secret key in the operator's vault and verify elsewhere, or decrypt through gpg with a smartcard (decryption.command)",
        );
    }
    match encryption::round_trip() {
        Ok(bytes) => m.pass(
            "encryption.round-trip",
            format!(
                "{} encrypted and decrypted in memory with a throwaway key ({}): identical",
                format_size(bytes as u64),
                encryption::SCHEME
            ),
        ),
        Err(e) => m.fail(
            "encryption.round-trip",
            format!("in-memory encrypt/decrypt failed: {e}"),
            "this is a defect in pgward: report it with `pgward --version`",
        ),
    }
}

/// The retention policy and drill interval, as `run` and `prune` will
/// apply them.
fn policy(ctx: &mut Context, m: &mut Matrix) {
    let config = &ctx.config.policy;
    match crate::retention::RetentionPolicy::from_config(config) {
        Err(e) => m.fail_with("policy.retention", &e),
        Ok(None) => m.warn(
            "policy.retention",
            "no retention policy: `prune` refuses and `run` skips pruning, so the repository only grows",
            "set keep-last, keep-daily, keep-weekly, keep-monthly or keep-within in [policy]",
        ),
        Ok(Some(p)) => {
            let mut rules = Vec::new();
            for (name, n) in [
                ("keep-last", p.keep_last),
                ("keep-hourly", p.keep_hourly),
                ("keep-daily", p.keep_daily),
                ("keep-weekly", p.keep_weekly),
                ("keep-monthly", p.keep_monthly),
                ("keep-yearly", p.keep_yearly),
            ] {
                if let Some(n) = n {
                    rules.push(format!("{name} {n}"));
                }
            }
            if let Some(within) = &config.keep_within {
                rules.push(format!("keep-within {within}"));
            }
            let bound = [p.keep_last, p.keep_hourly, p.keep_daily, p.keep_weekly, p.keep_monthly, p.keep_yearly]
                .iter()
                .flatten()
                .map(|n| *n as u64)
                .sum::<u64>();
            let space = match (expected_size(ctx), p.keep_within) {
                (Some(size), None) if bound > 0 => format!(
                    "; at most {} backups of this scope kept, ~{} at the current size",
                    bound + 2,
                    format_size(size.saturating_mul(bound + 2))
                ),
                _ => String::new(),
            };
            m.pass(
                "policy.retention",
                format!(
                    "{} in {} (plus the newest and the newest drilled backup){space}",
                    rules.join(", "),
                    p.time_zone.iana_name().unwrap_or("the system time zone")
                ),
            );
        }
    }
    match &config.drill_every {
        None => m.warn(
            "policy.drill",
            "policy.drill-every is not set: `run` never drills, so nothing proves the backups restore",
            "set drill-every = \"7d\" (or \"always\") in [policy], and a restore server with [restore-connection]",
        ),
        Some(every) => m.pass("policy.drill", format!("`run` drills when the newest passed drill is older than {every}")),
    }
}

/// Each `[[notify]]` target: its URL readable, its host answering (its
/// push URL is never called: that could count as a heartbeat).
fn notify(ctx: &mut Context, m: &mut Matrix) {
    for (n, target) in ctx.config.notify.iter().enumerate() {
        let id = format!("notify.{}", n + 1);
        match crate::notify::probe(target, &crate::connection::process_env) {
            Ok(evidence) => m.pass(&id, evidence),
            Err(why) => m.fail(
                &id,
                why,
                "check the URL (url, url-file or url-env) and that this host can reach the service",
            ),
        }
    }
}

/// Whether backups will be able to sign their manifests, and readers to
/// accept them: the key, its passphrase, its pin, a round trip.
fn signing(ctx: &mut Context, m: &mut Matrix) {
    use crate::encryption::short;
    let config = &ctx.config.signing;
    if config.fingerprint.is_none() && config == &Default::default() {
        m.pass(
            "signing",
            "off: manifests carry a digest that shows edits, not a signature that shows who wrote them",
        );
        return;
    }
    let checked = crate::signing::signer(config).and_then(|signer| {
        let pin = crate::signing::pin(config)?.expect("a signer implies a pin");
        let signer = signer.expect("signing is configured");
        crate::signing::round_trip(&signer, &pin)?;
        Ok(pin)
    });
    match checked {
        Ok(pin) => m.pass(
            "signing",
            format!(
                "manifests are signed by {} and only manifests signed by it are read; a test signature verified",
                short(pin.fingerprint())
            ),
        ),
        Err(e) => m.fail_with("signing", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_is_the_worst_item_and_empty_fails_closed() {
        let mut m = Matrix::default();
        assert_eq!(m.verdict(), Status::Fail, "an empty matrix proves nothing");
        m.pass("a", "ok");
        m.warn("b", "meh", "look");
        assert_eq!(m.verdict(), Status::Warn);
        m.fail("c", "broken", "fix");
        assert_eq!(m.verdict(), Status::Fail);
        assert_eq!(m.failures(), 1);
    }
}
