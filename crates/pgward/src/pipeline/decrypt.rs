//! The decryption stage: a `Read` adapter over an encrypted artifact,
//! either in-process with a secret key or through an external command
//! (`gpg --decrypt`) fed on stdin.
//!
//! In-process decryption streams (rPGP's SEIPDv1 `Streaming` mode): memory
//! stays flat, and the MDC is checked when the end of the message is read,
//! which is an error from `read` if the ciphertext was altered. Every
//! consumer here reads to the end and compares the plaintext's sha256 with
//! the manifest's before anything is trusted.

use crate::encryption::secret::Decryptor;
use pgp::composed::{DecryptionOptions, Message, TheRing};
use pgp::types::Seipdv1ReadMode;
use std::io::{self, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

/// Why decryption could not start.
#[derive(Debug)]
pub enum DecryptError {
    /// The secret key is not one the message was encrypted to.
    NotARecipient,
    /// The message is not a valid OpenPGP message (damage, wrong file).
    Malformed(String),
    /// The external command could not be started.
    Command(io::Error),
}

impl std::fmt::Display for DecryptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecryptError::NotARecipient => f.write_str("the secret key is not a recipient"),
            DecryptError::Malformed(e) => write!(f, "not a readable OpenPGP message: {e}"),
            DecryptError::Command(e) => write!(f, "cannot start the decryption command: {e}"),
        }
    }
}

/// Plaintext from an encrypted source.
pub struct Decrypting {
    reader: Box<dyn Read + Send>,
    external: Option<External>,
}

struct External {
    child: Child,
    feeder: Option<JoinHandle<io::Result<()>>>,
    stderr: Option<JoinHandle<String>>,
    waited: bool,
}

impl Drop for External {
    /// Abandoned before `finish`: stop the command and reap it, so no
    /// zombie or feeding thread outlives the decryption.
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(feeder) = self.feeder.take() {
            let _ = feeder.join();
        }
        if let Some(stderr) = self.stderr.take() {
            let _ = stderr.join();
        }
    }
}

/// Marks an `io::Error` as a decryption failure (bad MDC, truncated
/// message), so the stages above can tell it from a decompression error.
#[derive(Debug)]
pub struct DecryptFailed(pub String);

impl std::fmt::Display for DecryptFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "decryption failed: {}", self.0)
    }
}

impl std::error::Error for DecryptFailed {}

/// Whether `error` came from the decryption stage.
pub fn is_decrypt_failure(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<DecryptFailed>())
}

impl Read for Decrypting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Decrypting {
    /// Waits for an external command and reports its failure with its
    /// own last words; in-process decryption has nothing to wait for.
    pub fn finish(self) -> Result<(), String> {
        let Some(mut external) = self.external else {
            return Ok(());
        };
        drop(self.reader);
        let status = external.child.wait().map_err(|e| e.to_string())?;
        external.waited = true;
        let fed = external.feeder.take().expect("joined once").join();
        let said = external
            .stderr
            .take()
            .expect("joined once")
            .join()
            .unwrap_or_default();
        let last_line = said
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim()
            .to_string();
        if !status.success() {
            return Err(format!(
                "the decryption command failed ({status}): {last_line}"
            ));
        }
        match fed {
            Ok(Ok(())) => Ok(()),
            // The command exited without reading all of its input: a
            // success status does not cover the bytes it never saw.
            Ok(Err(e)) => Err(format!(
                "the decryption command did not read the whole artifact: {e}"
            )),
            Err(_) => Err("the thread feeding the decryption command panicked".to_string()),
        }
    }
}

/// rPGP's parser wants its source to be `Debug`.
struct Source<R>(R);

impl<R> std::fmt::Debug for Source<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("artifact")
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

pub fn decrypt<R: Read + Send + 'static>(
    ciphertext: R,
    decryptor: &Decryptor,
) -> Result<Decrypting, DecryptError> {
    match decryptor {
        Decryptor::SecretKey(secret) => {
            let message = Message::from_bytes(BufReader::new(Source(ciphertext)))
                .map_err(|e| DecryptError::Malformed(e.to_string()))?;
            let ring = TheRing {
                secret_keys: vec![&secret.key],
                key_passwords: vec![&secret.password],
                decrypt_options: DecryptionOptions::new()
                    .set_seipdv1_read_mode(Seipdv1ReadMode::Streaming),
                ..Default::default()
            };
            let (plaintext, _) = message.decrypt_the_ring(ring, true).map_err(|e| match e {
                pgp::errors::Error::MissingKey => DecryptError::NotARecipient,
                other => DecryptError::Malformed(other.to_string()),
            })?;
            Ok(Decrypting {
                reader: Box::new(PlaintextReader {
                    message: plaintext,
                    state: ReadState::Reading,
                }),
                external: None,
            })
        }
        Decryptor::Command(argv) => {
            let (program, args) = argv.split_first().expect("config rejects an empty command");
            // The C locale keeps gpg's messages in English, which is what
            // the caller recognises ("No secret key").
            let mut command = Command::new(program);
            crate::storage::s3::withhold_credentials(&mut command);
            let mut child = command
                .args(args)
                .env("LC_ALL", "C")
                .env("LANGUAGE", "C")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(DecryptError::Command)?;
            let mut stdin = child.stdin.take().expect("stdin was piped");
            let mut stderr = child.stderr.take().expect("stderr was piped");
            let stdout = child.stdout.take().expect("stdout was piped");
            let mut external = External {
                child,
                feeder: None,
                stderr: None,
                waited: false,
            };
            let mut ciphertext = ciphertext;
            // On a spawn failure `external` is dropped: the child is killed.
            let feeder = std::thread::Builder::new()
                .name("decrypt-feed".into())
                .spawn(move || {
                    io::copy(&mut ciphertext, &mut stdin)?;
                    stdin.flush()
                })
                .map_err(DecryptError::Command)?;
            external.feeder = Some(feeder);
            let stderr = std::thread::Builder::new()
                .name("decrypt-stderr".into())
                .spawn(move || last_words(&mut stderr))
                .map_err(DecryptError::Command)?;
            external.stderr = Some(stderr);
            Ok(Decrypting {
                reader: Box::new(stdout),
                external: Some(external),
            })
        }
    }
}

/// Reads a command's stderr to its end (never closing it early, which
/// would kill a chatty command with SIGPIPE) and keeps the last 64 KiB.
fn last_words(stderr: &mut impl Read) -> String {
    const KEEP: usize = 64 * 1024;
    let mut kept: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match stderr.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buffer[..n]);
                if kept.len() > 2 * KEEP {
                    kept.drain(..kept.len() - KEEP);
                }
            }
        }
    }
    let start = kept.len().saturating_sub(KEEP);
    String::from_utf8_lossy(&kept[start..]).into_owned()
}

/// rPGP's decrypted message, with its errors made `io::Error`s that say
/// what failed (an MDC mismatch is how damage shows up). rPGP's readers
/// must not be read again after an error or the end (they panic), so both
/// are remembered here and repeated.
struct PlaintextReader {
    message: Message<'static>,
    state: ReadState,
}

enum ReadState {
    Reading,
    Ended,
    Failed(io::ErrorKind, String),
}

impl Read for PlaintextReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.state {
            ReadState::Ended => return Ok(0),
            ReadState::Failed(kind, message) => {
                return Err(io::Error::new(*kind, DecryptFailed(message.clone())));
            }
            ReadState::Reading => {}
        }
        match self.message.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.state = ReadState::Ended;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) => {
                self.state = ReadState::Failed(e.kind(), e.to_string());
                Err(io::Error::new(e.kind(), DecryptFailed(e.to_string())))
            }
        }
    }
}
