//! The artifact as statements: split by PostgreSQL's own parser
//! (libpg_query, through `pg_query`), so that dollar-quoted bodies,
//! comments and `E''` strings never split a statement in the wrong place,
//! and checked for statements that cannot run inside the one transaction
//! the change is applied in.

use pg_query::NodeEnum;
use serde::Serialize;

/// One statement of the artifact, as it will be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// 1-based position in the artifact.
    pub number: usize,
    /// The line (1-based) of the statement's first token.
    pub line: usize,
    /// The statement's text, without the terminating `;`.
    #[serde(skip)]
    pub text: String,
    /// A short label for messages: `CREATE TABLE cutter_governance.x`.
    pub summary: String,
}

/// A statement the change may not contain, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub number: usize,
    pub line: usize,
    pub summary: String,
    pub reason: String,
}

/// The artifact could not be used as statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// Not SQL PostgreSQL parses (a psql meta-command, a typo).
    Syntax { line: usize, message: String },
    /// Statements that cannot run in one rolled-back-or-committed transaction.
    Refused(Vec<Refusal>),
    /// Nothing to run.
    Empty,
}

/// Splits `sql` into statements and refuses the ones that cannot be part
/// of one atomic transaction under the pinned role.
pub fn split(sql: &str) -> Result<Vec<Statement>, SplitError> {
    let parsed = pg_query::parse(sql).map_err(|error| syntax_error(sql, error))?;
    let mut statements = Vec::new();
    let mut refusals = Vec::new();
    for (index, raw) in parsed.protobuf.stmts.iter().enumerate() {
        let start = raw.stmt_location.max(0) as usize;
        // A length of 0 means "to the end of the input" (the last statement).
        let end = if raw.stmt_len == 0 {
            sql.len()
        } else {
            start + raw.stmt_len as usize
        };
        let end = end.min(sql.len());
        let first_token = start + leading_noise(sql.get(start..end).unwrap_or_default());
        let statement = Statement {
            number: index + 1,
            line: line_of(sql, first_token),
            text: sql[first_token..end].trim_end().to_string(),
            summary: summary(&sql[first_token..end]),
        };
        let node = raw.stmt.as_ref().and_then(|s| s.node.as_ref());
        let reason = node
            .and_then(refusal_reason)
            .or_else(|| function_refusal(&statement.text, node));
        if let Some(reason) = reason {
            refusals.push(Refusal {
                number: statement.number,
                line: statement.line,
                summary: statement.summary.clone(),
                reason,
            });
        }
        statements.push(statement);
    }
    if !refusals.is_empty() {
        return Err(SplitError::Refused(refusals));
    }
    if statements.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(statements)
}

/// Why a statement may not be part of the change, if it may not.
fn refusal_reason(node: &NodeEnum) -> Option<String> {
    const NOT_IN_A_TRANSACTION: &str = "cannot run inside a transaction block, and the change runs as one transaction: apply it separately";
    let reason = match node {
        NodeEnum::TransactionStmt(_) => {
            "transaction control: pgward runs the whole artifact as one transaction and commits or rolls it back itself; remove it"
        }
        NodeEnum::IndexStmt(index) if index.concurrent => NOT_IN_A_TRANSACTION,
        NodeEnum::DropStmt(drop) if drop.concurrent => NOT_IN_A_TRANSACTION,
        NodeEnum::ReindexStmt(reindex) if has_option(&reindex.params, "concurrently") => {
            NOT_IN_A_TRANSACTION
        }
        NodeEnum::AlterTableStmt(alter) if detaches_concurrently(alter) => NOT_IN_A_TRANSACTION,
        NodeEnum::VacuumStmt(vacuum) if vacuum.is_vacuumcmd => NOT_IN_A_TRANSACTION,
        NodeEnum::ClusterStmt(cluster) if cluster.relation.is_none() => NOT_IN_A_TRANSACTION,
        NodeEnum::AlterSystemStmt(_)
        | NodeEnum::CreatedbStmt(_)
        | NodeEnum::DropdbStmt(_)
        | NodeEnum::CreateTableSpaceStmt(_)
        | NodeEnum::DropTableSpaceStmt(_)
        | NodeEnum::CreateSubscriptionStmt(_)
        | NodeEnum::DropSubscriptionStmt(_)
        | NodeEnum::DiscardStmt(_) => NOT_IN_A_TRANSACTION,
        NodeEnum::VariableSetStmt(set) if changes_identity(&set.name) => {
            "changes the role the statements run as: the change runs as the role the package pins; set [apply-connection] instead"
        }
        NodeEnum::VariableSetStmt(set) if overrides_timeouts(set) => {
            "overrides the timeouts the package sets for every statement: set lock-timeout and statement-timeout in the package instead"
        }
        NodeEnum::VariableSetStmt(set) if changes_quoting(&set.name) => {
            "changes how the server reads string literals, so that it would split the artifact otherwise than the parser that checked it"
        }
        NodeEnum::CopyStmt(_) => {
            "COPY reads or writes files, programs or the client's stream, which no transaction rolls back (and the artifact carries no data stream); use INSERT"
        }
        _ => return None,
    };
    Some(reason.to_string())
}

fn has_option(options: &[pg_query::protobuf::Node], name: &str) -> bool {
    options.iter().any(|option| {
        matches!(&option.node, Some(NodeEnum::DefElem(def)) if def.defname.eq_ignore_ascii_case(name))
    })
}

fn detaches_concurrently(alter: &pg_query::protobuf::AlterTableStmt) -> bool {
    alter.cmds.iter().any(|cmd| {
        let Some(NodeEnum::AlterTableCmd(cmd)) = &cmd.node else {
            return false;
        };
        matches!(
            cmd.def.as_deref().and_then(|d| d.node.as_ref()),
            Some(NodeEnum::PartitionCmd(partition)) if partition.concurrent
        )
    })
}

fn overrides_timeouts(set: &pg_query::protobuf::VariableSetStmt) -> bool {
    let name = set.name.to_ascii_lowercase();
    set.kind == pg_query::protobuf::VariableSetKind::VarResetAll as i32
        || name == "lock_timeout"
        || name == "statement_timeout"
}

fn changes_quoting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "standard_conforming_strings" || name == "backslash_quote"
}

/// Functions whose effect no ROLLBACK undoes, or that change the session
/// the change runs in (so that the rehearsal would change production, or
/// the checks would not hold for what runs).
const NON_TRANSACTIONAL: &[(&str, &str)] = &[
    ("setval", "moves a sequence, which no ROLLBACK undoes"),
    (
        "nextval",
        "advances a sequence, which no ROLLBACK undoes (as a column DEFAULT it is fine)",
    ),
    (
        "set_config",
        "changes session settings (the role, how literals are read, the timeouts) that the package pins",
    ),
    (
        "pg_advisory_lock",
        "takes a session lock that outlives the transaction",
    ),
    (
        "pg_advisory_lock_shared",
        "takes a session lock that outlives the transaction",
    ),
    (
        "pg_try_advisory_lock",
        "takes a session lock that outlives the transaction",
    ),
    (
        "pg_try_advisory_lock_shared",
        "takes a session lock that outlives the transaction",
    ),
    (
        "dblink",
        "runs SQL in another session, outside this transaction",
    ),
    (
        "dblink_exec",
        "runs SQL in another session, outside this transaction",
    ),
    (
        "dblink_send_query",
        "runs SQL in another session, outside this transaction",
    ),
    (
        "dblink_connect",
        "opens another session, outside this transaction",
    ),
    (
        "pg_create_physical_replication_slot",
        "creates a replication slot, which no ROLLBACK undoes",
    ),
    (
        "pg_create_logical_replication_slot",
        "creates a replication slot, which no ROLLBACK undoes",
    ),
    (
        "pg_drop_replication_slot",
        "drops a replication slot, which no ROLLBACK undoes",
    ),
    ("pg_terminate_backend", "ends another session"),
    ("pg_cancel_backend", "cancels another session's query"),
    ("pg_reload_conf", "reloads the server's configuration"),
    ("pg_switch_wal", "switches the WAL file"),
    ("pg_create_restore_point", "writes a restore point"),
    (
        "pg_logical_emit_message",
        "can write a WAL message outside the transaction",
    ),
    ("lo_export", "writes a server file"),
    ("lo_import", "reads a server file"),
    ("pg_file_write", "writes a server file"),
    ("pg_file_unlink", "removes a server file"),
    ("pg_file_rename", "renames a server file"),
];

/// Statements whose expressions are definitions stored for later, not
/// evaluated now: `DEFAULT nextval(...)` there is fine.
fn defines_only(node: Option<&NodeEnum>) -> bool {
    matches!(
        node,
        Some(
            NodeEnum::CreateStmt(_)
                | NodeEnum::ViewStmt(_)
                | NodeEnum::CreateFunctionStmt(_)
                | NodeEnum::CreateTrigStmt(_)
                | NodeEnum::RuleStmt(_)
                | NodeEnum::CreateDomainStmt(_)
                | NodeEnum::CreatePolicyStmt(_)
                | NodeEnum::AlterPolicyStmt(_)
        )
    )
}

/// A call of a [`NON_TRANSACTIONAL`] function anywhere in the statement,
/// found by PostgreSQL's own scanner (a name, then `(`). Calls inside a
/// function body or a `DO` block are string constants to the scanner and
/// cannot be seen: README says so.
fn function_refusal(text: &str, node: Option<&NodeEnum>) -> Option<String> {
    let tokens = pg_query::scan(text).ok()?.tokens;
    for pair in tokens.windows(2) {
        if pair[1].token != pg_query::protobuf::Token::Ascii40 as i32 {
            continue;
        }
        let word = text.get(pair[0].start as usize..pair[0].end as usize)?;
        let name = match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
            Some(quoted) => quoted.to_string(),
            None => word.to_ascii_lowercase(),
        };
        if name == "nextval" && defines_only(node) {
            continue;
        }
        if let Some((_, why)) = NON_TRANSACTIONAL.iter().find(|(f, _)| *f == name) {
            return Some(format!("calls {name}(), which {why}"));
        }
    }
    None
}

fn changes_identity(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "role" || name == "session_authorization"
}

/// The byte length of the whitespace and comments before a statement's
/// first token (pg_query's locations start right after the previous `;`).
fn leading_noise(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut at = 0;
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if bytes[at..].starts_with(b"--") {
            while at < bytes.len() && bytes[at] != b'\n' {
                at += 1;
            }
        } else if bytes[at..].starts_with(b"/*") {
            // Block comments nest in PostgreSQL.
            let mut depth = 0usize;
            while at < bytes.len() {
                if bytes[at..].starts_with(b"/*") {
                    depth += 1;
                    at += 2;
                } else if bytes[at..].starts_with(b"*/") {
                    depth -= 1;
                    at += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    at += 1;
                }
            }
        } else {
            return at;
        }
    }
}

fn line_of(sql: &str, offset: usize) -> usize {
    sql.as_bytes()[..offset.min(sql.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `CREATE TABLE cutter_governance.x (...)` → `CREATE TABLE cutter_governance.x`:
/// the tokens before the first parenthesis, string constants shown as
/// `'…'` (a password or data never reaches a report), at most 60 characters.
fn summary(text: &str) -> String {
    use pg_query::protobuf::Token;
    let Ok(scanned) = pg_query::scan(text) else {
        return String::new();
    };
    let mut head = String::new();
    for (index, token) in scanned.tokens.iter().enumerate() {
        let kind = token.token;
        if kind == Token::Ascii40 as i32 && index > 0 || kind == Token::Ascii59 as i32 {
            break;
        }
        let word = if [Token::Sconst, Token::Usconst, Token::Bconst, Token::Xconst]
            .iter()
            .any(|t| *t as i32 == kind)
        {
            "'…'"
        } else {
            text.get(token.start as usize..token.end as usize)
                .unwrap_or_default()
        };
        let joins = kind == Token::Ascii46 as i32 || head.ends_with('.') || head.is_empty();
        if !joins {
            head.push(' ');
        }
        head.push_str(word);
        if head.chars().count() > 60 {
            break;
        }
    }
    if head.chars().count() > 60 {
        format!("{}…", head.chars().take(59).collect::<String>())
    } else {
        head
    }
}

/// The line a syntax error is on. libpg_query does not expose the error's
/// position, so the artifact is split by the scanner (which needs no
/// grammar), the first piece that does not parse is the statement at
/// fault, and the quoted token of the message is looked for from its start.
fn syntax_error(sql: &str, error: pg_query::Error) -> SplitError {
    let message = match error {
        pg_query::Error::Parse(message) | pg_query::Error::Split(message) => message,
        other => other.to_string(),
    };
    // The scanner leaves out a last piece it cannot close (an open
    // parenthesis): then the fault is after the last piece it gave.
    let mut statement_start = 0;
    for piece in pg_query::split_with_scanner(sql).unwrap_or_default() {
        let start = piece.as_ptr() as usize - sql.as_ptr() as usize;
        if pg_query::parse(piece).is_err() {
            statement_start = start;
            break;
        }
        statement_start = start + piece.len();
        if sql[statement_start..].starts_with(';') {
            statement_start += 1;
        }
    }
    let statement_start = statement_start + leading_noise(&sql[statement_start..]);
    let near = message
        .split_once("at or near \"")
        .and_then(|(_, rest)| rest.rsplit_once('"'))
        .and_then(|(near, _)| sql[statement_start..].find(near))
        .map(|offset| statement_start + offset);
    let line = line_of(sql, near.unwrap_or(statement_start));
    SplitError::Syntax { line, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals(sql: &str) -> Vec<Refusal> {
        match split(sql) {
            Err(SplitError::Refused(refusals)) => refusals,
            other => panic!("expected refusals, got {other:?}"),
        }
    }

    #[test]
    fn dollar_quotes_comments_and_escape_strings_do_not_split() {
        let sql = "-- header; not a statement\n\
                   CREATE TABLE a (id int PRIMARY KEY, note text DEFAULT E'x\\';y');\n\
                   /* a; /* nested; */ comment */\n\
                   CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\n\
                   BEGIN\n  PERFORM 1; RETURN 2;\nEND;\n$body$;\n\
                   INSERT INTO a VALUES (1, 'semi;colon')";
        let statements = split(sql).unwrap();
        assert_eq!(statements.len(), 3);
        assert_eq!(statements[0].line, 2);
        assert_eq!(statements[0].summary, "CREATE TABLE a");
        assert_eq!(statements[1].line, 4);
        assert!(statements[1].text.contains("PERFORM 1; RETURN 2;"));
        assert!(statements[1].text.ends_with("$body$"));
        assert_eq!(statements[2].line, 9);
        assert_eq!(statements[2].text, "INSERT INTO a VALUES (1, 'semi;colon')");
    }

    #[test]
    fn transaction_control_and_non_transactional_statements_are_refused_by_line() {
        let sql = "CREATE TABLE a (id int);\n\
                   CREATE INDEX CONCURRENTLY a_id ON a (id);\n\
                   COMMIT;\n\
                   VACUUM a;\n\
                   ANALYZE a;\n\
                   SET ROLE postgres;\n\
                   SET LOCAL work_mem = '64MB';\n\
                   DROP INDEX CONCURRENTLY a_id;\n\
                   REINDEX (CONCURRENTLY) TABLE a;\n\
                   ALTER SYSTEM SET work_mem = '1MB';\n\
                   ALTER TABLE p DETACH PARTITION c CONCURRENTLY;\n\
                   COPY a FROM STDIN;\n\
                   SET lock_timeout = 0;\n\
                   RESET ALL;";
        let lines: Vec<(usize, String)> = refusals(sql)
            .into_iter()
            .map(|r| (r.line, r.summary))
            .collect();
        assert_eq!(
            lines,
            vec![
                (2, "CREATE INDEX CONCURRENTLY a_id ON a".to_string()),
                (3, "COMMIT".to_string()),
                (4, "VACUUM a".to_string()),
                (6, "SET ROLE postgres".to_string()),
                (8, "DROP INDEX CONCURRENTLY a_id".to_string()),
                (9, "REINDEX".to_string()),
                (10, "ALTER SYSTEM SET work_mem = '…'".to_string()),
                (
                    11,
                    "ALTER TABLE p DETACH PARTITION c CONCURRENTLY".to_string()
                ),
                (12, "COPY a FROM STDIN".to_string()),
                (13, "SET lock_timeout = 0".to_string()),
                (14, "RESET ALL".to_string()),
            ]
        );
    }

    #[test]
    fn effects_no_rollback_undoes_are_refused() {
        let sql = "CREATE TABLE a (id bigint DEFAULT nextval('s'));\n\
                   SELECT setval('s', 1);\n\
                   SELECT pg_catalog.set_config('role', 'postgres', false);\n\
                   INSERT INTO a VALUES (nextval('s'));\n\
                   SET standard_conforming_strings = off;\n\
                   COPY a TO '/tmp/a';\n\
                   SELECT \"pg_advisory_lock\"(1);\n\
                   ALTER ROLE app PASSWORD 'hunter2';";
        let refused: Vec<(usize, String)> = refusals(sql)
            .into_iter()
            .map(|r| (r.line, r.reason.split(',').next().unwrap().to_string()))
            .collect();
        assert_eq!(
            refused.iter().map(|(line, _)| *line).collect::<Vec<_>>(),
            [2, 3, 4, 5, 6, 7]
        );
        assert!(refused[0].1.starts_with("calls setval()"), "{refused:?}");
        // The password is not in any summary.
        let sql = "ALTER ROLE app PASSWORD 'hunter2';\nSELECT setval('s', 1);";
        let summaries: Vec<String> = refusals(sql).into_iter().map(|r| r.summary).collect();
        assert_eq!(summaries, ["SELECT setval"]);
        let statements = split("ALTER ROLE app PASSWORD 'hunter2'").unwrap();
        assert_eq!(statements[0].summary, "ALTER ROLE app PASSWORD '…'");
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let sql = "CREATE TABLE a (id int);\n\\set ON_ERROR_STOP 1\nCREATE TABLE b (id int);";
        match split(sql) {
            Err(SplitError::Syntax { line, message }) => {
                assert_eq!(line, 2, "{message}");
                assert!(message.contains("syntax error"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match split("CREATE TABLE a (id int);\nSELECT (1;") {
            Err(SplitError::Syntax { line, .. }) => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(split("-- nothing\n"), Err(SplitError::Empty));
    }
}
