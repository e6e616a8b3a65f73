//! `pgward grants`: the narrowest SQL that closes the backup role's
//! privilege gaps, the exact rollback, and (on request) running it.
//!
//! Plan, then act: the plan is computed from the privileges as they are now
//! (through the backup role's own read-only session), printed, saved in the
//! repository with its rollback and the baseline ACLs, and only executed
//! with `--execute`, through a separate privileged connection, in one
//! transaction, followed by a re-check from the backup role's side.
//!
//! Narrowest means: USAGE on the schemas and SELECT on the exact tables,
//! sequences and large objects that are missing; never CREATE, never
//! ownership, never a role attribute. The rollback revokes exactly what the
//! plan grants: since the role had none of those privileges before (that is
//! what made them gaps), revoking them returns each object's effective ACL
//! to the baseline recorded in the plan. Row-level security is not closable
//! by a GRANT; the plan says so instead of improvising.

use crate::catalog::privileges::{Gap, Object, PrivilegeReport};
use crate::catalog::{CatalogSession, query_error};
use crate::clock;
use crate::config::Config;
use crate::connection::{ConnectionTarget, Env};
use crate::error::{Error, ErrorKind, Result};
use crate::repository::Repository;
use crate::scope::quote_ident;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;

pub const PLAN_FORMAT: &str = "pgward-grant-plan";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GrantPlan {
    pub format: String,
    pub format_version: u32,
    pub id: String,
    pub created_at: String,
    pub database: String,
    pub system_identifier: String,
    pub role: String,
    /// The statements that close the gaps, in order.
    pub grants: Vec<String>,
    /// The statements that undo `grants`, in order.
    pub revokes: Vec<String>,
    /// Optional statements that keep future tables readable; not part of the plan.
    pub optional_default_privileges: Vec<String>,
    /// Their undo, for whoever applied them.
    pub optional_default_privileges_revokes: Vec<String>,
    /// Gaps no GRANT closes (row-level security), with what would.
    pub not_closable: Vec<String>,
    /// Each affected object's effective ACL before the plan.
    pub baseline: Vec<AclBaseline>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AclBaseline {
    pub object: String,
    pub acl: Vec<String>,
}

impl GrantPlan {
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    fn header(&self, what: &str) -> String {
        format!(
            "-- pgward {what} for role {} on database {} (system identifier {})\n\
             -- plan {} computed {}\n",
            self.role, self.database, self.system_identifier, self.id, self.created_at
        )
    }

    /// The plan as a script to run as the objects' owner or a superuser.
    pub fn grant_sql(&self) -> String {
        let mut sql = self.header("grants");
        if self.grants.is_empty() {
            sql.push_str("-- nothing to grant: the role can read everything pg_dump touches\n");
        } else {
            sql.push_str("-- run as the owner of these objects or a superuser\n");
            sql.push_str(&transaction(&self.grants));
        }
        if !self.optional_default_privileges.is_empty() {
            sql.push_str(
                "\n-- OPTIONAL, not part of the plan: keep tables and sequences created later in these\n\
                 -- schemas readable by the backup role. Uncomment to apply (and see the rollback script).\n",
            );
            for statement in &self.optional_default_privileges {
                sql.push_str(&format!("-- {statement}\n"));
            }
        }
        for note in &self.not_closable {
            sql.push_str(&format!("\n-- NOT CLOSABLE BY A GRANT: {note}\n"));
        }
        sql
    }

    /// The exact rollback: returns the affected objects to the baseline.
    pub fn revoke_sql(&self) -> String {
        let mut sql = self.header("rollback of the grants");
        if self.revokes.is_empty() {
            sql.push_str("-- nothing to revoke: the plan grants nothing\n");
        } else {
            sql.push_str(&transaction(&self.revokes));
        }
        if !self.optional_default_privileges_revokes.is_empty() {
            sql.push_str("\n-- only if the optional default privileges were applied:\n");
            for statement in &self.optional_default_privileges_revokes {
                sql.push_str(&format!("-- {statement}\n"));
            }
        }
        sql
    }
}

/// Statements wrapped in one transaction: all of them apply, or none.
fn transaction(statements: &[String]) -> String {
    format!("BEGIN;\n{}\nCOMMIT;\n", statements.join("\n"))
}

fn list(objects: &[&Gap], kind: &str) -> Option<String> {
    let names: Vec<String> = objects
        .iter()
        .map(|g| g.object.sql())
        .filter_map(|sql| sql.strip_prefix(&format!("{kind} ")).map(String::from))
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// Builds the plan from a privilege report.
pub fn build_plan(
    report: &PrivilegeReport,
    database: &str,
    system_identifier: &str,
    now: jiff::Timestamp,
) -> GrantPlan {
    let role = quote_ident(&report.role);
    let gaps: Vec<&Gap> = report.gaps.iter().collect();
    let mut grants = Vec::new();
    let mut revokes = Vec::new();
    // Schemas first: without USAGE nothing inside is reachable. Revoke in
    // the reverse order.
    for (kind, privilege) in [
        ("SCHEMA", "USAGE"),
        ("TABLE", "SELECT"),
        ("SEQUENCE", "SELECT"),
    ] {
        if let Some(names) = list(&gaps, kind) {
            grants.push(format!("GRANT {privilege} ON {kind} {names} TO {role};"));
            revokes.insert(
                0,
                format!("REVOKE {privilege} ON {kind} {names} FROM {role};"),
            );
        }
    }
    let large_objects: Vec<String> = gaps
        .iter()
        .filter_map(|g| match g.object {
            Object::LargeObject { oid } => Some(oid.to_string()),
            _ => None,
        })
        .collect();
    if !large_objects.is_empty() {
        let oids = large_objects.join(", ");
        grants.push(format!("GRANT SELECT ON LARGE OBJECT {oids} TO {role};"));
        revokes.insert(
            0,
            format!("REVOKE SELECT ON LARGE OBJECT {oids} FROM {role};"),
        );
    }

    // Default privileges cover the tables a role creates later, so they
    // are suggested for the roles that own the tables and sequences in the
    // schemas with gaps: those are the roles that create tables there.
    // Never for pg_database_owner, as whom no session creates anything
    // (the report names the database's owner instead).
    let gap_schemas: BTreeSet<&str> = gaps
        .iter()
        .filter_map(|g| match &g.object {
            Object::Schema { name } => Some(name.as_str()),
            Object::Table { name } | Object::Sequence { name } => Some(name.schema.as_str()),
            Object::LargeObject { .. } => None,
        })
        .collect();
    let defaults: BTreeSet<(String, String)> = report
        .relation_owners
        .iter()
        .filter(|(schema, owner)| {
            gap_schemas.contains(schema.as_str()) && owner != "pg_database_owner"
        })
        .map(|(schema, owner)| (owner.clone(), schema.clone()))
        .collect();
    let mut optional = Vec::new();
    let mut optional_revokes = Vec::new();
    for (owner, schema) in defaults {
        for what in ["TABLES", "SEQUENCES"] {
            let target = format!(
                "FOR ROLE {} IN SCHEMA {}",
                quote_ident(&owner),
                quote_ident(&schema)
            );
            optional.push(format!(
                "ALTER DEFAULT PRIVILEGES {target} GRANT SELECT ON {what} TO {role};"
            ));
            optional_revokes.push(format!(
                "ALTER DEFAULT PRIVILEGES {target} REVOKE SELECT ON {what} FROM {role};"
            ));
        }
    }

    let not_closable = report
        .row_security
        .iter()
        .map(|b| {
            format!(
                "row-level security on table {} stops pg_dump for role {}; give the role BYPASSRLS (ALTER ROLE {role} BYPASSRLS, by a superuser) or exclude the table",
                b.table, report.role
            )
        })
        .collect();

    let mut id_hasher = crate::pipeline::hash::StreamHasher::default();
    crate::pipeline::Observer::observe(&mut id_hasher, grants.join("\n").as_bytes());
    GrantPlan {
        format: PLAN_FORMAT.to_string(),
        format_version: 1,
        id: format!(
            "{}-{}-{}",
            now.strftime("%Y%m%dT%H%M%SZ"),
            crate::repository::database_key(database),
            &id_hasher.finish().sha256[..8]
        ),
        created_at: clock::rfc3339(now),
        database: database.to_string(),
        system_identifier: system_identifier.to_string(),
        role: report.role.clone(),
        grants,
        revokes,
        optional_default_privileges: optional,
        optional_default_privileges_revokes: optional_revokes,
        not_closable,
        baseline: report
            .gaps
            .iter()
            .map(|g| AclBaseline {
                object: g.object.sql(),
                acl: g.acl.clone(),
            })
            .collect(),
    }
}

/// The plan for the configured backup role and scope, as things are now.
pub fn plan(config: &Config, env: Env) -> Result<(GrantPlan, PrivilegeReport)> {
    let target = ConnectionTarget::resolve(&config.connection, env)?;
    let mut session = CatalogSession::open(&target)?;
    let server = session.server_info()?;
    let scope = session.resolve_scope(&config.scope)?;
    session.tables_with_data(&scope)?;
    let report = session.privileges(&scope)?;
    Ok((
        build_plan(
            &report,
            &server.database,
            &server.system_identifier,
            clock::now(),
        ),
        report,
    ))
}

/// Saves a non-empty plan in `REPO/grants/` (JSON plus the two SQL scripts),
/// unless the newest saved plan for this database and role is the same.
/// Returns the JSON file's path.
pub fn save(repo: &Repository, plan: &GrantPlan) -> Result<Option<PathBuf>> {
    if plan.is_empty() {
        return Ok(None);
    }
    if let Some(previous) = repo
        .grant_plans()?
        .plans
        .into_iter()
        .find(|p| p.database == plan.database && p.role == plan.role)
        && previous.grants == plan.grants
        && previous.baseline == plan.baseline
    {
        return Ok(Some(repo.grant_plan_path(&previous.id)));
    }
    repo.save_grant_plan(plan, &plan.grant_sql(), &plan.revoke_sql())
        .map(Some)
}

/// A saved plan: `latest` (for this database, when given) or an id.
pub fn load(repo: &Repository, selector: &str, database: Option<&str>) -> Result<GrantPlan> {
    let saved = repo.grant_plans()?;
    if let Some(damaged) = saved
        .damaged
        .iter()
        .find(|d| d.id.as_deref() == Some(selector))
    {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "grant plan {selector} is damaged: {} is {}",
                damaged.file, damaged.cause
            ),
        )
        .with_hint("do not run it; make a new plan with `pgward grants` and inspect the file"));
    }
    let plans = saved.plans;
    let found = if selector == "latest" {
        plans
            .into_iter()
            .find(|p| database.is_none_or(|d| p.database == d))
    } else {
        plans.into_iter().find(|p| p.id == selector)
    };
    found.ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "no saved grant plan {selector:?} in {}",
                repo.root().display()
            ),
        )
        .with_hint("plans are saved by `pgward grants` when a repository is configured")
    })
}

/// What `--execute` did, with evidence from both sides.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Execution {
    pub executed_as: String,
    pub statements: Vec<String>,
    pub gaps_before: Vec<Gap>,
    pub gaps_after: Vec<Gap>,
    pub acl_after: Vec<AclBaseline>,
}

/// Runs `plan` in one transaction through the admin connection, then
/// re-checks through the backup role's own session.
pub fn execute(
    config: &Config,
    env: Env,
    plan: &GrantPlan,
    before: &PrivilegeReport,
) -> Result<Execution> {
    let admin_config = config.admin_connection.as_ref().ok_or_else(|| {
        Error::config("--execute needs a privileged connection")
            .with_hint("set [admin-connection] in the config or pass --admin-dbname; it must not be the backup role")
    })?;
    // The admin connection reaches the same server and database unless it
    // says otherwise.
    let backup_target = ConnectionTarget::resolve(&config.connection, env)?;
    let mut admin_config = admin_config.clone();
    let names_database = admin_config
        .dbname
        .as_deref()
        .is_some_and(|d| d.contains('=') || d.contains("://"));
    if !names_database {
        admin_config.host = admin_config.host.or(Some(backup_target.host.clone()));
        admin_config.port = admin_config.port.or(Some(backup_target.port));
        admin_config.dbname = admin_config.dbname.or(Some(backup_target.dbname.clone()));
    }
    let admin = ConnectionTarget::resolve_inheriting(&admin_config, Some(&backup_target), env)?;
    if admin.user == plan.role {
        return Err(Error::config(format!(
            "the admin connection uses the backup role {:?}",
            plan.role
        ))
        .with_hint("connect [admin-connection] as the objects' owner or a superuser, never as the backup role"));
    }
    let mut client = admin.connect()?;
    let check_target: String = client
        .query_one(
            "SELECT s.system_identifier::text FROM pg_catalog.pg_control_system() s",
            &[],
        )
        .map_err(|e| query_error("cannot read the admin connection's cluster", e))?
        .get(0);
    let database: String = client
        .query_one("SELECT pg_catalog.current_database()::text", &[])
        .map_err(|e| query_error("cannot read the admin connection's database", e))?
        .get(0);
    if check_target != plan.system_identifier || database != plan.database {
        return Err(Error::config(format!(
            "the admin connection reaches database {database} on cluster {check_target}, but the plan is for {} on {}",
            plan.database, plan.system_identifier
        ))
        .with_hint("point [admin-connection] at the same cluster and database as the backup connection"));
    }
    let mut transaction = client
        .transaction()
        .map_err(|e| query_error("cannot start the grant transaction", e))?;
    for statement in &plan.grants {
        transaction.batch_execute(statement).map_err(|e| {
            query_error(
                &format!("grant failed, nothing was changed ({statement})"),
                e,
            )
        })?;
    }
    transaction
        .commit()
        .map_err(|e| query_error("grant transaction failed to commit, nothing was changed", e))?;

    let mut session = CatalogSession::open(&backup_target)?;
    let scope = session.resolve_scope(&config.scope)?;
    let after = session.privileges(&scope)?;
    let mut acl_after = Vec::new();
    for gap in &before.gaps {
        acl_after.push(AclBaseline {
            object: gap.object.sql(),
            acl: session.acl_of(&gap.object)?,
        });
    }
    Ok(Execution {
        executed_as: admin.describe(),
        statements: plan.grants.clone(),
        gaps_before: before.gaps.clone(),
        gaps_after: after.gaps,
        acl_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::TableName;

    fn report(gaps: Vec<Gap>, owners: &[(&str, &str)]) -> PrivilegeReport {
        PrivilegeReport {
            role: "backup".into(),
            schemas_checked: 1,
            tables_checked: owners.len(),
            sequences_checked: 0,
            large_objects_checked: 0,
            gaps,
            relation_owners: owners
                .iter()
                .map(|(s, o)| (s.to_string(), o.to_string()))
                .collect(),
            row_security: Vec::new(),
        }
    }

    #[test]
    fn default_privileges_name_the_roles_that_own_the_tables() {
        // public belongs to pg_database_owner; its tables to app and etl.
        let usage = Gap {
            object: Object::Schema {
                name: "public".into(),
            },
            privilege: "USAGE".into(),
            owner: "pg_database_owner".into(),
            acl: Vec::new(),
        };
        let select = Gap {
            object: Object::Table {
                name: TableName {
                    schema: "public".into(),
                    table: "t".into(),
                },
            },
            privilege: "SELECT".into(),
            owner: "app".into(),
            acl: Vec::new(),
        };
        let plan = build_plan(
            &report(
                vec![usage, select],
                &[("public", "app"), ("public", "etl"), ("other", "zed")],
            ),
            "db",
            "1",
            jiff::Timestamp::UNIX_EPOCH,
        );
        let defaults = plan.optional_default_privileges.join("\n");
        assert!(
            defaults.contains("FOR ROLE \"app\" IN SCHEMA \"public\""),
            "{defaults}"
        );
        assert!(
            defaults.contains("FOR ROLE \"etl\" IN SCHEMA \"public\""),
            "{defaults}"
        );
        assert!(!defaults.contains("pg_database_owner"), "{defaults}");
        assert!(!defaults.contains("zed"), "{defaults}");
        assert_eq!(
            plan.optional_default_privileges.len(),
            plan.optional_default_privileges_revokes.len()
        );
    }
}
