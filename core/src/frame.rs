//! CRC-framed records in an append-only file: the format of the single-node metadata store
//! and of the raft log.
//!
//! ```text
//! offset  size  field
//!      0     4  payload length, big-endian (1 to the caller's maximum)
//!      4     4  CRC-32C of the payload, big-endian
//!      8     …  payload
//! ```
//!
//! Reading stops at the first frame that does not check out (a torn or damaged tail); the
//! caller cuts the file there. Nothing here panics on bytes from the disk.

use crate::storage::{self, Storage, StorageError};

/// Length and CRC before each payload.
pub const HEADER_BYTES: usize = 8;

/// Frames `payload`.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The payload of the frame at the start of `buf` and the frame's whole size, or why there is
/// no valid frame there. Payloads must be 1 to `payload_bytes_max` bytes long.
pub fn decode(buf: &[u8], payload_bytes_max: usize) -> Result<(&[u8], usize), String> {
    if buf.len() < HEADER_BYTES {
        return Err(format!("{} bytes, short of a frame header", buf.len()));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let stored = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len == 0 || len > payload_bytes_max {
        return Err(format!("frame length {len} is out of range"));
    }
    let Some(payload) = buf.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Err(format!(
            "frame of {len} bytes, only {} present",
            buf.len() - HEADER_BYTES
        ));
    };
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(format!(
            "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    Ok((payload, HEADER_BYTES + len))
}

/// The damaged tail that [`replay_file`] cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncatedTail {
    /// Where the first bad frame started (the new file length).
    pub position: u64,
    /// How many bytes were cut.
    pub bytes: u64,
    /// What was wrong with the frame at `position`.
    pub reason: String,
    /// Where a whole frame was found in the cut bytes, if one was (within
    /// [`SCAN_AFTER_CUT_BYTES`] of the cut; the refused frame itself when it passed its CRC
    /// and the caller refused its payload). A power loss only tears what was written last,
    /// so a whole frame after a bad one means the disk damaged bytes it had synced: what the
    /// cut removed may have been durable, and acknowledged.
    pub whole_frame_after: Option<u64>,
}

/// How far past a cut [`replay_file`] looks for a whole frame ([`TruncatedTail::whole_frame_after`]).
pub const SCAN_AFTER_CUT_BYTES: usize = 4 << 20;

/// Opens (creating if missing) the framed file `name` and hands each frame's payload, in
/// order, to `each`. A frame that is short, out of range or fails its CRC, or whose payload
/// `each` refuses with `Ok(Err(reason))`, ends the replay: the file is cut there and the cut
/// synced before this returns. `Err` from `each` aborts the replay with nothing cut. Returns
/// the length covered by whole frames and the cut tail, if any.
pub fn replay_file<S: Storage, E: From<StorageError>>(
    storage: &mut S,
    name: &str,
    payload_bytes_max: usize,
    mut each: impl FnMut(&[u8]) -> Result<Result<(), String>, E>,
) -> Result<(u64, Option<TruncatedTail>), E> {
    match storage.create(name) {
        Ok(()) | Err(StorageError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let bytes = storage::read_all(storage, name)?;
    let mut pos = 0usize;
    let mut tail = None;
    while pos < bytes.len() {
        // A frame that passed its CRC and that `each` refused is itself whole: no power loss
        // leaves one (only damage or a write in the wrong place does).
        let (refused, whole) = match decode(&bytes[pos..], payload_bytes_max) {
            Ok((payload, size)) => match each(payload)? {
                Ok(()) => {
                    pos += size;
                    continue;
                }
                Err(reason) => (reason, true),
            },
            Err(reason) => (reason, false),
        };
        let scan_end = bytes.len().min(pos.saturating_add(SCAN_AFTER_CUT_BYTES));
        let whole_frame_after = if whole {
            Some(pos as u64)
        } else {
            (pos + 1..scan_end)
                .find(|&at| decode(&bytes[at..], payload_bytes_max).is_ok())
                .map(|at| at as u64)
        };
        tail = Some(TruncatedTail {
            position: pos as u64,
            bytes: (bytes.len() - pos) as u64,
            reason: refused,
            whole_frame_after,
        });
        break;
    }
    if tail.is_some() {
        storage.truncate(name, pos as u64)?;
        storage.sync(name)?;
    }
    Ok((pos as u64, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_every_damage_is_refused() {
        let frame = encode(b"payload");
        assert_eq!(decode(&frame, 100), Ok((&b"payload"[..], frame.len())));
        for cut in 0..frame.len() {
            assert!(
                decode(&frame[..cut], 100).is_err(),
                "a frame cut at {cut} is refused"
            );
        }
        for i in 0..frame.len() {
            let mut damaged = frame.clone();
            damaged[i] ^= 0x01;
            assert!(
                decode(&damaged, 100).is_err(),
                "a flip at byte {i} is refused"
            );
        }
        assert!(decode(&frame, 3).is_err(), "over the maximum");
        assert!(
            decode(&encode(b""), 100).is_err(),
            "empty payloads are not frames"
        );
    }

    #[test]
    fn replay_cuts_at_the_first_refused_frame_durably() {
        use crate::storage::MemStorage;
        let mut s = MemStorage::new();
        s.create("f").unwrap();
        for payload in [&b"one"[..], b"bad", b"three"] {
            s.append("f", &encode(payload)).unwrap();
        }
        s.sync("f").unwrap();
        let mut seen = Vec::new();
        let (end, tail) = replay_file::<_, StorageError>(&mut s, "f", 100, |p| {
            seen.push(p.to_vec());
            Ok(if p == b"bad" {
                Err("refused".into())
            } else {
                Ok(())
            })
        })
        .unwrap();
        assert_eq!(seen, vec![b"one".to_vec(), b"bad".to_vec()]);
        assert_eq!(end, encode(b"one").len() as u64);
        let tail = tail.expect("cut");
        assert_eq!((tail.position, tail.reason.as_str()), (end, "refused"));
        assert_eq!(
            tail.whole_frame_after,
            Some(end),
            "a refused frame passed its CRC: it is whole, no torn write"
        );
        assert_eq!(s.len("f").unwrap(), end, "the cut is applied");
        let mut crashed = s.clone();
        crashed.crash(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1));
        assert_eq!(crashed.len("f").unwrap(), end, "and durable");
        let (again, none) =
            replay_file::<_, StorageError>(&mut s, "f", 100, |_| Ok(Ok(()))).unwrap();
        assert_eq!((again, none), (end, None));
    }

    /// A torn tail (a prefix of the last write, then zeros) has no whole frame after the cut;
    /// rot in a frame before others does, which tells damage to synced bytes from a crash.
    #[test]
    fn a_whole_frame_after_the_cut_is_reported() {
        use crate::storage::MemStorage;
        let frames: Vec<Vec<u8>> = [&b"one"[..], b"two", b"three"]
            .iter()
            .map(|p| encode(p))
            .collect();
        let replay = |bytes: &[u8]| {
            let mut s = MemStorage::new();
            s.create("f").unwrap();
            s.append("f", bytes).unwrap();
            replay_file::<_, StorageError>(&mut s, "f", 100, |_| Ok(Ok(())))
                .unwrap()
                .1
                .expect("cut")
        };
        let whole = frames.concat();
        let torn_at = frames[0].len() + frames[1].len() + 5;
        let mut torn = whole[..torn_at].to_vec();
        torn.extend_from_slice(&[0; 40]);
        assert_eq!(replay(&torn).whole_frame_after, None, "a torn tail");
        let mut rotten = whole.clone();
        rotten[frames[0].len() + HEADER_BYTES + 1] ^= 0x04;
        let tail = replay(&rotten);
        assert_eq!(tail.position, frames[0].len() as u64);
        assert_eq!(
            tail.whole_frame_after,
            Some((frames[0].len() + frames[1].len()) as u64),
            "the third frame is whole"
        );
    }
}
