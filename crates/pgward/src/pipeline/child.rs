//! A child process's stdout as the pipeline's source.
//!
//! The rules (after ripgrep's `process.rs`, made stricter): the program is
//! run directly, never through a shell; stderr is drained on its own thread,
//! because a child blocked on a full stderr pipe would never finish writing
//! stdout and both sides would wait forever; and success needs both the end
//! of stdout *and* exit status 0, so a pg_dump that was killed, or that closed
//! its output early, never passes.
//!
//! The child gets its own process group and is always signalled as a group:
//! pg_dump often runs behind a wrapper (`docker exec`, a script), and a
//! grandchild that survived its parent would keep the pipe open and leave
//! pgward waiting for an end of stream that never comes.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Keep at most this much of a child's stderr (its last words matter most).
const STDERR_LIMIT: usize = 64 * 1024;
/// How long a read waits for data before handing control back to the
/// caller (which checks for signals), as `ErrorKind::Interrupted`.
const POLL_INTERVAL_MS: i32 = 250;
/// How long after the child exited its pipes may stay open (held by a
/// descendant that escaped the process group) before pgward gives up on them.
const ORPHANED_PIPE_GRACE: Duration = Duration::from_secs(5);
/// Requested capacity of the pipe from the child (1 MiB, Linux's default maximum).
const PIPE_SIZE: libc::c_int = 1 << 20;
/// How long a terminated child may take before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);

/// How a child ended when it did not succeed.
#[derive(Debug)]
pub struct ChildFailure {
    pub status: ExitStatus,
    /// The child's stderr, trimmed, possibly shortened from the front.
    pub stderr: String,
    /// Its diagnostics: stderr without the progress lines of `--verbose`
    /// (see [`is_progress`]), from the start, shortened at the end. A long
    /// run's errors stay here when its chatter pushed them out of `stderr`.
    pub diagnostics: String,
}

/// Whether a line of a PostgreSQL client tool's stderr reports progress
/// (`pg_restore: creating TABLE ...`, `pg_restore: finished item 12 ...`)
/// rather than a diagnostic: the tool's name and a lower-case word, but not
/// `error:`, `warning:`, `detail:`, `hint:` nor the `from TOC entry` that
/// precedes an error. Server message lines (`CONTEXT:  ...`, `LINE 3: ...`)
/// and SQL are diagnostics.
pub fn is_progress(line: &str) -> bool {
    let Some((tool, rest)) = line.split_once(": ") else {
        return false;
    };
    let tool_like = !tool.is_empty()
        && tool
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    tool_like
        && !["error:", "warning:", "detail:", "hint:", "from TOC entry"]
            .iter()
            .any(|p| rest.starts_with(p))
}

/// What the stderr thread hands back: the tail, and the diagnostics.
struct Captured {
    tail: String,
    diagnostics: String,
}

impl ChildFailure {
    /// `exited with status 1` or `was killed by signal 9 (SIGKILL)`.
    pub fn describe_status(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => {
                format!("was killed by signal {signal} ({})", signal_name(signal))
            }
            _ => "ended abnormally".to_string(),
        }
    }

    /// The most telling line of stderr: the first `error:` line, else the last line.
    pub fn key_line(&self) -> Option<&str> {
        let lines = || self.stderr.lines().map(str::trim).filter(|l| !l.is_empty());
        lines()
            .find(|l| l.contains("error:") || l.contains("FATAL:") || l.contains("ERROR:"))
            .or_else(|| lines().next_back())
    }
}

/// Sends `signal` to the process group led by `pid` (our child).
pub fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) on the group of a child we started with process_group(0).
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        _ => "signal",
    }
}

/// A running child whose stdout is read as a stream.
///
/// Reads wait at most a quarter of a second and then return
/// `ErrorKind::Interrupted` (which `std::io` helpers retry), so a caller's
/// loop regains control while the child is silent. If the child has exited
/// but its stdout stays open (a descendant holds it), reads fail after a
/// grace period instead of waiting forever.
pub struct ChildSource {
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Option<Receiver<Captured>>,
    exited_at: Option<Instant>,
}

impl ChildSource {
    /// Starts `command` with stdin closed and stdout/stderr captured.
    pub fn spawn(command: Command) -> io::Result<Self> {
        Self::start(command, Stdio::null(), None).map(|(source, _)| source)
    }

    /// Starts `command` with stdout/stderr captured and returns its stdin
    /// for the caller to feed (pg_restore reading an archive).
    pub fn spawn_fed(command: Command) -> io::Result<(Self, ChildStdin)> {
        let (source, stdin) = Self::start(command, Stdio::piped(), None)?;
        Ok((source, stdin.expect("stdin was piped")))
    }

    /// Like [`ChildSource::spawn`], and every line the child writes to
    /// stderr is also sent, as it comes, to the returned receiver (which
    /// ends when stderr closes): progress reports such as pg_restore's
    /// `--verbose` lines.
    pub fn spawn_reporting(command: Command) -> io::Result<(Self, Receiver<String>)> {
        let (lines, receiver) = std::sync::mpsc::channel();
        let (source, _) = Self::start(command, Stdio::null(), Some(lines))?;
        Ok((source, receiver))
    }

    fn start(
        mut command: Command,
        stdin: Stdio,
        lines: Option<std::sync::mpsc::Sender<String>>,
    ) -> io::Result<(Self, Option<ChildStdin>)> {
        use std::os::unix::process::CommandExt;
        command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        if let Some(pipe) = &stdout {
            // A larger pipe lets the producer write ahead while we compress:
            // fewer context switches and syscalls on a busy 2-core host.
            // Best effort; the kernel caps it at fs.pipe-max-size.
            // SAFETY: fcntl on a descriptor we own.
            unsafe {
                libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
            }
        }
        let mut stderr = child.stderr.take().expect("stderr was piped");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("child-stderr".into())
            .spawn(move || {
                let mut kept = Vec::new();
                let mut diagnostics = String::new();
                let mut partial_line = Vec::new();
                let mut buffer = [0u8; 8192];
                loop {
                    match stderr.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(n) => {
                            partial_line.extend_from_slice(&buffer[..n]);
                            while let Some(end) = partial_line.iter().position(|&b| b == b'\n') {
                                let line: Vec<u8> = partial_line.drain(..=end).collect();
                                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                                if !is_progress(&line) && diagnostics.len() < STDERR_LIMIT {
                                    diagnostics.push_str(&line);
                                    diagnostics.push('\n');
                                }
                                if let Some(lines) = &lines {
                                    let _ = lines.send(line);
                                }
                            }
                            // A line without end is cut, not kept whole.
                            if partial_line.len() > STDERR_LIMIT {
                                partial_line.drain(..partial_line.len() - STDERR_LIMIT);
                            }
                            kept.extend_from_slice(&buffer[..n]);
                            if kept.len() > STDERR_LIMIT {
                                kept.drain(..kept.len() - STDERR_LIMIT);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                if !partial_line.is_empty() && diagnostics.len() < STDERR_LIMIT {
                    diagnostics.push_str(&String::from_utf8_lossy(&partial_line));
                }
                let _ = sender.send(Captured {
                    tail: String::from_utf8_lossy(&kept).trim().to_string(),
                    diagnostics: diagnostics.trim().to_string(),
                });
            })?;
        let source = ChildSource {
            child,
            stdout,
            stderr: Some(receiver),
            exited_at: None,
        };
        Ok((source, stdin))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the child's process group: SIGTERM, then SIGKILL if it is
    /// still running after a grace period.
    pub fn terminate(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        signal_group(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + TERMINATE_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(self.child.id(), libc::SIGKILL);
    }

    /// Waits for the child. Closes our end of stdout first so a child that is
    /// still writing gets EPIPE instead of blocking forever.
    pub fn finish(mut self) -> Result<String, ChildFailure> {
        drop(self.stdout.take());
        let status = self.child.wait();
        let captured = match self
            .stderr
            .take()
            .map(|r| r.recv_timeout(ORPHANED_PIPE_GRACE))
        {
            Some(Ok(captured)) => captured,
            Some(Err(RecvTimeoutError::Timeout)) => {
                let text = "(stderr is still held open by another process after the child exited)";
                Captured {
                    tail: text.to_string(),
                    diagnostics: text.to_string(),
                }
            }
            _ => Captured {
                tail: String::new(),
                diagnostics: String::new(),
            },
        };
        match status {
            Ok(status) if status.success() => Ok(captured.tail),
            Ok(status) => Err(ChildFailure {
                status,
                stderr: captured.tail,
                diagnostics: captured.diagnostics,
            }),
            Err(e) => {
                let text = format!("could not wait for the child process: {e}");
                Err(ChildFailure {
                    status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
                    stderr: text.clone(),
                    diagnostics: text,
                })
            }
        }
    }
}

impl Read for ChildSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(stdout) = &mut self.stdout else {
            return Ok(0);
        };
        let mut fd = libc::pollfd {
            fd: stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a descriptor we own.
        let ready = unsafe { libc::poll(&mut fd, 1, POLL_INTERVAL_MS) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if ready > 0 {
            return stdout.read(buf);
        }
        if self.exited_at.is_none() && matches!(self.child.try_wait(), Ok(Some(_))) {
            self.exited_at = Some(Instant::now());
        }
        if self
            .exited_at
            .is_some_and(|t| t.elapsed() > ORPHANED_PIPE_GRACE)
        {
            return Err(io::Error::other(
                "the child exited but its output is still held open by another process",
            ));
        }
        Err(io::ErrorKind::Interrupted.into())
    }
}

impl Drop for ChildSource {
    fn drop(&mut self) {
        // Never leave a child behind: an abandoned pg_dump would hold its
        // snapshot and locks on the server.
        if self.stderr.is_some() {
            self.terminate();
            drop(self.stdout.take());
            let _ = self.child.wait();
        }
    }
}

/// Runs a short command to completion within `timeout` and returns its
/// stdout (for `pg_dump --version` and the like).
pub fn run_to_string(command: Command, timeout: Duration) -> Result<String, String> {
    let mut child = ChildSource::spawn(command).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let mut output = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match child.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => output.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                if Instant::now() > deadline {
                    child.terminate();
                    return Err(format!("no answer within {} s", timeout.as_secs()));
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    match child.finish() {
        Ok(_) => Ok(String::from_utf8_lossy(&output).into_owned()),
        Err(failure) => Err(format!(
            "{} ({})",
            failure.stderr,
            failure.describe_status()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn success_needs_exit_zero() {
        let mut child = ChildSource::spawn(sh("printf hello; echo oops >&2")).unwrap();
        let mut out = String::new();
        child.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello");
        assert_eq!(child.finish().unwrap(), "oops");

        let mut child =
            ChildSource::spawn(sh("printf part; echo 'x: error: boom' >&2; exit 3")).unwrap();
        child.read_to_string(&mut String::new()).unwrap();
        let failure = child.finish().unwrap_err();
        assert_eq!(failure.describe_status(), "exited with status 3");
        assert_eq!(failure.key_line(), Some("x: error: boom"));
    }

    #[test]
    fn a_killed_child_fails_even_with_empty_stderr() {
        let mut child = ChildSource::spawn(sh("printf part; kill -9 $$")).unwrap();
        child.read_to_string(&mut String::new()).unwrap();
        let failure = child.finish().unwrap_err();
        assert!(
            failure.describe_status().contains("SIGKILL"),
            "{}",
            failure.describe_status()
        );
    }

    #[test]
    fn terminate_reaches_grandchildren_holding_the_pipe() {
        // The shell's `sleep` inherits stdout; killing only the shell would
        // leave the pipe open for 60 seconds.
        let mut child = ChildSource::spawn(sh("printf x; sleep 60; true")).unwrap();
        let mut first = [0u8; 1];
        child.read_exact(&mut first).unwrap();
        let started = std::time::Instant::now();
        child.terminate();
        child.read_to_end(&mut Vec::new()).unwrap();
        assert!(child.finish().is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn a_descendant_holding_the_pipes_does_not_hang_the_reader() {
        // The shell exits at once, but a process in its own session keeps
        // stdout and stderr open for a minute.
        let mut child = ChildSource::spawn(sh("printf x; setsid sleep 60 & exit 0")).unwrap();
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        let err = child.read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().contains("held open"), "{err}");
        assert_eq!(out, b"x");
        assert!(child.finish().is_ok());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_version_probe_that_never_answers_times_out() {
        let started = std::time::Instant::now();
        let err = run_to_string(sh("sleep 60"), Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("no answer within 1 s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(
            run_to_string(sh("echo 15.2"), Duration::from_secs(5)).unwrap(),
            "15.2\n"
        );
    }

    #[test]
    fn a_large_stderr_does_not_deadlock() {
        let script = "head -c 1000000 /dev/zero | tr '\\0' x >&2; head -c 300000 /dev/zero";
        let mut child = ChildSource::spawn(sh(script)).unwrap();
        let mut out = Vec::new();
        child.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 300000);
        assert_eq!(child.finish().unwrap().len(), STDERR_LIMIT);
    }
}
