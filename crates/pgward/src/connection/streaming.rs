//! pgward's session on the async driver, for the one job where the sync
//! client costs more than the work: streaming a table out with COPY (the
//! drill's read-back). The sync client (`postgres`) enters its runtime once
//! per message, and COPY sends a message per row: measured at 1.4 cpu-s for
//! 3.5 M rows (341 MB), where the same COPY inside one runtime entry costs
//! 0.54 cpu-s, as much as psql and its pipe.

use super::ConnectionTarget;
use crate::error::{Error, Result};
use futures::StreamExt;
use std::fmt;

/// A session whose requests each run inside one entry into its own
/// single-threaded runtime.
pub struct StreamingSession {
    runtime: tokio::runtime::Runtime,
    /// None once dropped (the connection then says goodbye, see `Drop`).
    client: Option<tokio_postgres::Client>,
    connection: Option<tokio::task::JoinHandle<()>>,
}

/// Why a COPY out stopped early.
#[derive(Debug)]
pub enum CopyOutError {
    /// The server or the connection failed it.
    Driver(postgres::Error),
    /// The consumer stopped it (its reason).
    Stopped(String),
}

impl fmt::Display for CopyOutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyOutError::Driver(e) => match e.as_db_error() {
                Some(db) => f.write_str(db.message()),
                None => write!(f, "{e}"),
            },
            CopyOutError::Stopped(why) => f.write_str(why),
        }
    }
}

impl ConnectionTarget {
    /// Opens a [`StreamingSession`], trying TLS exactly as
    /// [`ConnectionTarget::connect`] does.
    pub fn connect_streaming(&self) -> Result<StreamingSession> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::config(format!("cannot start a runtime for a session: {e}")))?;
        let (client, connection) = self.connect_with(|config, tls| {
            runtime.block_on(async {
                match tls {
                    None => {
                        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                        Ok((client, runtime.spawn(drive(connection))))
                    }
                    Some(tls) => {
                        let (client, connection) = config
                            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                            .await?;
                        Ok((client, runtime.spawn(drive(connection))))
                    }
                }
            })
        })?;
        Ok(StreamingSession {
            runtime,
            client: Some(client),
            connection: Some(connection),
        })
    }
}

/// Runs a connection until its client is gone (the driver logs notices).
async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = std::result::Result<(), postgres::Error>>,
{
    let _ = connection.await;
}

impl StreamingSession {
    fn client(&self) -> &tokio_postgres::Client {
        self.client
            .as_ref()
            .expect("the client lives as long as the session")
    }

    pub fn batch_execute(&self, statements: &str) -> std::result::Result<(), postgres::Error> {
        self.runtime
            .block_on(self.client().batch_execute(statements))
    }

    pub fn query_opt(
        &self,
        statement: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Option<postgres::Row>, postgres::Error> {
        self.runtime
            .block_on(self.client().query_opt(statement, params))
    }

    /// Runs `statement` (a `COPY ... TO STDOUT`) and hands what the server
    /// sends to `each`, a message (a row) at a time; `each` may stop it.
    pub fn copy_out(
        &self,
        statement: &str,
        mut each: impl FnMut(&[u8]) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), CopyOutError> {
        self.runtime.block_on(async {
            let stream = self
                .client()
                .copy_out(statement)
                .await
                .map_err(CopyOutError::Driver)?;
            let mut stream = std::pin::pin!(stream);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(CopyOutError::Driver)?;
                each(&chunk).map_err(CopyOutError::Stopped)?;
            }
            Ok(())
        })
    }
}

impl Drop for StreamingSession {
    /// Ends the session with a Terminate, as the sync client does: the
    /// client queues it when dropped, and the connection, driven once
    /// more, sends it and closes (a server would otherwise log an
    /// unexpected EOF).
    fn drop(&mut self) {
        drop(self.client.take());
        if let Some(connection) = self.connection.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(5), connection).await
            });
        }
    }
}
