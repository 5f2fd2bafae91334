#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_node::wire::testing::request_decode(data));
