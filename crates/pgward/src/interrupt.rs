//! Turning SIGINT, SIGTERM and SIGHUP into an orderly failure.
//!
//! A backup stopped by a signal must still quarantine its partial file and
//! say so, and must not leave pg_dump running (it would keep its snapshot and
//! locks on the server). A watcher thread records the signal and forwards
//! SIGTERM to the registered child, which ends the child's output; the copy
//! loop then sees the recorded signal and fails the backup. A child group
//! that ignores SIGTERM gets SIGKILL after a grace period.

use crate::pipeline::child::signal_group;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a signalled child may take to exit before it is killed.
const GRACE: Duration = Duration::from_secs(5);

pub struct InterruptWatch {
    received: Arc<AtomicI32>,
    child: Arc<AtomicI32>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl InterruptWatch {
    pub fn install() -> std::io::Result<InterruptWatch> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let handle = signals.handle();
        let received = Arc::new(AtomicI32::new(0));
        let child = Arc::new(AtomicI32::new(0));
        let (seen, target) = (received.clone(), child.clone());
        let thread = std::thread::Builder::new()
            .name("signal-watch".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let _ = seen.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
                    let pid = target.load(Ordering::SeqCst);
                    if pid > 0 {
                        signal_group(pid as u32, libc::SIGTERM);
                        std::thread::sleep(GRACE);
                        if target.load(Ordering::SeqCst) == pid {
                            signal_group(pid as u32, libc::SIGKILL);
                        }
                    }
                }
            })?;
        Ok(InterruptWatch {
            received,
            child,
            handle,
            thread: Some(thread),
        })
    }

    /// Forward signals to this child from now on (0 to stop forwarding).
    pub fn watch_child(&self, pid: u32) {
        self.child.store(pid as i32, Ordering::SeqCst);
        // A signal that arrived just before the child existed still stops it.
        if pid > 0 && self.received().is_some() {
            signal_group(pid, libc::SIGTERM);
        }
    }

    /// The first signal received, if any.
    pub fn received(&self) -> Option<i32> {
        match self.received.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }
}

impl Drop for InterruptWatch {
    fn drop(&mut self) {
        self.child.store(0, Ordering::SeqCst);
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
