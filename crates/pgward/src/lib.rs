//! pgward: governed PostgreSQL backups that cannot fail silently.
//!
//! This crate holds all of pgward's behaviour; the `pgward` binary only
//! parses arguments, renders results and maps errors to exit codes. Nothing
//! here prints.
//!
//! ```no_run
//! use pgward::{Config, backup};
//!
//! let mut config = Config::default();
//! config.repository = Some("/var/backups/pgward".into());
//! config.connection.dbname = Some("appdb".into());
//! let outcome = backup::run(&config, &backup::BackupOptions::default(), &pgward::process_env, &mut |_| {})?;
//! println!("{} -> {}", outcome.manifest.id, outcome.artifact_path.display());
//! # Ok::<(), pgward::Error>(())
//! ```

pub mod apply;
pub mod backup;
pub mod catalog;
pub mod check;
pub mod clock;
pub mod config;
pub mod connection;
pub mod copy;
pub mod drill;
pub mod dump;
pub mod encryption;
pub mod error;
pub mod findings;
pub mod fingerprint;
pub mod grants;
pub mod interrupt;
pub mod journal;
pub mod list;
pub mod notify;
pub mod pipeline;
pub mod prune;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod run;
pub mod scope;
pub mod signing;
pub mod status;
pub mod storage;
pub mod verify;

pub use config::Config;
pub use connection::process_env;
pub use error::{Error, ErrorKind, Result};
pub use repository::Repository;
