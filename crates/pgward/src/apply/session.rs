//! Running the artifact's statements inside a transaction the caller
//! owns, one at a time, so that a failure names its statement; and, while
//! they run, watching from a second session for whoever blocks them, so
//! that a lock timeout names the blocker instead of only "canceling
//! statement due to lock timeout".

use super::statements::Statement;
use crate::connection::ConnectionTarget;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A session that blocked one of the change's statements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    pub pid: i32,
    /// Unknown when the apply role may not see other roles' sessions.
    pub role: Option<String>,
    pub application: Option<String>,
    pub state: Option<String>,
    /// When the blocker's current query (or transaction, when idle in one) started.
    pub query_start: Option<String>,
    pub transaction_start: Option<String>,
}

/// Why a statement of the change did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementFailure {
    pub number: usize,
    /// The line of the error in the artifact (the statement's first line
    /// when the server gave no position).
    pub line: usize,
    pub summary: String,
    pub sqlstate: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Sessions seen blocking the statement while it waited.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blockers: Vec<Blocker>,
}

impl StatementFailure {
    pub fn is_lock_timeout(&self) -> bool {
        self.sqlstate == "55P03"
    }

    pub fn is_permission_denied(&self) -> bool {
        self.sqlstate == "42501"
    }

    /// `statement 7 (INSERT INTO app.x, line 31): SQLSTATE 23505: duplicate key ...`
    pub fn describe(&self) -> String {
        let mut text = format!(
            "statement {} ({}, line {}): {}",
            self.number, self.summary, self.line, self.message
        );
        if self.is_lock_timeout() {
            if self.blockers.is_empty() {
                text.push_str(" (no blocking session was seen)");
            } else {
                let blockers: Vec<String> = self
                    .blockers
                    .iter()
                    .map(|b| {
                        format!(
                            "pid {} (role {}, application {}, {}{})",
                            b.pid,
                            b.role.as_deref().unwrap_or("not visible"),
                            b.application
                                .as_deref()
                                .filter(|a| !a.is_empty())
                                .unwrap_or("unnamed"),
                            b.state.as_deref().unwrap_or("state not visible"),
                            b.query_start
                                .as_deref()
                                .map(|s| format!(", query started {s}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                text.push_str(&format!("; blocked by {}", blockers.join(", ")));
            }
        } else {
            text.push_str(&format!(" (SQLSTATE {})", self.sqlstate));
        }
        text
    }
}

/// Runs `statements` in order in the transaction already open on
/// `client`, under the given timeouts; stops at the first failure.
pub fn run_statements(
    client: &mut postgres::Client,
    target: &ConnectionTarget,
    statements: &[Statement],
    lock_timeout_ms: u64,
    statement_timeout_ms: u64,
) -> Result<(), Box<StatementFailure>> {
    let setup = format!(
        "SET LOCAL lock_timeout = '{lock_timeout_ms}ms'; SET LOCAL statement_timeout = '{statement_timeout_ms}ms'"
    );
    if let Err(error) = client.batch_execute(&setup) {
        return Err(Box::new(failure_of(&statements[0], error, Vec::new())));
    }
    let pid: i32 = match client.query_one("SELECT pg_catalog.pg_backend_pid()", &[]) {
        Ok(row) => row.get(0),
        Err(error) => return Err(Box::new(failure_of(&statements[0], error, Vec::new()))),
    };
    let watch = BlockerWatch::start(target, pid);
    for statement in statements {
        if let Some(signal) = crate::interrupt::pending() {
            return Err(Box::new(StatementFailure {
                number: statement.number,
                line: statement.line,
                summary: statement.summary.clone(),
                sqlstate: "57014".into(),
                message: format!("interrupted by signal {signal} before this statement ran"),
                detail: None,
                hint: None,
                blockers: Vec::new(),
            }));
        }
        watch.now_running(statement.number);
        // The extended protocol runs exactly one statement: a server that
        // read the text otherwise than the parser that checked it (say, a
        // literal ending early) errs instead of running a second one.
        if let Err(error) = client.execute(statement.text.as_str(), &[]) {
            let blockers = watch.seen(statement.number);
            return Err(Box::new(failure_of(statement, error, blockers)));
        }
    }
    Ok(())
}

fn failure_of(
    statement: &Statement,
    error: postgres::Error,
    blockers: Vec<Blocker>,
) -> StatementFailure {
    let Some(db) = error.as_db_error() else {
        return StatementFailure {
            number: statement.number,
            line: statement.line,
            summary: statement.summary.clone(),
            sqlstate: "08006".into(),
            message: format!("the session failed: {error}"),
            detail: None,
            hint: None,
            blockers,
        };
    };
    let line = match db.position() {
        Some(postgres::error::ErrorPosition::Original(position)) => {
            let before: String = statement
                .text
                .chars()
                .take((*position as usize).saturating_sub(1))
                .collect();
            statement.line + before.matches('\n').count()
        }
        _ => statement.line,
    };
    StatementFailure {
        number: statement.number,
        line,
        summary: statement.summary.clone(),
        sqlstate: db.code().code().to_string(),
        message: db.message().to_string(),
        detail: db.detail().map(str::to_string),
        hint: db.hint().map(str::to_string),
        blockers,
    }
}

/// A second session that polls `pg_blocking_pids` of the change's
/// session while its statements run, and cancels the running statement
/// when a signal arrives (a role may cancel its own sessions). When it
/// cannot connect, a lock timeout is reported without its blocker and a
/// signal takes effect between statements.
struct BlockerWatch {
    stop: Arc<AtomicBool>,
    /// The statement running now (its number), and the blockers seen
    /// while it ran, by the statement they were seen for.
    running: Arc<AtomicUsize>,
    seen: Arc<Mutex<(usize, Vec<Blocker>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const POLL: Duration = Duration::from_millis(50);

const BLOCKERS: &str = "SELECT a.pid, a.usename::text, a.application_name, a.state, \
    pg_catalog.to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
    pg_catalog.to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
    FROM pg_catalog.pg_stat_activity a \
    WHERE a.pid = ANY (pg_catalog.pg_blocking_pids($1)) ORDER BY a.pid";

impl BlockerWatch {
    fn start(target: &ConnectionTarget, pid: i32) -> BlockerWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new((0, Vec::new())));
        let thread = target.connect().ok().map(|mut client| {
            let (stop, running, seen) = (stop.clone(), running.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Again at every poll: a cancel that reached the
                    // session between two statements cancelled nothing.
                    if crate::interrupt::pending().is_some() {
                        let _ = client.execute("SELECT pg_catalog.pg_cancel_backend($1)", &[&pid]);
                    }
                    let statement = running.load(Ordering::SeqCst);
                    let Ok(rows) = client.query(BLOCKERS, &[&pid]) else {
                        return;
                    };
                    if !rows.is_empty() {
                        let blockers = rows
                            .iter()
                            .map(|row| Blocker {
                                pid: row.get(0),
                                role: row.get(1),
                                application: row.get(2),
                                state: row.get(3),
                                query_start: row.get(4),
                                transaction_start: row.get(5),
                            })
                            .collect();
                        *seen.lock().expect("not poisoned") = (statement, blockers);
                    }
                    std::thread::sleep(POLL);
                }
            })
        });
        BlockerWatch {
            stop,
            running,
            seen,
            thread,
        }
    }

    fn now_running(&self, statement: usize) {
        self.running.store(statement, Ordering::SeqCst);
    }

    /// The blockers last seen while `statement` ran.
    fn seen(&self, statement: usize) -> Vec<Blocker> {
        let seen = self.seen.lock().expect("not poisoned");
        if seen.0 == statement {
            seen.1.clone()
        } else {
            Vec::new()
        }
    }
}

impl Drop for BlockerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
