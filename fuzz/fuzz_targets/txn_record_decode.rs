#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_core::txn::record::testing::round_trip(data));
