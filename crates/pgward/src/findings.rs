//! Named findings: differences between a backup and what it restores to
//! that have a known cause, so that a drill can say what differs, why and
//! what it means instead of showing a raw diff.
//!
//! A finding fails the drill like any difference, unless the operator
//! accepted it for that object in the configuration (`[drill] accept =
//! ["CLASS OBJECT", ...]`): then it is recorded in the verdict as accepted
//! and no longer fails it. Nothing is accepted by default, and an entry
//! names one object, so a new occurrence is never accepted by accident.

use crate::catalog::restorability::ColumnOrder;
use crate::error::{Error, Result};
use crate::repository::manifest::{DrillCheck, Finding};

/// A table whose columns came back in another order.
pub const COLUMN_ORDER: &str = "column-order";

/// Every class an `accept` entry may name.
pub const CLASSES: [&str; 1] = [COLUMN_ORDER];

/// One `[drill] accept` entry: a class and the object it is accepted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    pub class: String,
    pub object: String,
}

impl Acceptance {
    /// `"column-order public.child"`.
    pub fn parse(entry: &str) -> Result<Acceptance> {
        let bad = |why: String| {
            Error::config(format!("drill.accept entry {entry:?}: {why}")).with_hint(format!(
                "write each entry as \"CLASS OBJECT\", e.g. \"column-order public.child\"; classes: {}",
                CLASSES.join(", ")
            ))
        };
        let (class, object) = entry
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("it names no object".to_string()))?;
        if !CLASSES.contains(&class) {
            return Err(bad(format!("unknown finding class {class:?}")));
        }
        let object = crate::scope::TableName::parse(object.trim())
            .map_err(|e| bad(e.message().to_string()))?;
        Ok(Acceptance {
            class: class.to_string(),
            object: object.to_string(),
        })
    }
}

/// Marks the findings among `checks` that `accept` names as accepted, and
/// returns their keys (`CLASS OBJECT`).
pub fn apply_acceptance(checks: &mut [DrillCheck], accept: &[String]) -> Vec<String> {
    let accepted: Vec<Acceptance> = accept
        .iter()
        .filter_map(|entry| Acceptance::parse(entry).ok())
        .collect();
    let mut keys = Vec::new();
    for finding in checks.iter_mut().filter_map(|c| c.finding.as_mut()) {
        if accepted
            .iter()
            .any(|a| a.class == finding.class && a.object == finding.object)
        {
            finding.accepted = true;
            let key = finding.key();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// The column-order finding for `table`, whose columns the backup recorded
/// as `recorded` and the restored database has as `restored`.
pub fn column_order(recorded: &ColumnOrder, restored: &[String]) -> DrillCheck {
    let object = recorded.name().to_string();
    let why = if recorded.inherits.is_empty() {
        "the table inherits from no other table, so pg_dump's INHERITS rule does not explain it; compare the definitions by hand".to_string()
    } else {
        format!(
            "{object} inherits from {}: pg_dump writes it as CREATE TABLE ... INHERITS, and the server puts the inherited columns first, so an order made by ALTER TABLE ... INHERIT, or by a column added to a parent later, cannot be restored",
            recorded.inherits.join(", ")
        )
    };
    let means = "the data is the same (it is compared column by column by name), but SELECT *, INSERT without a column list and COPY without one see the columns in the restored order".to_string();
    DrillCheck {
        name: format!("column order {object}"),
        ok: false,
        detail: format!(
            "backup has ({}), restored table has ({}); why: {why}; means: {means}; accept it with [drill] accept = [\"{COLUMN_ORDER} {object}\"]",
            recorded.columns.join(", "),
            restored.join(", ")
        ),
        finding: Some(Finding {
            class: COLUMN_ORDER.to_string(),
            object,
            why,
            means,
            accepted: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_entries_name_a_known_class_and_one_object() {
        assert_eq!(
            Acceptance::parse("column-order public.child").unwrap(),
            Acceptance {
                class: COLUMN_ORDER.to_string(),
                object: "public.child".to_string()
            }
        );
        // Quoted names come back in the form findings print.
        assert_eq!(
            Acceptance::parse("column-order  \"S\".\"Child Table\"")
                .unwrap()
                .object,
            "\"S\".\"Child Table\""
        );
        for bad in ["column-order", "colour-order public.t", "column-order t"] {
            assert!(Acceptance::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_accepted_finding_no_longer_fails() {
        let recorded = ColumnOrder {
            schema: "public".into(),
            table: "child".into(),
            columns: vec!["b".into(), "a".into()],
            inherits: vec!["public.parent".into()],
        };
        let mut checks = vec![
            column_order(&recorded, &["a".into(), "b".into()]),
            DrillCheck::failed("table public.t", "differs"),
        ];
        assert!(checks[0].fails());
        assert!(
            checks[0]
                .detail
                .contains("backup has (b, a), restored table has (a, b)")
        );
        let keys = apply_acceptance(&mut checks, &["column-order public.other".to_string()]);
        assert!(keys.is_empty() && checks[0].fails());
        let keys = apply_acceptance(&mut checks, &["column-order public.child".to_string()]);
        assert_eq!(keys, vec!["column-order public.child"]);
        assert!(!checks[0].fails() && !checks[0].ok);
        assert!(checks[1].fails());
    }
}
