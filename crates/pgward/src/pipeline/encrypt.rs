//! The encryption stage: a `Write` adapter that turns what is written into
//! one OpenPGP SEIPDv1 message (AES-256, MDC) for the given recipients.
//!
//! rPGP's message builder pulls its plaintext from a reader, while pgward's
//! pipeline pushes; so the builder runs on its own thread and reads from a
//! bounded channel of chunks that `write` fills. Memory stays at a few
//! chunks whatever the size of the dump, and the encryption overlaps with
//! compression on a second core.
//!
//! An unfinished stream (error, signal, drop without `finish`) makes the
//! reading side fail instead of seeing a clean end, so the builder never
//! writes the trailing MDC: a partial artifact can never decrypt as a
//! complete one.

use pgp::composed::MessageBuilder;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::PublicSubkey;
use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

const CHUNK: usize = 256 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;

enum Chunk {
    Data(Vec<u8>),
    End,
}

/// Either passes bytes through or encrypts them; `finish` returns the
/// inner writer once everything (including the MDC) is written.
pub enum EncryptStage<W: Write + Send + 'static> {
    Plain(W),
    Encrypted(EncryptWriter<W>),
}

impl<W: Write + Send + 'static> EncryptStage<W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            EncryptStage::Plain(w) => Ok(w),
            EncryptStage::Encrypted(e) => e.finish(),
        }
    }
}

impl<W: Write + Send + 'static> Write for EncryptStage<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            EncryptStage::Plain(w) => w.write(buf),
            EncryptStage::Encrypted(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            EncryptStage::Plain(w) => w.flush(),
            EncryptStage::Encrypted(e) => e.flush(),
        }
    }
}

pub struct EncryptWriter<W: Write + Send + 'static> {
    chunks: Option<SyncSender<Chunk>>,
    pending: Vec<u8>,
    worker: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> EncryptWriter<W> {
    /// Starts a message to `keys` (encryption-capable subkeys, already
    /// checked by the caller) written into `inner`.
    pub fn new(inner: W, keys: Vec<PublicSubkey>) -> io::Result<Self> {
        let (sender, receiver) = sync_channel(CHUNKS_IN_FLIGHT);
        let (setup_sender, setup) = sync_channel(1);
        let worker = std::thread::Builder::new()
            .name("encrypt".into())
            .spawn(move || encrypt_worker(inner, keys, receiver, setup_sender))?;
        // Wait until the session key is encrypted to every recipient, so a
        // recipient problem is an error here, before any data flows.
        match setup.recv() {
            Ok(Ok(())) => Ok(EncryptWriter {
                chunks: Some(sender),
                pending: Vec::with_capacity(CHUNK),
                worker: Some(worker),
            }),
            Ok(Err(e)) => {
                let _ = worker.join();
                Err(e)
            }
            Err(_) => Err(join_error(worker)),
        }
    }

    fn send(&mut self, chunk: Chunk) -> io::Result<()> {
        let sent = match &self.chunks {
            Some(sender) => sender.send(chunk).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The worker stopped early: its result says why.
        self.chunks = None;
        match self.worker.take() {
            Some(worker) => Err(join_error(worker)),
            None => Err(io::Error::other("the encryption stage has already failed")),
        }
    }

    pub fn finish(mut self) -> io::Result<W> {
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            self.send(Chunk::Data(rest))?;
        }
        self.send(Chunk::End)?;
        self.chunks = None;
        let worker = self.worker.take().expect("finish runs once");
        match worker.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the encryption thread panicked")),
        }
    }
}

impl<W: Write + Send + 'static> Write for EncryptWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.pending.len();
        let n = buf.len().min(room);
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == CHUNK {
            let full = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
            self.send(Chunk::Data(full))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Data is flushed by `finish`; a partial chunk stays buffered.
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for EncryptWriter<W> {
    fn drop(&mut self) {
        // Abandoned: close the channel without an End, so the worker fails
        // rather than completing the message, and wait for it to stop
        // writing before the caller moves the file.
        self.chunks = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn join_error<W>(worker: JoinHandle<io::Result<W>>) -> io::Error {
    match worker.join() {
        Ok(Err(e)) => e,
        Ok(Ok(_)) => io::Error::other("the encryption stage stopped before the end of the data"),
        Err(_) => io::Error::other("the encryption thread panicked"),
    }
}

fn encrypt_worker<W: Write>(
    mut out: W,
    keys: Vec<PublicSubkey>,
    receiver: Receiver<Chunk>,
    setup: SyncSender<io::Result<()>>,
) -> io::Result<W> {
    let mut rng = rand::thread_rng();
    let plaintext = ChunkReader {
        chunks: receiver,
        current: Vec::new(),
        position: 0,
        ended: false,
    };
    let mut builder = MessageBuilder::from_reader("", plaintext)
        .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
    for key in &keys {
        if let Err(e) = builder.encrypt_to_key(&mut rng, key) {
            let _ = setup.send(Err(io::Error::other(format!(
                "cannot encrypt to key {:X}: {e}",
                pgp::types::KeyDetails::fingerprint(key)
            ))));
            return Err(io::Error::other("encryption setup failed"));
        }
    }
    let _ = setup.send(Ok(()));
    builder.to_writer(&mut rng, &mut out).map_err(into_io)?;
    out.flush()?;
    Ok(out)
}

/// rPGP wraps I/O errors (a full disk, say); unwrap them so the caller
/// sees the original error kind.
pub(crate) fn into_io(error: pgp::errors::Error) -> io::Error {
    match error {
        pgp::errors::Error::IO { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// The builder's plaintext source: chunks from the writing side.
struct ChunkReader {
    chunks: Receiver<Chunk>,
    current: Vec<u8>,
    position: usize,
    ended: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.position < self.current.len() {
                let n = buf.len().min(self.current.len() - self.position);
                buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
                self.position += n;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(Chunk::Data(data)) => {
                    self.current = data;
                    self.position = 0;
                }
                Ok(Chunk::End) => self.ended = true,
                Err(_) => {
                    return Err(io::Error::other(
                        "the data stream was abandoned before its end",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::keygen;
    use crate::encryption::secret::{Decryptor, SecretKey};
    use crate::pipeline::decrypt::decrypt;

    fn key() -> (PublicSubkey, Decryptor) {
        let key = keygen::generate("test", None).unwrap();
        let public = key.public.public_subkeys[0].key.clone();
        let decryptor = Decryptor::SecretKey(Box::new(SecretKey {
            path: "test".into(),
            key: key.secret,
            password: pgp::types::Password::empty(),
        }));
        (public, decryptor)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn finished_stream_decrypts_to_the_same_bytes_across_chunks() {
        let (public, decryptor) = key();
        let plaintext = data(3 * CHUNK + 17);
        let mut writer = EncryptWriter::new(Vec::new(), vec![public]).unwrap();
        // Odd-sized writes, as zstd makes them.
        for piece in plaintext.chunks(70_001) {
            writer.write_all(piece).unwrap();
        }
        let ciphertext = writer.finish().unwrap();
        let mut back = Vec::new();
        decrypt(io::Cursor::new(ciphertext), &decryptor)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, plaintext);
    }

    #[test]
    fn abandoned_stream_never_decrypts_as_complete() {
        let (public, decryptor) = key();
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut writer = EncryptWriter::new(file.reopen().unwrap(), vec![public]).unwrap();
        writer.write_all(&data(2 * CHUNK + 5)).unwrap();
        drop(writer); // an error or a signal: no finish()
        let ciphertext = std::fs::read(file.path()).unwrap();
        let mut back = Vec::new();
        let result = decrypt(io::Cursor::new(ciphertext), &decryptor)
            .map_err(|e| e.to_string())
            .and_then(|mut d| d.read_to_end(&mut back).map_err(|e| e.to_string()));
        assert!(
            result.is_err(),
            "a partial message decrypted cleanly ({} bytes)",
            back.len()
        );
    }
}
