//! Restoring part of a backup: whole schemas (`--schema`) and single
//! tables (`--table schema.table`).
//!
//! pg_restore's own `-n`/`-t` match names without their schema and leave
//! a table's indexes, constraints and the schema itself behind, so pgward
//! chooses the TOC entries itself and hands pg_restore a list (`-L`): the
//! named schemas with everything in them, the named tables with their data
//! and the sequences they own, the schemas these live in, the access
//! methods of the tables (nothing else can select one), and then every
//! entry all of whose dependencies are chosen (indexes, constraints,
//! defaults, triggers, comments, grants). An entry that also needs
//! something left out (a foreign key to another table, a trigger calling a
//! function elsewhere) is left out too, and the restore report names it.

use crate::error::Result;
use crate::pipeline::archive::Toc;
use crate::scope::TableName;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub schemas: Vec<String>,
    pub tables: Vec<TableName>,
}

impl Selection {
    pub fn new(schemas: Vec<String>, tables: &[String]) -> Result<Selection> {
        let tables = tables
            .iter()
            .map(|t| TableName::parse(t))
            .collect::<Result<Vec<_>>>()?;
        Ok(Selection { schemas, tables })
    }

    pub fn is_everything(&self) -> bool {
        self.schemas.is_empty() && self.tables.is_empty()
    }

    /// The dump ids of the entries to restore, in TOC order.
    pub fn entries(&self, toc: &Toc) -> Vec<i64> {
        let mut chosen: BTreeSet<i64> = BTreeSet::new();
        let mut schemas: BTreeSet<&str> = self.schemas.iter().map(String::as_str).collect();
        for entry in &toc.entries {
            let named_table = self
                .tables
                .iter()
                .any(|t| t.schema == entry.namespace && t.table == entry.tag);
            if self.schemas.contains(&entry.namespace) || named_table {
                chosen.insert(entry.dump_id);
                schemas.insert(entry.namespace.as_str());
            }
        }
        // Sequences owned by a chosen table (serial columns): "SEQUENCE
        // OWNED BY" depends on both, so the closure below would not add it.
        for entry in toc.entries.iter().filter(|e| e.desc == "SEQUENCE OWNED BY") {
            if entry.dependencies.iter().any(|d| chosen.contains(d)) {
                chosen.extend(entry.dependencies.iter().copied());
            }
        }
        for entry in &toc.entries {
            if entry.desc == "SCHEMA" && schemas.contains(entry.tag.as_str()) {
                chosen.insert(entry.dump_id);
            }
        }
        // The access methods of chosen tables: no --schema or --table can
        // name one, and the table cannot be created without it.
        let methods: BTreeSet<&str> = toc
            .entries
            .iter()
            .filter(|e| chosen.contains(&e.dump_id))
            .filter_map(|e| e.table_access_method.as_deref())
            .collect();
        for entry in &toc.entries {
            if entry.desc == "ACCESS METHOD" && methods.contains(entry.tag.as_str()) {
                chosen.insert(entry.dump_id);
            }
        }
        // The extensions chosen objects use (pg_dump makes an object that
        // uses an extension's type, function or operator class depend on
        // the extension), the extensions those require, and the schemas
        // they live in: no --schema or --table can name an extension.
        chosen.extend(needed_extensions(toc, &chosen));
        // Then the entries that depend on chosen ones, until nothing
        // changes: an entry comes along when everything it depends on is
        // chosen. A dependency on a schema or an extension does not count
        // (every object in a schema depends on it, and a table's schema
        // must not bring the schema's other tables, nor an extension the
        // other tables that use it).
        let container_ids = container_entries(toc);
        let real_dependencies = |entry: &crate::pipeline::archive::TocEntry| -> Vec<i64> {
            entry
                .dependencies
                .iter()
                .copied()
                .filter(|d| !container_ids.contains(d))
                .collect()
        };
        let extension_ids: BTreeSet<i64> = toc
            .entries
            .iter()
            .filter(|e| e.desc == "EXTENSION")
            .map(|e| e.dump_id)
            .collect();
        loop {
            let before = chosen.len();
            for entry in &toc.entries {
                let dependencies = real_dependencies(entry);
                let all_chosen = entry.dependencies.iter().all(|d| chosen.contains(d));
                // A comment or grant on a chosen schema or extension itself.
                let on_container = dependencies.is_empty()
                    && !entry.dependencies.is_empty()
                    && matches!(entry.desc.as_str(), "COMMENT" | "ACL" | "SECURITY LABEL");
                // Something of chosen objects that needs an extension (an
                // index with an operator class of pg_trgm) brings it along.
                let all_available = entry
                    .dependencies
                    .iter()
                    .all(|d| chosen.contains(d) || extension_ids.contains(d));
                if all_chosen && on_container {
                    chosen.insert(entry.dump_id);
                } else if all_available && !dependencies.is_empty() {
                    chosen.insert(entry.dump_id);
                    chosen.extend(
                        entry
                            .dependencies
                            .iter()
                            .filter(|d| extension_ids.contains(d)),
                    );
                }
            }
            chosen.extend(needed_extensions(toc, &chosen));
            if chosen.len() == before {
                break;
            }
        }
        toc.entries
            .iter()
            .map(|e| e.dump_id)
            .filter(|id| chosen.contains(id))
            .collect()
    }

    /// The extensions a restore of `chosen` brings along, by name.
    pub fn extensions(toc: &Toc, chosen: &BTreeSet<i64>) -> Vec<String> {
        toc.entries
            .iter()
            .filter(|e| e.desc == "EXTENSION" && chosen.contains(&e.dump_id))
            .map(|e| e.tag.clone())
            .collect()
    }

    /// Entries left out although they belong to something chosen, because
    /// they also need something that is not (a trigger calling a function
    /// elsewhere, a foreign key to another table): `DESC schema.name` each.
    pub fn left_out(&self, toc: &Toc, chosen: &BTreeSet<i64>) -> Vec<String> {
        let container_ids = container_entries(toc);
        toc.entries
            .iter()
            .filter(|e| !chosen.contains(&e.dump_id))
            .filter(|e| {
                e.dependencies
                    .iter()
                    .any(|d| chosen.contains(d) && !container_ids.contains(d))
            })
            .map(|e| format!("{} {}.{}", e.desc, e.namespace, e.tag))
            .collect()
    }

    /// A pg_restore list file (`-L`) of `entries`.
    pub fn list_file(entries: &[i64]) -> String {
        let mut text = String::from("; pgward restore selection\n");
        for id in entries {
            text.push_str(&format!("{id};\n"));
        }
        text
    }
}

/// The EXTENSION entries that entries in `chosen` depend on, with the
/// extensions and schemas those depend on, until nothing changes, and the
/// user's rows of their configuration tables and the values of their
/// configuration sequences (TABLE DATA and SEQUENCE SET that depend on the
/// extension, not a table): an extension comes as pg_dump dumped it.
fn needed_extensions(toc: &Toc, chosen: &BTreeSet<i64>) -> BTreeSet<i64> {
    let by_id: std::collections::HashMap<i64, &crate::pipeline::archive::TocEntry> =
        toc.entries.iter().map(|e| (e.dump_id, e)).collect();
    let mut needed: BTreeSet<i64> = BTreeSet::new();
    let mut frontier: Vec<i64> = chosen.iter().copied().collect();
    while let Some(id) = frontier.pop() {
        let Some(entry) = by_id.get(&id) else {
            continue;
        };
        let from_extension = entry.desc == "EXTENSION";
        for &dependency in &entry.dependencies {
            let wanted = match by_id.get(&dependency).map(|e| e.desc.as_str()) {
                Some("EXTENSION") => true,
                Some("SCHEMA") => from_extension,
                _ => false,
            };
            if wanted && !chosen.contains(&dependency) && needed.insert(dependency) {
                frontier.push(dependency);
            }
        }
    }
    let extensions: BTreeSet<i64> = toc
        .entries
        .iter()
        .filter(|e| e.desc == "EXTENSION")
        .map(|e| e.dump_id)
        .filter(|id| chosen.contains(id) || needed.contains(id))
        .collect();
    let schemas = container_entries(toc);
    for entry in &toc.entries {
        // Its table is the extension's, so it depends on the extension
        // (and the schema) in its stead.
        let configuration = matches!(entry.desc.as_str(), "TABLE DATA" | "SEQUENCE SET")
            && entry.dependencies.iter().any(|d| extensions.contains(d))
            && entry
                .dependencies
                .iter()
                .all(|d| extensions.contains(d) || schemas.contains(d));
        if configuration && !chosen.contains(&entry.dump_id) {
            needed.insert(entry.dump_id);
        }
    }
    needed
}

/// What to do when a partial restore failed because pg_restore's
/// `message` names an object the selection did not bring: the object, and
/// what selects it, or that nothing can and what to do instead.
pub fn missing_object_hint(toc: &Toc, selection: &Selection, message: &str) -> Option<String> {
    if selection.is_everything() {
        return None;
    }
    let error = &message[message.find("ERROR:")? + "ERROR:".len()..];
    // A table with another access method is created after `SET
    // default_table_access_method = heap2`, which fails first.
    let error = match error.split_once("parameter \"default_table_access_method\": ") {
        Some((_, method)) => format!("access method {method}"),
        None => error.to_string(),
    };
    let error = error.trim();
    // PostgreSQL quotes most names (`type "x" does not exist`), but not
    // functions (`function public.f(integer) does not exist`) or operators
    // (`operator does not exist: integer public.=== integer`).
    let (kind, quoted): (String, &str) = if let Some(rest) = error.strip_prefix("function ") {
        let signature = rest.split(" does not exist").next()?;
        ("function".to_string(), signature.split('(').next()?)
    } else if let Some(rest) = error.strip_prefix("operator does not exist: ") {
        let words: Vec<&str> = rest.split_whitespace().collect();
        let operator = if words.len() >= 3 {
            words[1]
        } else {
            words.first()?
        };
        ("operator".to_string(), operator)
    } else {
        // `type "x" does not exist` -> "type"; `access method "x" ...` -> "access method".
        let kind = error
            .split_whitespace()
            .take_while(|w| !w.starts_with('"'))
            .collect::<Vec<_>>()
            .join(" ");
        (kind, error.split('"').nth(1)?)
    };
    let (schema, name) = match quoted.rsplit_once('.') {
        Some((schema, name)) if !schema.is_empty() => (Some(schema), name),
        _ => (None, quoted),
    };
    let entry = |descs: &[&str]| {
        toc.entries.iter().find(|e| {
            descs.contains(&e.desc.as_str())
                && (e.tag == name
                    || e.tag.starts_with(&format!("{name}("))
                    || e.tag.starts_with(&format!("{name} (")))
                && schema.is_none_or(|s| e.namespace == s)
        })
    };
    let restore_whole = "or restore the whole backup";
    let selectable = |e: &crate::pipeline::archive::TocEntry, what: &str| {
        if matches!(
            e.desc.as_str(),
            "TABLE" | "VIEW" | "MATERIALIZED VIEW" | "FOREIGN TABLE"
        ) {
            format!(
                "{what} {}.{} is in the backup: add --table {} (or --schema {}), {restore_whole}",
                e.namespace,
                e.tag,
                TableName {
                    schema: e.namespace.clone(),
                    table: e.tag.clone()
                },
                e.namespace
            )
        } else {
            format!(
                "{what} {}.{} is in the backup: add --schema {}, {restore_whole}",
                e.namespace, e.tag, e.namespace
            )
        }
    };
    let extensions: Vec<&str> = toc
        .entries
        .iter()
        .filter(|e| e.desc == "EXTENSION")
        .map(|e| e.tag.as_str())
        .collect();
    let from_extension = |what: &str| {
        if extensions.is_empty() {
            format!(
                "{what} {quoted} is not in the backup: create it in the target database before restoring into it (an empty database pgward may use), {restore_whole}"
            )
        } else {
            format!(
                "{what} {quoted} is not an entry of its own in the backup, so it most likely belongs to one of its extensions ({}); --schema and --table never select an extension: create the extension in the target database first and restore into that (empty) database, {restore_whole}",
                extensions.join(", ")
            )
        }
    };
    Some(match kind.as_str() {
        "access method" => match entry(&["ACCESS METHOD"]) {
            Some(e) => format!(
                "access method {name} is in the backup, but --schema and --table never select an access method: create it in the target database first ({}) and restore into that (empty) database, or restore the whole backup",
                e.definition.trim()
            ),
            None => from_extension("access method"),
        },
        "type" => match entry(&["TYPE", "DOMAIN"]) {
            Some(e) => selectable(e, "type"),
            None => from_extension("type"),
        },
        "schema" => match toc
            .entries
            .iter()
            .find(|e| e.desc == "SCHEMA" && e.tag == quoted)
        {
            Some(_) => {
                format!("schema {quoted} is in the backup: add --schema {quoted}, {restore_whole}")
            }
            None => from_extension("schema"),
        },
        "function" | "operator" | "collation" | "text search configuration" => {
            match entry(&[
                "FUNCTION",
                "PROCEDURE",
                "AGGREGATE",
                "OPERATOR",
                "COLLATION",
                "TEXT SEARCH CONFIGURATION",
            ]) {
                Some(e) => selectable(e, &kind),
                None => from_extension(&kind),
            }
        }
        "relation" => match entry(&[
            "TABLE",
            "VIEW",
            "MATERIALIZED VIEW",
            "FOREIGN TABLE",
            "SEQUENCE",
        ]) {
            Some(e) => selectable(e, "relation"),
            None => from_extension("relation"),
        },
        _ => return None,
    })
}

/// The dump ids of the archive's SCHEMA and EXTENSION entries: what the
/// objects in a schema, or using an extension, depend on without belonging
/// to it.
fn container_entries(toc: &Toc) -> BTreeSet<i64> {
    toc.entries
        .iter()
        .filter(|e| e.desc == "SCHEMA" || e.desc == "EXTENSION")
        .map(|e| e.dump_id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::archive::custom::CustomInspector;

    fn toc() -> Toc {
        let mut inspector = CustomInspector::new();
        inspector.update(include_bytes!("../../tests/fixtures/sample-pg15.dump"));
        inspector.toc().cloned().unwrap()
    }

    fn chosen(selection: &Selection, toc: &Toc) -> Vec<String> {
        let ids = selection.entries(toc);
        toc.entries
            .iter()
            .filter(|e| ids.contains(&e.dump_id))
            .map(|e| format!("{} {}.{}", e.desc, e.namespace, e.tag))
            .collect()
    }

    #[test]
    fn a_table_comes_with_its_schema_and_data_only() {
        let toc = toc();
        let selection = Selection::new(vec![], &["s2.\"Mixed Case\"".to_string()]).unwrap();
        let names = chosen(&selection, &toc);
        assert!(names.contains(&"SCHEMA .s2".to_string()), "{names:?}");
        assert!(
            names.contains(&"TABLE s2.Mixed Case".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"TABLE DATA s2.Mixed Case".to_string()),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("t1")), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("BLOB")), "{names:?}");
    }

    #[test]
    fn a_missing_object_is_named_with_what_selects_it() {
        let toc = toc();
        let selection = Selection::new(vec![], &["public.t1".to_string()]).unwrap();
        let hint = |message: &str| missing_object_hint(&toc, &selection, message);
        let schema = hint(
            "pg_restore: error: could not execute query: ERROR:  schema \"s2\" does not exist",
        );
        assert_eq!(
            schema.as_deref(),
            Some("schema s2 is in the backup: add --schema s2, or restore the whole backup")
        );
        let table = hint("ERROR:  relation \"s2.Mixed Case\" does not exist").unwrap();
        let function = hint("ERROR:  function s2.nowhere(integer) does not exist").unwrap();
        assert!(
            function.starts_with("function s2.nowhere is not in the backup"),
            "{function}"
        );
        let operator = hint("ERROR:  operator does not exist: integer s2.=== integer").unwrap();
        assert!(
            operator.starts_with("operator s2.=== is not in the backup"),
            "{operator}"
        );
        assert!(table.contains("add --table s2.\"Mixed Case\""), "{table}");
        let access_method = hint("pg_restore: error: could not set default_table_access_method: ERROR:  invalid value for parameter \"default_table_access_method\": \"heap2\"").unwrap();
        assert!(
            access_method.starts_with(
                "access method heap2 is not in the backup: create it in the target database"
            ),
            "{access_method}"
        );
        assert!(hint("ERROR:  role \"alice\" does not exist").is_none());
        assert!(
            missing_object_hint(
                &toc,
                &Selection::default(),
                "ERROR:  schema \"s2\" does not exist"
            )
            .is_none()
        );
    }

    #[test]
    fn a_schema_comes_whole() {
        let toc = toc();
        let selection = Selection::new(vec!["public".to_string()], &[]).unwrap();
        let names = chosen(&selection, &toc);
        for wanted in [
            "TABLE DATA public.t1",
            "TABLE DATA public.empty_t",
            "SEQUENCE SET public.seq1",
        ] {
            assert!(
                names.contains(&wanted.to_string()),
                "{wanted} missing from {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.contains("Mixed Case")), "{names:?}");
        assert!(Selection::default().is_everything());
        assert_eq!(
            Selection::list_file(&[3, 7]),
            "; pgward restore selection\n3;\n7;\n"
        );
    }
}
