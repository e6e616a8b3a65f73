//! One run per database at a time in a bucket, across hosts.
//!
//! A bucket has no `flock`, and the runs that share it may live on
//! different machines. The lock is an object, `locks/<database>.lock`,
//! written with `If-None-Match: *` so that only one run creates it. It
//! names its holder (host, pid) and carries a lease: the holder renews it
//! every fifth of its lease, replacing the object only if it is still the
//! version the holder wrote (`If-Match`). A holder that died stops
//! renewing, and once its lease has run out the next run takes the lock
//! over, again with `If-Match`, so that of two runs taking over one
//! wins. A holder that could not renew in time (a network outage longer
//! than the lease, a stopped process) has lost the lock and must not
//! commit: [`Lease::still_held`] says so before the manifest is written.
//!
//! Leases are judged by the clocks of the hosts involved: they must
//! agree to well within the lease.

use crate::error::{Error, ErrorKind, Result};
use crate::storage::Storage;
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a lock stays valid without renewal (`[s3] lock-lease`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);

const LOCK_FORMAT: &str = "pgward-lock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct LockRecord {
    format: String,
    database: String,
    host: String,
    pid: u32,
    /// Tells this holder's writes from another's on a service that
    /// ignores conditional writes.
    token: String,
    acquired_at: String,
    expires_at: String,
}

impl LockRecord {
    fn expires(&self) -> Option<jiff::Timestamp> {
        self.expires_at.parse().ok()
    }

    fn renewed(&self, now: jiff::Timestamp, lease: Duration) -> LockRecord {
        LockRecord {
            expires_at: crate::clock::rfc3339(now + lease),
            ..self.clone()
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).expect("lock records serialise");
        text.push(b'\n');
        text
    }
}

struct Held {
    /// The version of the lock object this holder wrote last.
    version: String,
    /// When the last renewal that reached the service runs out.
    expires: jiff::Timestamp,
    /// Why the lock is no longer this run's, once it is not.
    lost: Option<String>,
}

/// The lock of one database in a bucket, held while this value lives and
/// released (deleted, if still this holder's) when it is dropped.
pub struct Lease {
    storage: Arc<dyn Storage>,
    key: String,
    lease: Duration,
    held: Arc<Mutex<Held>>,
    stop: Option<Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).finish()
    }
}

impl Lease {
    /// Takes the lock of `database` at `key`, or says who holds it.
    pub fn acquire(
        storage: Arc<dyn Storage>,
        key: &str,
        database: &str,
        lease: Duration,
    ) -> Result<Lease> {
        let now = jiff::Timestamp::now();
        let record = LockRecord {
            format: LOCK_FORMAT.to_string(),
            database: database.to_string(),
            host: crate::journal::host_name(),
            pid: std::process::id(),
            token: token(),
            acquired_at: crate::clock::rfc3339(now),
            expires_at: crate::clock::rfc3339(now + lease),
        };
        let where_ = storage.describe(key);
        let failed = |e: std::io::Error| {
            Error::repository(format!("cannot take the lock {where_}: {e}"))
                .with_hint("run `pgward check` for the bucket's readiness")
        };
        // A few rounds: the lock may vanish or change hands between reads,
        // and a take-over is confirmed by the round after it.
        for _ in 0..4 {
            match storage.put_new(key, &record.bytes()) {
                Ok(()) => {}
                // Held, or this run's own write retried after its answer
                // was lost: the token below tells.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(failed(e)),
            }
            let Some((text, version)) = storage.read_versioned(key, 64 * 1024).map_err(failed)?
            else {
                continue;
            };
            let current = parse(&text);
            // Ours (a service that ignores If-None-Match lets a second
            // creator replace the object: the token tells that too).
            if current.as_ref().is_some_and(|r| r.token == record.token) {
                return Lease::start(storage, key, record, version, lease);
            }
            let expired = current
                .as_ref()
                .and_then(LockRecord::expires)
                .is_some_and(|at| at < jiff::Timestamp::now());
            if current.is_none() {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!("the lock {where_} is not a pgward lock record"),
                )
                .with_hint(
                    "make sure no pgward run of this database is alive, then delete the object",
                ));
            }
            if !expired {
                return Err(busy(database, &storage.location(), current, lease));
            }
            // A holder that died: its lease has run out. Taken over only
            // if nobody else did first; the next round reads who won.
            match storage.replace_if_version(key, &record.bytes(), &version) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(failed(e)),
            }
        }
        Err(busy(database, &storage.location(), None, lease))
    }

    /// Holds the lock at `version` and starts renewing it, after one
    /// renewal now: a service that does not honour `If-Match` (which the
    /// renewals need) is found before the backup, not after it.
    fn start(
        storage: Arc<dyn Storage>,
        key: &str,
        record: LockRecord,
        version: String,
        lease: Duration,
    ) -> Result<Lease> {
        let now = jiff::Timestamp::now();
        let renewed = record.renewed(now, lease);
        let version = match renew_once(storage.as_ref(), key, &renewed, &version) {
            Ok(version) => version,
            Err(e) => {
                let _ = storage.delete_if_version(key, &version);
                return Err(Error::repository(format!(
                    "cannot renew the lock {} just taken: {e}",
                    storage.describe(key)
                ))
                .with_hint("backups and copies into a bucket lock it with conditional writes (If-Match): use a service that honours them (`pgward check` tests it)"));
            }
        };
        let held = Arc::new(Mutex::new(Held {
            version,
            expires: renewed.expires().unwrap_or(now),
            lost: None,
        }));
        let (stop, stopped) = channel();
        let renewer = {
            let storage = storage.clone();
            let key = key.to_string();
            let held = held.clone();
            std::thread::Builder::new()
                .name("pgward-lease".into())
                .spawn(move || renew(storage.as_ref(), &key, &record, lease, &held, &stopped))
                .ok()
        };
        Ok(Lease {
            storage,
            key: key.to_string(),
            lease,
            held,
            stop: Some(stop),
            renewer,
        })
    }

    /// Why the lock is no longer this run's, if it is not: cheap enough to
    /// ask for every chunk of a dump, so that a run that lost its lock
    /// stops instead of dumping beside the lock's new holder.
    pub fn lost(&self) -> Option<String> {
        self.still_held().err().map(|e| e.message().to_string())
    }

    /// Whether the lock is still this run's, with time to spare: checked
    /// before a commit, so that a run that lost its lease commits nothing.
    pub fn still_held(&self) -> Result<()> {
        let held = self.held.lock().expect("not poisoned");
        let cause = match &held.lost {
            Some(cause) => cause.clone(),
            None if self.renewer.is_none() => "its lease could not be renewed".to_string(),
            None if held.expires < jiff::Timestamp::now() + self.lease / 5 => format!(
                "its lease ran out at {} without a renewal",
                crate::clock::rfc3339(held.expires)
            ),
            None => return Ok(()),
        };
        Err(Error::new(
            ErrorKind::Busy,
            format!(
                "this run lost the lock {}: {cause}",
                self.storage.describe(&self.key)
            ),
        )
        .with_hint("check the connection to the bucket; run the backup again"))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        let held = self.held.lock().expect("not poisoned");
        if held.lost.is_some() {
            return;
        }
        // Only this holder's version is removed: a lock taken over after
        // a lost lease belongs to its new holder. A service that refuses
        // the conditional delete gets a plain one, just after the check.
        if let Ok(Some((_, version))) = self.storage.read_versioned(&self.key, 64 * 1024)
            && version == held.version
            && self.storage.delete_if_version(&self.key, &version).is_err()
        {
            let _ = self.storage.delete(&self.key);
        }
    }
}

/// Renews the lease every fifth of it until told to stop.
fn renew(
    storage: &dyn Storage,
    key: &str,
    record: &LockRecord,
    lease: Duration,
    held: &Mutex<Held>,
    stopped: &Receiver<()>,
) {
    loop {
        match stopped.recv_timeout(lease / 5) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let now = jiff::Timestamp::now();
        let renewed = record.renewed(now, lease);
        let version = held.lock().expect("not poisoned").version.clone();
        match renew_once(storage, key, &renewed, &version) {
            Ok(version) => {
                let mut held = held.lock().expect("not poisoned");
                held.version = version;
                held.expires = renewed.expires().unwrap_or(now);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                held.lock().expect("not poisoned").lost =
                    Some("another run replaced it (this run's lease had run out)".to_string());
                return;
            }
            // A failed request: the next round tries again; the expiry
            // kept in `held` tells `still_held` when it is too late.
            Err(_) => {}
        }
    }
}

/// Replaces the lock at `version` with `renewed`; the new version. A
/// refusal is looked into: when the object holds exactly `renewed`, this
/// was a retry of a write that had landed, and the lock is still ours.
fn renew_once(
    storage: &dyn Storage,
    key: &str,
    renewed: &LockRecord,
    version: &str,
) -> std::io::Result<String> {
    match storage.replace_if_version(key, &renewed.bytes(), version) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match storage.read_versioned(key, 64 * 1024) {
                Ok(Some((text, version))) if text == renewed.bytes() => Ok(version),
                _ => Err(e),
            }
        }
        other => other,
    }
}

/// Who holds the lock at `key` now (an unexpired lease), for `check`.
pub fn holder(storage: &dyn Storage, key: &str) -> std::io::Result<Option<String>> {
    let Some(text) = storage
        .read_versioned(key, 64 * 1024)?
        .map(|(text, _)| text)
    else {
        return Ok(None);
    };
    Ok(match parse(&text) {
        None => Some("an object that is not a pgward lock record".to_string()),
        Some(r) if r.expires().is_some_and(|at| at < jiff::Timestamp::now()) => None,
        Some(r) => Some(format!(
            "host {}, pid {}, lease until {}",
            r.host, r.pid, r.expires_at
        )),
    })
}

fn parse(text: &[u8]) -> Option<LockRecord> {
    serde_json::from_slice::<LockRecord>(text)
        .ok()
        .filter(|r| r.format == LOCK_FORMAT)
}

fn busy(database: &str, location: &str, holder: Option<LockRecord>, lease: Duration) -> Error {
    let who = holder
        .map(|h| {
            format!(
                " (host {}, pid {}, lease until {})",
                h.host, h.pid, h.expires_at
            )
        })
        .unwrap_or_default();
    Error::new(
        ErrorKind::Busy,
        format!("another pgward run is backing up database {database:?} into {location}{who}"),
    )
    .with_hint(format!(
        "wait for it to finish; a run that died frees the lock when its lease runs out ({} s at most)",
        lease.as_secs()
    ))
}

/// 128 random bits, hex.
fn token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
