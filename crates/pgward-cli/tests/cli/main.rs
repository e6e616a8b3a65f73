//! Integration tests for the `pgward` binary against a real PostgreSQL
//! cluster that the harness starts itself, with real pg_dump, pg_restore and
//! zstd. One test binary (as ripgrep does) so the cluster is shared.

mod apply;
mod backup;
mod bucket_backup;
mod check;
mod databases;
mod drill;
mod encryption;
mod extensions;
mod failures;
mod harness;
mod hostile;
mod journal;
mod objectstore;
mod signing;
mod tls;
mod unattended;
mod verdicts;
mod verify;
