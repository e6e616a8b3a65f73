//! What pg_restore said when it failed, told whole: every error with the
//! server's lines that explain it (LINE, DETAIL, HINT, QUERY, CONTEXT) and
//! the statement it ran, the first named, the rest counted, within bounds.
//!
//! pg_restore writes an error as a block:
//!
//! ```text
//! pg_restore: from TOC entry 215; 1259 16390 TABLE places alice
//! pg_restore: error: could not execute query: ERROR:  function ll_to_earth(...) does not exist
//! LINE 1: ...
//! CONTEXT:  SQL function "earth_box" during inlining
//! Command was: CREATE INDEX ...
//! ```
//!
//! and, when it went on after errors, ends with `pg_restore: warning:
//! errors ignored on restore: N`.

/// At most this many errors are told in full; the rest are counted (the
/// message goes into notifications too).
const MAX_ERRORS: usize = 5;
/// At most this many explaining lines per error.
const MAX_LINES: usize = 6;
/// Longer lines are cut.
const MAX_LINE_CHARS: usize = 240;

/// Words after which PostgreSQL quotes a name, not a value.
const NAMED_BY: &[&str] = &[
    "type ",
    "relation ",
    "table ",
    "column ",
    "constraint ",
    "function ",
    "schema ",
    "index ",
    "extension ",
    "role ",
    "sequence ",
    "view ",
    "database ",
    "operator ",
    "trigger ",
    "domain ",
    "collation ",
    "language ",
    "method ",
    "policy ",
    "rule ",
];

/// Server lines that can explain an error without quoting a row: which
/// function it happened in.
const CONTEXT_WITHOUT_DATA: &[&str] = &["CONTEXT:  SQL function ", "CONTEXT:  PL/pgSQL function "];

/// One error and the lines that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorBlock {
    /// `from TOC entry 215; 1259 16390 TABLE places alice`, when given.
    entry: Option<String>,
    /// The error, without `pg_restore: error: `.
    message: String,
    /// LINE, DETAIL, HINT, QUERY, CONTEXT and the first line of `Command was:`.
    explained_by: Vec<String>,
}

/// pg_restore's failure as one line: how many errors, the first with its
/// explanation, then the others. With `redact` (an encrypted backup), what
/// can carry row values is left out: DETAIL, HINT and QUERY lines, CONTEXT
/// lines other than the function an error happened in (and any that
/// mentions a COPY), and an error's text from its first quoted value that
/// is not a name. (Unquoted values in an error's text, such as a
/// function's own RAISE message, cannot be told from the rest.)
pub(crate) fn describe(diagnostics: &str, redact: bool) -> Option<String> {
    let blocks = parse(diagnostics);
    let first = blocks.first()?;
    let mut text = match blocks.len() {
        1 => "1 error: ".to_string(),
        n => format!("{n} errors; the first: "),
    };
    text.push_str(&render(first, redact));
    let others: Vec<String> = blocks
        .iter()
        .skip(1)
        .take(MAX_ERRORS - 1)
        .map(|b| render(b, redact))
        .collect();
    if !others.is_empty() {
        text.push_str(" || then: ");
        text.push_str(&others.join(" || "));
    }
    let untold = blocks.len() - 1 - others.len();
    if untold > 0 {
        text.push_str(&format!(" || and {untold} more"));
    }
    // A parallel pg_restore can count an error more than once, or one
    // whose message went elsewhere: its own count is told as it is.
    if let Some(counted) = ignored_count(diagnostics).filter(|n| *n != blocks.len()) {
        text.push_str(&format!(" || pg_restore counted {counted} errors"));
    }
    Some(text)
}

fn render(block: &ErrorBlock, redact: bool) -> String {
    let message = if redact {
        without_quoted_values(&block.message)
    } else {
        block.message.clone()
    };
    let mut parts = vec![cut(&message)];
    for line in &block.explained_by {
        let may_quote_data = line.starts_with("DETAIL:")
            || line.starts_with("HINT:")
            || line.starts_with("QUERY:")
            || (line.starts_with("CONTEXT:")
                && (!CONTEXT_WITHOUT_DATA.iter().any(|p| line.starts_with(p))
                    || line.contains("COPY")));
        if redact && may_quote_data {
            continue;
        }
        parts.push(cut(line));
    }
    if let Some(entry) = &block.entry {
        parts.push(format!("({entry})"));
    }
    parts.join(" | ")
}

/// `invalid input syntax for type integer: "x1"` -> `... integer: "…`:
/// the text is cut at the first quoted value; quoted names before it
/// (`COPY failed for table "t"`, `type "earth"`) stay. A value may hold
/// quotes of its own (`"{"New York",Paris}"`), so nothing after it is kept.
fn without_quoted_values(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let is_name = NAMED_BY.iter().any(|w| out.ends_with(w));
        match after.find('"') {
            Some(end) if is_name => {
                out.push('"');
                out.push_str(&after[..end]);
                out.push('"');
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("\"…");
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

fn cut(line: &str) -> String {
    let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

fn parse(diagnostics: &str) -> Vec<ErrorBlock> {
    let mut blocks: Vec<ErrorBlock> = Vec::new();
    let mut entry: Option<String> = None;
    // Inside a block: lines that are not the tool's own belong to it; after
    // `Command was:` the statement's further lines are skipped.
    let mut open = false;
    let mut in_command = false;
    for line in diagnostics.lines() {
        let line = line.trim_end();
        if let Some(rest) = tool_line(line) {
            open = false;
            in_command = false;
            if let Some(from) = rest.strip_prefix("from TOC entry") {
                entry = Some(format!("TOC entry{from}"));
            } else if let Some(message) = rest.strip_prefix("error: ") {
                blocks.push(ErrorBlock {
                    entry: entry.take(),
                    message: message.to_string(),
                    explained_by: Vec::new(),
                });
                open = true;
            } else if let Some(more) = rest
                .strip_prefix("detail: ")
                .or_else(|| rest.strip_prefix("hint: "))
                && let Some(block) = blocks.last_mut()
                && block.explained_by.len() < MAX_LINES
            {
                let label = if rest.starts_with("detail") {
                    "DETAIL"
                } else {
                    "HINT"
                };
                block.explained_by.push(format!("{label}: {more}"));
                open = true;
            }
            continue;
        }
        let Some(block) = blocks.last_mut().filter(|_| open) else {
            continue;
        };
        let explaining = [
            "LINE ",
            "DETAIL:",
            "HINT:",
            "QUERY:",
            "CONTEXT:",
            "Command was:",
        ]
        .iter()
        .any(|p| line.starts_with(p));
        if explaining {
            in_command = line.starts_with("Command was:");
            if block.explained_by.len() < MAX_LINES {
                block.explained_by.push(line.to_string());
            }
        } else if !in_command && !line.trim_start().starts_with('^') && !line.trim().is_empty() {
            // The rest of a multi-line server message.
            if let Some(last) = block.explained_by.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            } else {
                block.message.push(' ');
                block.message.push_str(line.trim());
            }
        }
    }
    blocks
}

/// `pg_restore: error: ...` -> `error: ...`; None for other lines.
fn tool_line(line: &str) -> Option<&str> {
    let (tool, rest) = line.split_once(": ")?;
    (tool == "pg_restore" || tool == "pg_dump").then_some(rest)
}

/// `pg_restore: warning: errors ignored on restore: 3` -> 3.
fn ignored_count(diagnostics: &str) -> Option<usize> {
    diagnostics
        .lines()
        .filter_map(|l| l.split_once("errors ignored on restore: "))
        .filter_map(|(_, n)| n.trim().parse().ok())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STDERR: &str = "pg_restore: creating TABLE \"public.t\"
pg_restore: from TOC entry 215; 1259 16390 TABLE places alice
pg_restore: error: could not execute query: ERROR:  type \"public.citext\" does not exist
LINE 3:     name public.citext
                 ^
Command was: CREATE TABLE public.places (
    id integer,
    name public.citext
);
pg_restore: from TOC entry 3301; 1259 16400 INDEX near alice
pg_restore: error: could not execute query: ERROR:  function ll_to_earth(double precision, double precision) does not exist
LINE 1: SELECT cube(cube(cube(public.ll_to_earth($1, $2)), public.ea...
                                  ^
HINT:  No function matches the given name and argument types.
QUERY:  SELECT cube(cube(cube(public.ll_to_earth($1, $2)), public.earth()))
CONTEXT:  SQL function \"earth_box\" during inlining
Command was: CREATE INDEX near ON public.places USING gist (public.earth_box(...));
pg_restore: from TOC entry 3302; 0 16390 TABLE DATA secrets alice
pg_restore: error: COPY failed for table \"secrets\": ERROR:  invalid input syntax for type integer: \"4111-1111\"
CONTEXT:  COPY secrets, line 1, column id: \"4111-1111\"
pg_restore: warning: errors ignored on restore: 3
";

    #[test]
    fn every_error_is_kept_with_what_explains_it() {
        let text = describe(STDERR, false).unwrap();
        assert!(
            text.starts_with("3 errors; the first: could not execute query: ERROR: type \"public.citext\" does not exist | LINE 3: name public.citext | Command was: CREATE TABLE public.places ( | (TOC entry 215; 1259 16390 TABLE places alice)"),
            "{text}"
        );
        assert!(
            text.contains("CONTEXT: SQL function \"earth_box\" during inlining"),
            "{text}"
        );
        assert!(text.contains("QUERY: SELECT cube"), "{text}");
        assert!(text.contains("4111-1111"), "{text}");
        assert!(!text.contains("name public.citext\n"), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn an_encrypted_backups_row_values_are_left_out() {
        let text = describe(STDERR, true).unwrap();
        assert!(!text.contains("4111"), "{text}");
        assert!(
            text.contains("COPY failed for table \"secrets\": ERROR: invalid input syntax for type integer: \"…"),
            "{text}"
        );
        assert!(text.contains("during inlining"), "{text}");
        assert!(
            text.contains("type \"public.citext\" does not exist"),
            "{text}"
        );

        let stderr = "pg_restore: error: could not execute query: ERROR:  value \"99999999999\" is out of range for type integer
HINT:  \"0101000020E6\" <-- parse error at position 12
CONTEXT:  PL/pgSQL function public.check_row() line 3 at RAISE
COPY accounts, line 7: \"7\tsecret@example.org\"
pg_restore: error: could not execute query: ERROR:  invalid input syntax for type json
DETAIL:  Token \"secret\" is invalid.
CONTEXT:  JSON data, line 1: {\"card\": secret...
";
        let text = describe(stderr, true).unwrap();
        for leak in ["99999999999", "0101000020E6", "secret", "card"] {
            assert!(!text.contains(leak), "{leak}: {text}");
        }
        assert!(text.contains("ERROR: value \"…"), "{text}");
        let text = describe(stderr, false).unwrap();
        assert!(text.contains("secret@example.org"), "{text}");

        // A value with quotes of its own, and a statement's literals.
        let stderr = "pg_restore: error: could not execute query: ERROR:  malformed array literal: \"{\"New York\",Paris}\"
QUERY:  INSERT INTO t VALUES ('Berlin')
CONTEXT:  SQL statement \"INSERT INTO t VALUES ('Berlin')\"
";
        let text = describe(stderr, true).unwrap();
        for leak in ["New York", "Paris", "Berlin"] {
            assert!(!text.contains(leak), "{leak}: {text}");
        }
    }

    #[test]
    fn many_errors_are_counted_beyond_the_bound() {
        let mut stderr = String::new();
        for i in 0..25 {
            stderr.push_str(&format!(
                "pg_restore: error: could not execute query: ERROR:  e{i}\n"
            ));
        }
        stderr.push_str("pg_restore: warning: errors ignored on restore: 40\n");
        let text = describe(&stderr, false).unwrap();
        assert!(
            text.starts_with("25 errors; the first: could not execute query: ERROR: e0"),
            "{text}"
        );
        assert!(
            text.contains("ERROR: e4") && !text.contains("ERROR: e5"),
            "{text}"
        );
        assert!(
            text.ends_with("|| and 20 more || pg_restore counted 40 errors"),
            "{text}"
        );
        assert_eq!(describe("pg_restore: creating TABLE x\n", false), None);
    }
}
