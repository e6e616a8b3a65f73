//! What a backup covers: include/exclude lists of schemas and tables, with
//! exact (not pattern) names, and how they become pg_dump switches.
//!
//! Names are exact on purpose: `pgward check` must be able to say that a
//! configured table does not exist, and a pattern that matches nothing would
//! hide exactly that. Each name is passed to pg_dump double-quoted so that
//! pg_dump's pattern characters (`*`, `?`, `.`) and case folding never apply.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Scope {
    /// Only these schemas (all non-system schemas when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_schemas: Vec<String>,
    /// Only these tables, as `schema.table` (quote names that contain dots:
    /// `"my.schema".orders`). Cannot be combined with `schemas`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_tables: Vec<String>,
    /// Whether a backup of this scope must restore into an empty database
    /// (the default). `false` says the scope is meant for a database that
    /// already holds what it depends on outside itself: such dependencies
    /// are then warnings instead of failures, and are recorded.
    #[serde(default = "standalone_default", skip_serializing_if = "is_standalone")]
    pub standalone: bool,
}

fn standalone_default() -> bool {
    true
}

fn is_standalone(standalone: &bool) -> bool {
    *standalone
}

impl Default for Scope {
    fn default() -> Scope {
        Scope {
            schemas: Vec::new(),
            exclude_schemas: Vec::new(),
            tables: Vec::new(),
            exclude_tables: Vec::new(),
            standalone: true,
        }
    }
}

/// Two scopes are equal when they select the same objects: `standalone`
/// says how a backup restores, not what it holds, so changing it neither
/// starts a new chain of backups for retention nor hides the previous
/// backup from the shrink check.
impl PartialEq for Scope {
    fn eq(&self, other: &Scope) -> bool {
        self.schemas == other.schemas
            && self.exclude_schemas == other.exclude_schemas
            && self.tables == other.tables
            && self.exclude_tables == other.exclude_tables
    }
}

impl Eq for Scope {}

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_if_needed(&self.schema),
            quote_if_needed(&self.table)
        )
    }
}

pub(crate) fn quote_if_needed(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && !name.is_empty();
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// SQL identifier quoting: `"` doubled, the whole in double quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl TableName {
    /// Parses `schema.table`; either part may be double-quoted. Unquoted
    /// parts are taken as written (no case folding): names are exact.
    pub fn parse(text: &str) -> Result<TableName> {
        let parts = split_qualified(text).ok_or_else(|| {
            Error::config(format!("invalid table name {text:?}")).with_hint(
                "write tables as schema.table, e.g. public.orders or \"My Schema\".\"Orders\"",
            )
        })?;
        match parts.as_slice() {
            [schema, table] => Ok(TableName {
                schema: schema.clone(),
                table: table.clone(),
            }),
            _ => Err(
                Error::config(format!("table name {text:?} is not schema-qualified"))
                    .with_hint("write tables as schema.table, e.g. public.orders"),
            ),
        }
    }
}

fn split_qualified(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.trim().chars().peekable();
    let mut quoted_part = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if current.is_empty() && !quoted_part => {
                quoted_part = true;
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            current.push('"');
                        }
                        '"' => break,
                        other => current.push(other),
                    }
                }
            }
            '.' => {
                parts.push(std::mem::take(&mut current));
                quoted_part = false;
            }
            _ if quoted_part => return None,
            other => current.push(other),
        }
    }
    parts.push(current);
    parts.iter().all(|p| !p.is_empty()).then_some(parts)
}

impl Scope {
    pub fn validate(&self) -> Result<()> {
        let names_schemas = !self.schemas.is_empty() || !self.exclude_schemas.is_empty();
        if !self.tables.is_empty() && names_schemas {
            return Err(Error::config("scope names both tables and schemas")
                .with_hint("list either tables (schema.table) or schemas to include, as pg_dump ignores schema switches when tables are named"));
        }
        for name in self.tables.iter().chain(&self.exclude_tables) {
            TableName::parse(name)?;
        }
        for schema in self.schemas.iter().chain(&self.exclude_schemas) {
            if schema.is_empty() {
                return Err(Error::config("empty schema name in scope"));
            }
        }
        Ok(())
    }

    /// The selection alone, as text: what tells one chain of backups from
    /// another (see `PartialEq`).
    pub fn selection_key(&self) -> String {
        let selection = Scope {
            standalone: true,
            ..self.clone()
        };
        serde_json::to_string(&selection).unwrap_or_default()
    }

    pub fn is_whole_database(&self) -> bool {
        *self == Scope::default()
    }

    pub fn tables(&self) -> Vec<TableName> {
        parse_all(&self.tables)
    }

    pub fn excluded_tables(&self) -> Vec<TableName> {
        parse_all(&self.exclude_tables)
    }

    /// Whether a table belongs to this scope (pg_dump's selection rules
    /// for exact names).
    pub fn includes(&self, table: &TableName) -> bool {
        if self.excluded_tables().contains(table) || self.exclude_schemas.contains(&table.schema) {
            return false;
        }
        if !self.tables.is_empty() {
            return self.tables().contains(table);
        }
        self.schemas.is_empty() || self.schemas.contains(&table.schema)
    }

    /// The pg_dump switches that select this scope, every name quoted so it
    /// matches exactly one object.
    pub fn pg_dump_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for schema in &self.schemas {
            args.push(format!("--schema={}", quote_ident(schema)));
        }
        for schema in &self.exclude_schemas {
            args.push(format!("--exclude-schema={}", quote_ident(schema)));
        }
        for t in self.tables() {
            args.push(format!(
                "--table={}.{}",
                quote_ident(&t.schema),
                quote_ident(&t.table)
            ));
        }
        for t in self.excluded_tables() {
            args.push(format!(
                "--exclude-table={}.{}",
                quote_ident(&t.schema),
                quote_ident(&t.table)
            ));
        }
        if !self.schemas.is_empty() || !self.tables.is_empty() {
            // A name that matches nothing is an error, not an empty backup.
            args.push("--strict-names".to_string());
        }
        args
    }
}

fn parse_all(names: &[String]) -> Vec<TableName> {
    names
        .iter()
        .filter_map(|n| TableName::parse(n).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, t: &str) -> TableName {
        TableName {
            schema: s.into(),
            table: t.into(),
        }
    }

    #[test]
    fn parses_quoted_and_plain_names() {
        assert_eq!(
            TableName::parse("public.orders").unwrap(),
            t("public", "orders")
        );
        assert_eq!(
            TableName::parse("\"My.Schema\".\"Or\"\"ders\"").unwrap(),
            t("My.Schema", "Or\"ders")
        );
        assert_eq!(TableName::parse("s.\"T\"").unwrap(), t("s", "T"));
        for bad in ["orders", "a.b.c", ".x", "\"open.x", "\"a\"b.c"] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selection_follows_pg_dump_rules() {
        let scope = Scope {
            schemas: vec!["public".into(), "gov".into()],
            exclude_tables: vec!["public.audit".into()],
            ..Scope::default()
        };
        assert!(scope.includes(&t("gov", "x")));
        assert!(!scope.includes(&t("public", "audit")));
        assert!(!scope.includes(&t("other", "x")));
        assert_eq!(
            scope.pg_dump_args(),
            vec![
                "--schema=\"public\"",
                "--schema=\"gov\"",
                "--exclude-table=\"public\".\"audit\"",
                "--strict-names"
            ]
        );
        let both = Scope {
            schemas: vec!["a".into()],
            tables: vec!["a.b".into()],
            ..Scope::default()
        };
        assert!(both.validate().is_err());
    }

    #[test]
    fn standalone_does_not_change_the_selection() {
        let standalone = Scope {
            schemas: vec!["app".into()],
            ..Scope::default()
        };
        let prepared = Scope {
            standalone: false,
            ..standalone.clone()
        };
        assert_eq!(standalone, prepared);
        assert_eq!(standalone.selection_key(), prepared.selection_key());
        assert!(
            Scope {
                standalone: false,
                ..Scope::default()
            }
            .is_whole_database()
        );
        let parsed: Scope = toml::from_str("schemas = [\"app\"]\n").unwrap();
        assert!(parsed.standalone);
    }

    #[test]
    fn display_quotes_only_when_needed() {
        assert_eq!(t("public", "orders").to_string(), "public.orders");
        assert_eq!(t("s2", "Mixed Case").to_string(), "s2.\"Mixed Case\"");
    }
}
