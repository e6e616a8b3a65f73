//! An observer that runs on a thread of its own.
//!
//! A backup's archive inspection (structure, rows, and a SHA-256 per row
//! for the content fingerprints) costs about as much CPU as the stream's
//! own sha256. On the main thread the two add up; on a thread of its own
//! the inspection uses the moments when pg_dump, postgres and zstd leave a
//! core idle. Chunks are copied into a short queue of recycled buffers, so
//! memory stays bounded and no chunk costs an allocation.

use super::{CHUNK_SIZE, Observer};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Chunks in flight (each at most [`CHUNK_SIZE`]).
const QUEUE: usize = 8;

pub struct Offloaded<O: Observer + Send + 'static> {
    chunks: Option<SyncSender<Vec<u8>>>,
    recycled: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<O>>,
}

impl<O: Observer + Send + 'static> Offloaded<O> {
    pub fn new(mut observer: O) -> Offloaded<O> {
        let (chunks, incoming) = sync_channel::<Vec<u8>>(QUEUE);
        let (give_back, recycled) = sync_channel::<Vec<u8>>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("observe".into())
            .spawn(move || {
                for chunk in incoming {
                    observer.observe(&chunk);
                    // A full return queue only means a buffer is dropped.
                    let _ = give_back.try_send(chunk);
                }
                observer
            })
            .expect("a thread can be started");
        Offloaded {
            chunks: Some(chunks),
            recycled,
            thread: Some(thread),
        }
    }

    /// Waits until everything sent was observed and returns the observer.
    pub fn into_inner(mut self) -> O {
        drop(self.chunks.take());
        self.thread
            .take()
            .expect("joined once")
            .join()
            .expect("the observing thread does not panic")
    }
}

impl<O: Observer + Send + 'static> Observer for Offloaded<O> {
    fn observe(&mut self, data: &[u8]) {
        let mut buffer = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK_SIZE.max(data.len())));
        buffer.clear();
        buffer.extend_from_slice(data);
        if let Some(chunks) = &self.chunks {
            // Fails only if the thread is gone, which `into_inner` reports.
            let _ = chunks.send(buffer);
        }
    }
}

impl<O: Observer + Send + 'static> Drop for Offloaded<O> {
    fn drop(&mut self) {
        drop(self.chunks.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A reader that reads ahead on a thread of its own, so that the reads
/// (a kernel copy per chunk, or a storage client's work) leave the thread
/// that consumes them. Up to [`QUEUE`] chunks are read ahead.
pub struct ReadAhead {
    chunks: Receiver<std::io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
    ended: bool,
}

impl ReadAhead {
    pub fn new(mut inner: Box<dyn std::io::Read + Send>) -> ReadAhead {
        let (send, chunks) = sync_channel::<std::io::Result<Vec<u8>>>(QUEUE);
        // Not joined: a read that hangs must not hang the consumer's drop;
        // once the consumer is gone the thread ends at its next send.
        std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || {
                loop {
                    let mut buffer = vec![0u8; CHUNK_SIZE];
                    let sent = match inner.read(&mut buffer) {
                        // The end is said explicitly (an empty chunk): a
                        // thread that vanished is not an end of input.
                        Ok(0) => {
                            let _ = send.send(Ok(Vec::new()));
                            break;
                        }
                        Ok(n) => {
                            buffer.truncate(n);
                            send.send(Ok(buffer))
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = send.send(Err(e));
                            break;
                        }
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            })
            .expect("a thread can be started");
        ReadAhead {
            chunks,
            current: Vec::new(),
            at: 0,
            ended: false,
        }
    }
}

impl std::io::Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            if self.ended {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.ended = true,
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                Err(_) => {
                    self.ended = true;
                    return Err(std::io::Error::other("the reading thread stopped"));
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::hash::StreamHasher;

    #[test]
    fn read_ahead_yields_every_byte_in_order_and_its_errors() {
        use std::io::Read;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut read = Vec::new();
        ReadAhead::new(Box::new(std::io::Cursor::new(data.clone())))
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, data);
        // A failing source: the bytes before the failure, then the error.
        let failing = std::io::Read::chain(std::io::Cursor::new(vec![1u8; 10]), FailingReader);
        let mut ahead = ReadAhead::new(Box::new(failing));
        let mut got = Vec::new();
        let error = ahead.read_to_end(&mut got).unwrap_err();
        assert_eq!(error.to_string(), "the disk is gone");
        assert_eq!(got, vec![1u8; 10]);
    }

    struct FailingReader;

    impl std::io::Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("the disk is gone"))
        }
    }

    #[test]
    fn an_offloaded_observer_sees_every_byte_in_order() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut direct = StreamHasher::default();
        let mut offloaded = Offloaded::new(StreamHasher::default());
        for chunk in data.chunks(100_003) {
            direct.observe(chunk);
            offloaded.observe(chunk);
        }
        assert_eq!(offloaded.into_inner().finish(), direct.finish());
    }
}
