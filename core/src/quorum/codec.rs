//! Bytes in and out of the quorum: raft messages for the peer transport, and the context that
//! tags a proposal's entry with who proposed it.
//!
//! Raft messages use raft-rs's own protobuf encoding (`eraftpb.proto`, rust-protobuf 2), so the
//! bytes are those any raft-rs peer of the same version reads. Decoding bytes from the network
//! never panics: it returns [`DecodeError`].

use protobuf::Message as _;
use raft::eraftpb::Message;

/// The largest encoded raft message [`decode_message`] accepts. A snapshot of the metadata (the
/// largest message) is bounded by [`super::disk::FRAME_PAYLOAD_BYTES_MAX`]; appends by
/// [`super::MESSAGE_ENTRIES_BYTES_MAX`].
pub const MESSAGE_BYTES_MAX: usize = 80 << 20;

/// The length of a proposal's context: the proposer's raft id and the proposal id, big-endian.
pub const PROPOSAL_CONTEXT_BYTES: usize = 16;

/// Why bytes are not a raft message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes than [`MESSAGE_BYTES_MAX`].
    #[error("a raft message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not a protobuf `eraftpb.Message`.
    #[error("not a raft message: {0}")]
    Malformed(String),
}

/// Encodes a raft message for the peer transport.
pub fn encode_message(message: &Message) -> Vec<u8> {
    // Local invariant: eraftpb is proto3 (no required fields) and holds no map or group, so
    // rust-protobuf's encoder has nothing to refuse.
    message
        .write_to_bytes()
        .expect("eraftpb messages are proto3: encoding cannot fail")
}

/// Decodes a raft message from the peer transport. Never panics.
pub fn decode_message(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    Message::parse_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// The `raft_message_decode` fuzz target's logic: arbitrary bytes never panic the decoder,
/// and a message that decodes encodes into bytes that decode again, to a message of the same
/// type. Byte-stable re-encoding is not promised: the fuzzer showed that fields eraftpb does
/// not know are kept in a hash map and re-encoded in its order. keel's nodes never send such
/// fields, so this is no hazard to the simulator's determinism.
pub fn fuzz_round_trip(bytes: &[u8]) {
    if let Ok(message) = decode_message(bytes) {
        let again = decode_message(&encode_message(&message)).expect("an encoded message decodes");
        assert_eq!(again.get_msg_type(), message.get_msg_type());
        assert_eq!(
            (again.from, again.to, again.term),
            (message.from, message.to, message.term)
        );
    }
}

/// The context of a proposal's entry: who proposed it, under which caller-chosen id.
pub(crate) fn proposal_context(proposer: u64, id: u64) -> Vec<u8> {
    let mut context = Vec::with_capacity(PROPOSAL_CONTEXT_BYTES);
    context.extend_from_slice(&proposer.to_be_bytes());
    context.extend_from_slice(&id.to_be_bytes());
    context
}

/// The proposer and id in an entry's context, if it is one.
pub(crate) fn parse_proposal_context(context: &[u8]) -> Option<(u64, u64)> {
    let bytes: &[u8; PROPOSAL_CONTEXT_BYTES] = context.try_into().ok()?;
    let (proposer, id) = bytes.split_at(8);
    Some((
        u64::from_be_bytes(proposer.try_into().ok()?),
        u64::from_be_bytes(id.try_into().ok()?),
    ))
}
