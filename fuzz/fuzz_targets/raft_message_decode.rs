#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_core::quorum::codec::fuzz_round_trip(data));
