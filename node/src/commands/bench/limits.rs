//! The machine's own limits, measured in the same run as keel so that keel's figures can be
//! given as ratios to them (docs/benchmarks.md).
//!
//! - [`disk_append`]: sequential `write` of `chunk_bytes` pieces to a new file in the data
//!   directory, one `fdatasync` after each, `total_bytes` in all; `writers` files in parallel
//!   (one thread each) gives the disk's bandwidth for that many brokers syncing at once. The
//!   shape is keel's group commit under load: a broker appends the batches of many requests
//!   and one fdatasync covers them (node/benches/log_append.rs found keel's own log at 1.00x of
//!   this pattern with one sync per MiB).
//! - [`sync_latency_us`]: the time of one small `write` + `fdatasync`, `count` times: the
//!   floor under any latency that waits for data on disk (an acks=all reply waits for the
//!   leader's and the followers' syncs).
//! - [`loopback_tcp`]: one thread writes `chunk_bytes` buffers to a TCP connection on
//!   127.0.0.1 and another reads them, `total_bytes` in all.
//!
//! Both remove what they created, also on error.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;

use super::histogram::Histogram;

/// A bandwidth: bytes moved in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bandwidth {
    pub bytes: u64,
    pub secs: f64,
}

impl Bandwidth {
    /// Megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        if self.secs <= 0.0 {
            return 0.0;
        }
        self.bytes as f64 / self.secs / 1e6
    }
}

/// The median round by bandwidth (the upper middle of an even count); None for no rounds.
pub fn median(rounds: &[Bandwidth]) -> Option<Bandwidth> {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()));
    sorted.get(sorted.len() / 2).copied()
}

/// Removes the file when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A chunk of bytes that compress badly (a filesystem or disk that compresses must not flatter
/// the figure).
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn append_synced(path: &Path, total_bytes: u64, chunk: &[u8]) -> io::Result<u64> {
    let mut file: File = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let mut written = 0u64;
    while written < total_bytes {
        file.write_all(chunk)?;
        file.sync_data()?;
        written += chunk.len() as u64;
    }
    Ok(written)
}

/// Sequential append + fdatasync per chunk in `dir`, `writers` files in parallel, each
/// `total_bytes / writers`. Returns the aggregate bandwidth.
pub fn disk_append(
    dir: &Path,
    total_bytes: u64,
    chunk_bytes: usize,
    writers: usize,
) -> io::Result<Bandwidth> {
    assert!(chunk_bytes > 0, "chunk_bytes must be positive");
    let writers = writers.max(1);
    let per_writer = total_bytes / writers as u64;
    let chunk = incompressible(chunk_bytes, 0x6b65_656c);
    let scratch: Vec<Scratch> = (0..writers)
        .map(|i| Scratch(dir.join(format!("keel-bench-disk-{}-{i}.tmp", std::process::id()))))
        .collect();
    let start = Instant::now();
    let results: Vec<io::Result<u64>> = thread::scope(|s| {
        let handles: Vec<_> = scratch
            .iter()
            .map(|f| {
                let chunk = &chunk;
                s.spawn(move || append_synced(&f.0, per_writer, chunk))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("writer thread panicked")))
            })
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut bytes = 0;
    for r in results {
        bytes += r?;
    }
    Ok(Bandwidth { bytes, secs })
}

/// `count` appends of `write_bytes` to a new file in `dir`, each followed by fdatasync: the
/// microseconds each took.
pub fn sync_latency_us(dir: &Path, write_bytes: usize, count: usize) -> io::Result<Histogram> {
    let scratch = Scratch(dir.join(format!("keel-bench-sync-{}.tmp", std::process::id())));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&scratch.0)?;
    let chunk = incompressible(write_bytes, 0x7379_6e63);
    let mut h = Histogram::new();
    for _ in 0..count {
        let start = Instant::now();
        file.write_all(&chunk)?;
        file.sync_data()?;
        h.record(start.elapsed().as_micros() as u64);
    }
    Ok(h)
}

/// One TCP connection over 127.0.0.1: a writer thread sends `total_bytes` in `chunk_bytes`
/// writes, the caller's thread reads them all.
pub fn loopback_tcp(total_bytes: u64, chunk_bytes: usize) -> io::Result<Bandwidth> {
    assert!(chunk_bytes > 0, "chunk_bytes must be positive");
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let chunk = incompressible(chunk_bytes, 0x6c6f_6f70);
    let start = Instant::now();
    let sender = thread::spawn(move || -> io::Result<()> {
        let mut stream = TcpStream::connect(address)?;
        let mut sent = 0u64;
        while sent < total_bytes {
            stream.write_all(&chunk)?;
            sent += chunk.len() as u64;
        }
        Ok(())
    });
    let (mut stream, _) = listener.accept()?;
    let mut buf = vec![0u8; chunk_bytes];
    let mut received = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    sender
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("sender thread panicked")))?;
    Ok(Bandwidth {
        bytes: received,
        secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mb_per_s_is_decimal_megabytes() {
        let b = Bandwidth {
            bytes: 3_000_000,
            secs: 2.0,
        };
        assert_eq!(b.mb_per_s(), 1.5);
        assert_eq!(
            Bandwidth {
                bytes: 1,
                secs: 0.0
            }
            .mb_per_s(),
            0.0
        );
    }

    #[test]
    fn median_of_rounds() {
        let b = |mb: u64| Bandwidth {
            bytes: mb * 1_000_000,
            secs: 1.0,
        };
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[b(300), b(100), b(200)]), Some(b(200)));
        assert_eq!(median(&[b(300), b(100), b(200), b(400)]), Some(b(300)));
    }

    #[test]
    fn disk_append_writes_the_total_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let b = disk_append(dir.path(), 4 << 16, 1 << 16, 2).unwrap();
        assert_eq!(b.bytes, 4 << 16);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn sync_latency_counts_every_sync_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let h = sync_latency_us(dir.path(), 512, 3).unwrap();
        assert_eq!(h.count(), 3);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn loopback_receives_every_byte_sent() {
        let b = loopback_tcp(3 << 16, 1 << 16).unwrap();
        assert_eq!(b.bytes, 3 << 16);
    }

    #[test]
    fn incompressible_bytes_are_not_constant() {
        let c = incompressible(4096, 1);
        let distinct: std::collections::BTreeSet<u8> = c.iter().copied().collect();
        assert!(
            distinct.len() > 200,
            "{} distinct byte values",
            distinct.len()
        );
    }
}
