//! Entry points for the fuzz target and property tests: the logic lives here so that the
//! targets stay one line (rustls's habit).

use bytes::Bytes;

use super::codec::{classify, decode_request, Inbound};
use super::versions::SupportedApis;

/// Runs one request frame (the bytes after a size prefix) through everything the wire layer
/// does with untrusted bytes: the table-independent decoder, and the listener's classification
/// with every API served, including encoding the replies the wire layer builds itself.
/// Must never panic, whatever `frame` holds.
pub fn request_decode(frame: &[u8]) {
    let frame = Bytes::copy_from_slice(frame);
    let _ = decode_request(frame.clone());
    if let Ok(Inbound::Reply(reply)) = classify(frame, &SupportedApis::all()) {
        let _ = reply.encode();
    }
}
