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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::hash::StreamHasher;

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
