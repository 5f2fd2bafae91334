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
}
