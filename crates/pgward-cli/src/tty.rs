//! Asking the operator for a passphrase on the terminal, never echoed.
//! Prompts go to /dev/tty, not stdout or stderr, so `--json` output and
//! logs never carry them, and a passphrase is never read from stdin
//! (which may be a pipe a script controls).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;

/// Reads one line from the controlling terminal with echo off; `None` when
/// there is no terminal (cron, CI, a service), when nothing was entered, or
/// when the operator pressed Ctrl-C. Signals from the keyboard are off
/// while the prompt waits (Ctrl-C arrives as a character), so the
/// terminal's settings are always restored.
pub fn ask_passphrase(prompt: &str) -> Option<String> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return None;
    }
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ECHO | libc::ISIG);
    quiet.c_lflag |= libc::ECHONL;
    (&tty).write_all(prompt.as_bytes()).ok()?;
    // SAFETY: as above; the saved settings are restored below on every path.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut line = String::new();
    let read = BufReader::new(&tty).read_line(&mut line);
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    read.ok()?;
    if line.contains(['\x03', '\x1c']) {
        let _ = (&tty).write_all(b"\n");
        // SAFETY: raise has no preconditions; the process ends as if the
        // key had sent SIGINT, with the terminal already restored.
        unsafe { libc::raise(libc::SIGINT) };
        return None;
    }
    let line = line.trim_end_matches(['\n', '\r']).to_string();
    (!line.is_empty()).then_some(line)
}
