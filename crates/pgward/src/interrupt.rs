//! Turning SIGINT, SIGTERM and SIGHUP into an orderly failure.
//!
//! A backup stopped by a signal must still quarantine its partial file and
//! say so, and must not leave pg_dump running (it would keep its snapshot
//! and locks on the server). The handler is deliberately tiny and
//! async-signal-safe: it records the first signal and forwards SIGTERM to the
//! registered child's process group. The copy loop, which wakes at least
//! every few hundred milliseconds (see `pipeline::child`), then sees the
//! recorded signal, stops the child (SIGKILL if it ignores SIGTERM) and fails
//! the backup.
//!
//! While a watch is installed the previous handlers are saved; dropping the
//! watch restores them, and a signal that arrived but was never
//! acknowledged by the caller is raised again, so neither the CLI nor a
//! program embedding the library loses a Ctrl-C.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

const SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static CHILD_GROUP: AtomicI32 = AtomicI32::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    let _ = RECEIVED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    let group = CHILD_GROUP.load(Ordering::SeqCst);
    if group > 0 {
        // SAFETY: kill(2) is async-signal-safe; the group is our child's.
        unsafe {
            libc::kill(-group, libc::SIGTERM);
        }
    }
}

pub struct InterruptWatch {
    previous: Vec<(i32, libc::sigaction)>,
    acknowledged: bool,
}

impl InterruptWatch {
    /// Installs the handlers; only one watch may exist at a time.
    pub fn install() -> std::io::Result<InterruptWatch> {
        if INSTALLED.swap(true, Ordering::SeqCst) {
            return Err(std::io::Error::other("a signal watch is already installed"));
        }
        RECEIVED.store(0, Ordering::SeqCst);
        CHILD_GROUP.store(0, Ordering::SeqCst);
        let mut previous = Vec::new();
        for signal in SIGNALS {
            // SAFETY: a zeroed sigaction with our handler and an empty mask;
            // the old action is saved to be restored on drop.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) != 0 {
                    let error = std::io::Error::last_os_error();
                    restore(&previous);
                    INSTALLED.store(false, Ordering::SeqCst);
                    return Err(error);
                }
                previous.push((signal, old));
            }
        }
        Ok(InterruptWatch {
            previous,
            acknowledged: false,
        })
    }

    /// Forward signals to this child's process group from now on (0 stops).
    pub fn watch_child(&self, pid: u32) {
        CHILD_GROUP.store(pid as i32, Ordering::SeqCst);
        // A signal that arrived just before the child existed still stops it.
        if pid > 0 && self.received().is_some() {
            crate::pipeline::child::signal_group(pid, libc::SIGTERM);
        }
    }

    /// The first signal received, if any.
    pub fn received(&self) -> Option<i32> {
        match RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }

    /// The caller has turned the signal into its own failure (and exit
    /// code); do not raise it again on drop.
    pub fn acknowledge(&mut self) {
        self.acknowledged = true;
    }
}

/// The first signal received while a watch is installed, for loops that
/// have no access to the watch (threads verifying a restore).
pub fn pending() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

fn restore(previous: &[(i32, libc::sigaction)]) {
    for (signal, action) in previous {
        // SAFETY: restoring an action previously returned by sigaction.
        unsafe {
            libc::sigaction(*signal, action, std::ptr::null_mut());
        }
    }
}

impl Drop for InterruptWatch {
    fn drop(&mut self) {
        CHILD_GROUP.store(0, Ordering::SeqCst);
        restore(&self.previous);
        INSTALLED.store(false, Ordering::SeqCst);
        if let Some(signal) = self.received()
            && !self.acknowledged
        {
            // SAFETY: re-raising a signal under the restored disposition.
            unsafe {
                libc::raise(signal);
            }
        }
    }
}
