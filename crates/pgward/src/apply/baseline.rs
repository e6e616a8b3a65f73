//! The catalog baseline: every user object of the database (outside the
//! system schemas, extension members excepted) with a digest of its
//! definition, and the delta between two baselines. The delta is what a
//! change did, object by object; the counts a package declares are
//! derived from it, so that an extra object can be named, not only
//! counted, and "nothing else changed" is a comparison, not a belief.

use crate::error::{Error, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// The kinds of objects a baseline holds, by their names in packages and
/// reports (singular for one object, plural for counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Schema,
    Table,
    PartitionedTable,
    View,
    MaterializedView,
    Sequence,
    ForeignTable,
    CompositeType,
    Index,
    PrimaryKey,
    ForeignKey,
    UniqueConstraint,
    CheckConstraint,
    ExclusionConstraint,
    ConstraintTrigger,
    OtherConstraint,
    Function,
    Procedure,
    Aggregate,
    Trigger,
    Domain,
    Enum,
    Range,
    Extension,
    Policy,
    Rule,
    Publication,
    EventTrigger,
    DefaultPrivileges,
    Database,
    Role,
}

const KINDS: &[(Kind, &str, &str)] = &[
    (Kind::Schema, "schema", "schemas"),
    (Kind::Table, "table", "tables"),
    (
        Kind::PartitionedTable,
        "partitioned-table",
        "partitioned-tables",
    ),
    (Kind::View, "view", "views"),
    (
        Kind::MaterializedView,
        "materialized-view",
        "materialized-views",
    ),
    (Kind::Sequence, "sequence", "sequences"),
    (Kind::ForeignTable, "foreign-table", "foreign-tables"),
    (Kind::CompositeType, "composite-type", "composite-types"),
    (Kind::Index, "index", "indexes"),
    (Kind::PrimaryKey, "primary-key", "primary-keys"),
    (Kind::ForeignKey, "foreign-key", "foreign-keys"),
    (
        Kind::UniqueConstraint,
        "unique-constraint",
        "unique-constraints",
    ),
    (
        Kind::CheckConstraint,
        "check-constraint",
        "check-constraints",
    ),
    (
        Kind::ExclusionConstraint,
        "exclusion-constraint",
        "exclusion-constraints",
    ),
    (
        Kind::ConstraintTrigger,
        "constraint-trigger",
        "constraint-triggers",
    ),
    (
        Kind::OtherConstraint,
        "other-constraint",
        "other-constraints",
    ),
    (Kind::Function, "function", "functions"),
    (Kind::Procedure, "procedure", "procedures"),
    (Kind::Aggregate, "aggregate", "aggregates"),
    (Kind::Trigger, "trigger", "triggers"),
    (Kind::Domain, "domain", "domains"),
    (Kind::Enum, "enum", "enums"),
    (Kind::Range, "range", "ranges"),
    (Kind::Extension, "extension", "extensions"),
    (Kind::Policy, "policy", "policies"),
    (Kind::Rule, "rule", "rules"),
    (Kind::Publication, "publication", "publications"),
    (Kind::EventTrigger, "event-trigger", "event-triggers"),
    (
        Kind::DefaultPrivileges,
        "default-privileges",
        "default-privileges",
    ),
    (Kind::Database, "database", "databases"),
    (Kind::Role, "role", "roles"),
];

/// Where objects that belong to no schema are counted: the database's own
/// settings, publications, event triggers, default privileges without a
/// schema (`(database)`), and roles (`(cluster)`).
pub const DATABASE_LEVEL: &str = "(database)";
pub const CLUSTER_LEVEL: &str = "(cluster)";

impl Kind {
    pub fn name(self) -> &'static str {
        KINDS.iter().find(|(k, ..)| *k == self).expect("listed").1
    }
    pub fn plural(self) -> &'static str {
        KINDS.iter().find(|(k, ..)| *k == self).expect("listed").2
    }
    pub fn from_name(name: &str) -> Option<Kind> {
        KINDS.iter().find(|(_, n, _)| *n == name).map(|(k, ..)| *k)
    }
    pub fn from_plural(name: &str) -> Option<Kind> {
        KINDS.iter().find(|(.., p)| *p == name).map(|(k, ..)| *k)
    }
    pub fn plurals() -> Vec<&'static str> {
        KINDS.iter().map(|(.., p)| *p).collect()
    }
}

/// An object as packages and reports name it: `table cutter_governance.a`,
/// `foreign-key a_b_fkey on cutter_governance.a`, `function public.f(integer)`.
/// Names are as PostgreSQL's `format('%I')` writes them (quoted only when
/// they need it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName {
    pub kind: Kind,
    pub name: String,
}

impl ObjectName {
    pub fn parse(text: &str) -> Result<ObjectName> {
        let (kind, name) = text.trim().split_once(' ').unwrap_or((text, ""));
        let kind = Kind::from_name(kind).ok_or_else(|| {
            Error::config(format!("{text:?} does not start with an object kind")).with_hint(
                format!(
                    "write KIND NAME, e.g. \"table app.orders\"; kinds: {}",
                    KINDS
                        .iter()
                        .map(|(_, n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let name = name.trim();
        if name.is_empty() {
            return Err(Error::config(format!("{text:?} names no object")));
        }
        Ok(ObjectName {
            kind,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.name)
    }
}

impl Serialize for ObjectName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Every user object with the schema it lives in and a digest of its
/// definition (owner, privileges and shape).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Baseline {
    objects: BTreeMap<ObjectName, (String, String)>,
    /// The relation an index, constraint, trigger, policy, rule or owned
    /// sequence belongs to (`schema.table`): dropped with it.
    parents: BTreeMap<ObjectName, String>,
}

/// What a baseline says in a report: counts per schema and kind, and one
/// digest over every object's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaselineSummary {
    pub objects: usize,
    pub digest: String,
    pub counts: BTreeMap<String, BTreeMap<String, i64>>,
}

/// What changed between two baselines.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Delta {
    pub created: Vec<ObjectName>,
    pub dropped: Vec<ObjectName>,
    pub altered: Vec<ObjectName>,
    /// schema → kind (plural) → net change in count; zeros left out.
    pub counts: BTreeMap<String, BTreeMap<String, i64>>,
}

/// One query for the whole catalog. Run with `search_path = pg_catalog`
/// so that type and relation names in definitions are always
/// schema-qualified the same way, whatever the session's search_path.
const OBJECTS: &str = r#"
WITH ns AS (
  SELECT oid, nspname, nspowner, nspacl FROM pg_catalog.pg_namespace
  WHERE nspname <> 'information_schema' AND nspname !~ '^pg_'
), member AS (
  SELECT classid, objid FROM pg_catalog.pg_depend WHERE deptype = 'e'
), rel AS (
  SELECT c.*, ns.nspname FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
  WHERE c.relpersistence <> 't'
    AND NOT EXISTS (SELECT 1 FROM member m
                    WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND m.objid = c.oid)
)
SELECT nspname, 'schema', format('%I', nspname),
       concat_ws('|', pg_catalog.pg_get_userbyid(nspowner), nspacl::text)
       , NULL::text
  FROM ns
UNION ALL
SELECT nspname,
       CASE relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned-table' WHEN 'v' THEN 'view'
                    WHEN 'm' THEN 'materialized-view' WHEN 'S' THEN 'sequence'
                    WHEN 'f' THEN 'foreign-table' WHEN 'c' THEN 'composite-type' ELSE 'index' END,
       format('%I.%I', nspname, relname),
       concat_ws('|', pg_catalog.pg_get_userbyid(relowner), relacl::text, relpersistence,
                 relrowsecurity, relforcerowsecurity, reloptions::text, relreplident,
                 (SELECT string_agg(format('%I.%I', pn.nspname, p.relname), ',' ORDER BY i.inhseqno)
                    FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
                    JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
                   WHERE i.inhrelid = rel.oid),
                 (SELECT concat_ws(',', s.seqtypid, s.seqstart, s.seqincrement, s.seqmax, s.seqmin,
                                   s.seqcache, s.seqcycle)
                    FROM pg_catalog.pg_sequence s WHERE s.seqrelid = rel.oid),
                 CASE WHEN relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(oid) END,
                 CASE WHEN relkind IN ('i', 'I') THEN pg_catalog.pg_get_indexdef(oid) END,
                 pg_catalog.pg_get_partkeydef(oid), pg_catalog.pg_get_expr(relpartbound, oid),
                 (SELECT string_agg(concat_ws(':', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
                                              a.attnotnull, a.attidentity, a.attgenerated, a.attcollation,
                                              a.attacl::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid)),
                                    ',' ORDER BY a.attnum)
                    FROM pg_catalog.pg_attribute a
                    LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                   WHERE a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped))
       , CASE WHEN rel.relkind IN ('i', 'I') THEN (SELECT format('%I.%I', tn.nspname, t.relname) FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class t ON t.oid = x.indrelid JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace WHERE x.indexrelid = rel.oid)
              WHEN rel.relkind = 'S' THEN (SELECT format('%I.%I', tn.nspname, t.relname) FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class t ON t.oid = d.refobjid JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = rel.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i') LIMIT 1) END
  FROM rel WHERE relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c', 'i', 'I')
UNION ALL
SELECT ns.nspname,
       CASE con.contype WHEN 'p' THEN 'primary-key' WHEN 'f' THEN 'foreign-key' WHEN 'u' THEN 'unique-constraint'
                        WHEN 'c' THEN 'check-constraint' WHEN 'x' THEN 'exclusion-constraint'
                        WHEN 't' THEN 'constraint-trigger' ELSE 'other-constraint' END,
       CASE WHEN con.conrelid <> 0 THEN format('%I on %I.%I', con.conname, rel.nspname, rel.relname)
            ELSE format('%I on domain %I.%I', con.conname, tns.nspname, t.typname) END,
       concat_ws('|', pg_catalog.pg_get_constraintdef(con.oid), con.convalidated)
       , CASE WHEN con.conrelid <> 0 THEN format('%I.%I', rel.nspname, rel.relname) END
  FROM pg_catalog.pg_constraint con
  JOIN ns ON ns.oid = con.connamespace
  LEFT JOIN rel ON rel.oid = con.conrelid
  LEFT JOIN pg_catalog.pg_type t ON t.oid = con.contypid
  LEFT JOIN pg_catalog.pg_namespace tns ON tns.oid = t.typnamespace
 WHERE (con.conrelid <> 0 AND rel.oid IS NOT NULL)
    OR (con.contypid <> 0 AND NOT EXISTS (SELECT 1 FROM member m
         WHERE m.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND m.objid = con.contypid))
UNION ALL
SELECT ns.nspname,
       CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END,
       format('%I.%I(%s)', ns.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)),
       concat_ws('|', pg_catalog.pg_get_userbyid(p.proowner), p.proacl::text, p.prosrc, p.probin,
                 pg_catalog.pg_get_function_result(p.oid), p.provolatile, p.prosecdef,
                 p.proconfig::text, p.prolang, p.proisstrict, p.proleakproof, p.proparallel,
                 p.procost, p.prorows, pg_catalog.pg_get_function_arguments(p.oid),
                 CASE WHEN p.prokind <> 'a' THEN pg_catalog.pg_get_functiondef(p.oid) END)
       , NULL
  FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
 WHERE NOT EXISTS (SELECT 1 FROM member m
                   WHERE m.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND m.objid = p.oid)
UNION ALL
SELECT rel.nspname, 'trigger', format('%I on %I.%I', tg.tgname, rel.nspname, rel.relname),
       concat_ws('|', pg_catalog.pg_get_triggerdef(tg.oid), tg.tgenabled)
       , format('%I.%I', rel.nspname, rel.relname)
  FROM pg_catalog.pg_trigger tg JOIN rel ON rel.oid = tg.tgrelid
 WHERE NOT tg.tgisinternal
UNION ALL
SELECT ns.nspname,
       CASE t.typtype WHEN 'd' THEN 'domain' WHEN 'e' THEN 'enum' ELSE 'range' END,
       format('%I.%I', ns.nspname, t.typname),
       concat_ws('|', pg_catalog.pg_get_userbyid(t.typowner), t.typacl::text,
                 pg_catalog.format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault,
                 (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                    FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid))
       , NULL
  FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
 WHERE t.typtype IN ('d', 'e', 'r')
   AND NOT EXISTS (SELECT 1 FROM member m
                   WHERE m.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND m.objid = t.oid)
UNION ALL
SELECT ns.nspname, 'extension', format('%I', e.extname), e.extversion
       , NULL
  FROM pg_catalog.pg_extension e JOIN ns ON ns.oid = e.extnamespace
UNION ALL
SELECT rel.nspname, 'policy', format('%I on %I.%I', pol.polname, rel.nspname, rel.relname),
       concat_ws('|', pol.polcmd, pol.polpermissive, pol.polroles::text,
                 pg_catalog.pg_get_expr(pol.polqual, pol.polrelid),
                 pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid))
       , format('%I.%I', rel.nspname, rel.relname)
  FROM pg_catalog.pg_policy pol JOIN rel ON rel.oid = pol.polrelid
UNION ALL
SELECT rel.nspname, 'rule', format('%I on %I.%I', r.rulename, rel.nspname, rel.relname),
       pg_catalog.pg_get_ruledef(r.oid)
       , format('%I.%I', rel.nspname, rel.relname)
  FROM pg_catalog.pg_rewrite r JOIN rel ON rel.oid = r.ev_class
 WHERE r.rulename <> '_RETURN'
UNION ALL
SELECT '(database)', 'publication', format('%I', pub.pubname),
       concat_ws('|', pg_catalog.pg_get_userbyid(pub.pubowner), pub.puballtables, pub.pubinsert,
                 pub.pubupdate, pub.pubdelete, pub.pubtruncate, pub.pubviaroot,
                 (SELECT string_agg(format('%I.%I', n.nspname, c.relname), ',' ORDER BY n.nspname, c.relname)
                    FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid
                    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                   WHERE pr.prpubid = pub.oid))
       , NULL
  FROM pg_catalog.pg_publication pub
UNION ALL
SELECT '(database)', 'event-trigger', format('%I', e.evtname),
       concat_ws('|', pg_catalog.pg_get_userbyid(e.evtowner), e.evtevent, e.evtfoid::pg_catalog.regprocedure::text,
                 e.evtenabled, e.evttags::text)
       , NULL
  FROM pg_catalog.pg_event_trigger e
UNION ALL
SELECT coalesce(ns.nspname, '(database)'), 'default-privileges',
       format('for %I in %s on %s', pg_catalog.pg_get_userbyid(d.defaclrole),
              coalesce(format('%I', ns.nspname), 'the database'), d.defaclobjtype),
       d.defaclacl::text
       , NULL
  FROM pg_catalog.pg_default_acl d LEFT JOIN pg_catalog.pg_namespace ns ON ns.oid = d.defaclnamespace
UNION ALL
SELECT '(database)', 'database', format('%I', d.datname),
       concat_ws('|', pg_catalog.pg_get_userbyid(d.datdba), d.datacl::text, d.datconnlimit,
                 d.datallowconn,
                 (SELECT string_agg(concat_ws(':', s.setrole, s.setconfig::text), ',' ORDER BY s.setrole)
                    FROM pg_catalog.pg_db_role_setting s WHERE s.setdatabase = d.oid))
       , NULL
  FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
UNION ALL
SELECT '(cluster)', 'role', format('%I', r.rolname),
       concat_ws('|', r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
                 r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil,
                 (SELECT string_agg(concat_ws(':', m.roleid, m.admin_option), ',' ORDER BY m.roleid)
                    FROM pg_catalog.pg_auth_members m WHERE m.member = r.oid),
                 (SELECT string_agg(s.setconfig::text, ',')
                    FROM pg_catalog.pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase = 0))
       , NULL
  FROM pg_catalog.pg_roles r WHERE r.rolname !~ '^pg_'
"#;

/// Reads the baseline inside the caller's transaction (its own changes
/// included), leaving the session's search_path as it found it.
pub fn measure(client: &mut postgres::Client) -> Result<Baseline> {
    let failed =
        |e: postgres::Error| crate::catalog::query_error("reading the catalog baseline", e);
    let saved: String = client
        .query_one("SELECT pg_catalog.current_setting('search_path')", &[])
        .map_err(failed)?
        .get(0);
    client
        .batch_execute("SET LOCAL search_path = pg_catalog")
        .map_err(failed)?;
    let rows = client.query(OBJECTS, &[]).map_err(failed)?;
    client
        .execute(
            "SELECT pg_catalog.set_config('search_path', $1, true)",
            &[&saved],
        )
        .map_err(failed)?;
    let mut objects = BTreeMap::new();
    let mut parents = BTreeMap::new();
    for row in rows {
        let schema: String = row.get(0);
        let kind: String = row.get(1);
        let name: String = row.get(2);
        let definition: Option<String> = row.get(3);
        let kind = Kind::from_name(&kind).expect("the query only names known kinds");
        let digest = hex(&Sha256::digest(definition.unwrap_or_default().as_bytes()));
        let object = ObjectName { kind, name };
        if let Some(parent) = row.get::<_, Option<String>>(4) {
            parents.insert(object.clone(), parent);
        }
        objects.insert(object, (schema, digest));
    }
    Ok(Baseline { objects, parents })
}

/// [`measure`] in a read-only transaction of its own.
pub fn measure_read_only(client: &mut postgres::Client) -> Result<Baseline> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .map_err(|e| crate::catalog::query_error("starting a read-only transaction", e))?;
    let baseline = measure(client);
    let end = client.batch_execute("ROLLBACK");
    let baseline = baseline?;
    end.map_err(|e| crate::catalog::query_error("ending a read-only transaction", e))?;
    Ok(baseline)
}

impl Baseline {
    /// Without the cluster's roles, which other databases' owners change
    /// at any time: what "this database is as before" compares. (Inside
    /// the change's transaction, whose snapshot shows no one else's
    /// changes, roles are compared too.)
    pub fn database_only(&self) -> Baseline {
        Baseline {
            objects: self
                .objects
                .iter()
                .filter(|(name, _)| name.kind != Kind::Role)
                .map(|(name, entry)| (name.clone(), entry.clone()))
                .collect(),
            parents: self.parents.clone(),
        }
    }

    pub fn contains(&self, name: &ObjectName) -> bool {
        self.objects.contains_key(name)
    }

    /// Counts and digest of the database's objects (roles left out: see
    /// [`Baseline::database_only`]).
    pub fn summary(&self) -> BaselineSummary {
        let mut counts: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        let mut digest = Sha256::new();
        for (name, (schema, definition)) in self.database_only().objects.iter() {
            *counts
                .entry(schema.clone())
                .or_default()
                .entry(name.kind.plural().to_string())
                .or_default() += 1;
            digest.update(format!("{name}\t{schema}\t{definition}\n").as_bytes());
        }
        BaselineSummary {
            objects: counts
                .values()
                .flat_map(|kinds| kinds.values())
                .sum::<i64>() as usize,
            digest: hex(&digest.finalize()),
            counts,
        }
    }

    /// What `after` has that `self` has not, lacks, or has differently.
    pub fn delta(&self, after: &Baseline) -> Delta {
        let mut delta = Delta::default();
        let mut count = |schema: &str, kind: Kind, by: i64| {
            let entry = delta
                .counts
                .entry(schema.to_string())
                .or_default()
                .entry(kind.plural().to_string())
                .or_default();
            *entry += by;
        };
        for (name, (schema, definition)) in &after.objects {
            match self.objects.get(name) {
                None => {
                    delta.created.push(name.clone());
                    count(schema, name.kind, 1);
                }
                Some((_, before)) if before != definition => delta.altered.push(name.clone()),
                Some(_) => {}
            }
        }
        for (name, (schema, _)) in &self.objects {
            if !after.objects.contains_key(name) {
                delta.dropped.push(name.clone());
                count(schema, name.kind, -1);
            }
        }
        for kinds in delta.counts.values_mut() {
            kinds.retain(|_, n| *n != 0);
        }
        delta.counts.retain(|_, kinds| !kinds.is_empty());
        delta
    }

    /// The schema an object of this baseline lives in.
    fn schema_of(&self, name: &ObjectName) -> Option<&str> {
        self.objects.get(name).map(|(schema, _)| schema.as_str())
    }
}

/// What the package expects the change to do.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub counts: BTreeMap<String, BTreeMap<String, i64>>,
    pub altered: Vec<ObjectName>,
    /// Objects the change drops; what they hold (a table's indexes,
    /// constraints, triggers, owned sequences; a schema's objects) goes
    /// with them without being named.
    pub dropped: Vec<ObjectName>,
}

impl Expected {
    /// The expectation without the cluster's roles (see
    /// [`Baseline::database_only`]).
    pub fn database_only(&self) -> Expected {
        let keep = |names: &Vec<ObjectName>| {
            names
                .iter()
                .filter(|n| n.kind != Kind::Role)
                .cloned()
                .collect()
        };
        Expected {
            counts: self
                .counts
                .iter()
                .filter(|(schema, _)| schema.as_str() != CLUSTER_LEVEL)
                .map(|(schema, kinds)| (schema.clone(), kinds.clone()))
                .collect(),
            altered: keep(&self.altered),
            dropped: keep(&self.dropped),
        }
    }

    fn allows_drop(&self, object: &ObjectName, before: &Baseline) -> bool {
        self.dropped.iter().any(|declared| {
            declared == object
                || before.parents.get(object) == Some(&declared.name)
                || (declared.kind == Kind::Schema
                    && before
                        .schema_of(object)
                        .is_some_and(|schema| format_ident(schema) == declared.name))
        })
    }
}

/// An identifier as `format('%I')` writes it (quoted only when needed;
/// keywords aside, which schema names seldom are).
fn format_ident(name: &str) -> String {
    crate::scope::quote_if_needed(name)
}

impl Delta {
    /// Every way this delta differs from the expected one, each naming the
    /// objects concerned; empty when it is exactly as declared.
    pub fn mismatches(
        &self,
        expected: &Expected,
        after: &Baseline,
        before: &Baseline,
    ) -> Vec<String> {
        let mut mismatches = Vec::new();
        let mut keys: Vec<(String, String)> = Vec::new();
        for (schema, kinds) in self.counts.iter().chain(&expected.counts) {
            for kind in kinds.keys() {
                let key = (schema.clone(), kind.clone());
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        for (schema, kind) in keys {
            let measured = self
                .counts
                .get(&schema)
                .and_then(|k| k.get(&kind))
                .copied()
                .unwrap_or(0);
            let declared = expected
                .counts
                .get(&schema)
                .and_then(|k| k.get(&kind))
                .copied()
                .unwrap_or(0);
            if measured == declared {
                continue;
            }
            let in_schema = |names: &[ObjectName], baseline: &Baseline| -> Vec<String> {
                names
                    .iter()
                    .filter(|n| {
                        n.kind.plural() == kind && baseline.schema_of(n) == Some(schema.as_str())
                    })
                    .map(|n| n.to_string())
                    .collect()
            };
            let created = in_schema(&self.created, after);
            let dropped = in_schema(&self.dropped, before);
            let mut evidence = Vec::new();
            if !created.is_empty() {
                evidence.push(format!("created {}", list(&created)));
            }
            if !dropped.is_empty() {
                evidence.push(format!("dropped {}", list(&dropped)));
            }
            mismatches.push(format!(
                "{schema}: {kind} {measured:+}, declared {declared:+}{}",
                if evidence.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", evidence.join("; "))
                }
            ));
        }
        // Net counts alone would let a drop hide behind a create: every
        // dropped object must be declared (or go with one that is).
        for name in &self.dropped {
            if !expected.allows_drop(name, before) {
                mismatches.push(format!(
                    "{name} was dropped, and expected-dropped does not name it (nor what holds it)"
                ));
            }
        }
        for name in &expected.dropped {
            if !self.dropped.contains(name) {
                mismatches.push(format!("{name} is in expected-dropped but was not dropped"));
            }
        }
        for name in &self.altered {
            if !expected.altered.contains(name) {
                mismatches.push(format!(
                    "{name} was altered, and expected-altered does not name it"
                ));
            }
        }
        for name in &expected.altered {
            if !self.altered.contains(name) {
                mismatches.push(format!("{name} is in expected-altered but was not altered"));
            }
        }
        mismatches
    }
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 20;
    if names.len() <= SHOWN {
        names.join(", ")
    } else {
        format!(
            "{} and {} more",
            names[..SHOWN].join(", "),
            names.len() - SHOWN
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(objects: &[(&str, &str, &str)]) -> Baseline {
        Baseline {
            objects: objects
                .iter()
                .map(|(schema, name, definition)| {
                    (
                        ObjectName::parse(name).unwrap(),
                        (schema.to_string(), definition.to_string()),
                    )
                })
                .collect(),
            parents: BTreeMap::new(),
        }
    }

    #[test]
    fn delta_names_created_dropped_and_altered_objects() {
        let before = baseline(&[
            ("app", "schema app", "owner"),
            ("app", "table app.a", "id:int"),
            ("app", "table app.old", "id:int"),
        ]);
        let after = baseline(&[
            ("app", "schema app", "owner"),
            ("app", "table app.a", "id:int,note:text"),
            ("app", "table app.b", "id:int"),
            ("app", "table app.c", "id:int"),
            ("app", "primary-key b_pkey on app.b", "PRIMARY KEY (id)"),
        ]);
        let delta = before.delta(&after);
        assert_eq!(
            delta
                .created
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            ["table app.b", "table app.c", "primary-key b_pkey on app.b"]
        );
        assert_eq!(delta.dropped[0].to_string(), "table app.old");
        assert_eq!(delta.altered[0].to_string(), "table app.a");
        assert_eq!(delta.counts["app"]["tables"], 1);
        assert_eq!(delta.counts["app"]["primary-keys"], 1);

        let mut expected = Expected::default();
        expected.counts.insert(
            "app".into(),
            [("tables".to_string(), 1), ("primary-keys".to_string(), 1)].into(),
        );
        expected
            .altered
            .push(ObjectName::parse("table app.a").unwrap());
        expected
            .dropped
            .push(ObjectName::parse("table app.old").unwrap());
        assert!(delta.mismatches(&expected, &after, &before).is_empty());
        expected.dropped.clear();

        expected
            .counts
            .get_mut("app")
            .unwrap()
            .insert("tables".into(), 2);
        expected.altered.clear();
        let mismatches = delta.mismatches(&expected, &after, &before);
        assert_eq!(
            mismatches,
            [
                "app: tables +1, declared +2 (created table app.b, table app.c; dropped table app.old)",
                "table app.old was dropped, and expected-dropped does not name it (nor what holds it)",
                "table app.a was altered, and expected-altered does not name it",
            ]
        );
        assert_ne!(before.summary().digest, after.summary().digest);
        assert_eq!(before.summary().digest, before.clone().summary().digest);
    }

    #[test]
    fn a_drop_cannot_hide_behind_a_create_and_what_a_dropped_table_holds_goes_with_it() {
        let mut before = baseline(&[
            ("app", "schema app", "owner"),
            ("app", "table app.victim", "id:int"),
            ("app", "index app.victim_pkey", "btree"),
            (
                "app",
                "primary-key victim_pkey on app.victim",
                "PRIMARY KEY (id)",
            ),
        ]);
        before.parents.insert(
            ObjectName::parse("index app.victim_pkey").unwrap(),
            "app.victim".into(),
        );
        before.parents.insert(
            ObjectName::parse("primary-key victim_pkey on app.victim").unwrap(),
            "app.victim".into(),
        );
        // Net zero tables: one dropped, one created.
        let after = baseline(&[
            ("app", "schema app", "owner"),
            ("app", "table app.newtab", "id:int"),
        ]);
        let delta = before.delta(&after);
        let mut expected = Expected::default();
        expected.counts.insert(
            "app".into(),
            [
                ("indexes".to_string(), -1),
                ("primary-keys".to_string(), -1),
            ]
            .into(),
        );
        let mismatches = delta.mismatches(&expected, &after, &before);
        assert_eq!(mismatches.len(), 3, "{mismatches:?}");
        assert!(
            mismatches
                .iter()
                .all(|m| m.contains("expected-dropped does not name it"))
        );
        expected
            .dropped
            .push(ObjectName::parse("table app.victim").unwrap());
        assert_eq!(
            delta.mismatches(&expected, &after, &before),
            Vec::<String>::new()
        );
        // A whole schema dropped: its objects go with it.
        let empty = baseline(&[]);
        let delta = before.delta(&empty);
        let expected = Expected {
            counts: [(
                "app".to_string(),
                [
                    ("schemas".to_string(), -1),
                    ("tables".to_string(), -1),
                    ("indexes".to_string(), -1),
                    ("primary-keys".to_string(), -1),
                ]
                .into(),
            )]
            .into(),
            altered: Vec::new(),
            dropped: vec![ObjectName::parse("schema app").unwrap()],
        };
        assert_eq!(
            delta.mismatches(&expected, &empty, &before),
            Vec::<String>::new()
        );
    }

    #[test]
    fn object_names_need_a_known_kind() {
        assert!(ObjectName::parse("tabel app.a").is_err());
        assert!(ObjectName::parse("table").is_err());
        assert_eq!(
            ObjectName::parse("foreign-key a_fk on app.a").unwrap().name,
            "a_fk on app.a"
        );
        for (kind, name, plural) in KINDS {
            assert_eq!(Kind::from_name(name), Some(*kind));
            assert_eq!(Kind::from_plural(plural), Some(*kind));
        }
    }
}
